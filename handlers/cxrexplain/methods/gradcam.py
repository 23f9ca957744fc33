"""Grad-CAM (Selvaraju et al., 2017): feature maps weighted by the spatial mean of their gradients.

Works on any convolutional layer, so it covers heads CAM cannot (VGG's fully connected head). The layer is
read from the shared forward (kept as an fx node output); only one backward to that layer is needed.
"""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ..bundle import ClassifierBundle
from ..errors import InvalidOption, UnsupportedModel
from ..graph import TracedModel
from .base import Captures, ForwardContext, Method, MethodOutput, register
from .upsample import to_input_size

_ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish)
_ACTIVATION_FUNCTIONS = (
    F.relu, torch.relu, F.relu6, F.leaky_relu, F.elu, F.gelu, F.silu, F.mish, F.hardswish,
)
_NORM_MODULES = (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d)


def resolve_layer(traced: TracedModel, layer: str) -> str:
    """The fx node whose output is ``layer``.

    ``layer`` is either an fx node name (``"features_29"``) or a dotted module path as in
    ``model.named_modules()`` (``"features.denseblock4"``, ``"layer4.2"``): a module's output is the last node
    traced inside it.
    """
    if layer in traced.nodes:
        return layer
    last: str | None = None
    for node in traced.gm.graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        paths = {path for path, _ in stack.values()}
        if layer in paths or (node.op == "call_module" and node.target == layer):
            last = node.name
    if last is None:
        raise InvalidOption(
            f"gradcam: no layer {layer!r} in this model; give an fx node name or a module path "
            "from model.named_modules() (for example 'features.denseblock4' or 'layer4')"
        )
    return last


def _is_kind(traced: TracedModel, node: fx.Node, modules: tuple[type, ...], functions: tuple = ()) -> bool:
    if node.op == "call_module":
        return isinstance(traced.module_of(node), modules)
    if node.op == "call_function":
        return node.target in functions
    return node.op == "call_method" and bool(functions) and node.target in ("relu", "relu_")


def last_conv_activation(traced: TracedModel) -> str:
    """The output of the last ``Conv2d``'s activation (through a normalization layer if one follows it)."""
    convs = [n for n in traced.gm.graph.nodes if _is_kind(traced, n, (nn.Conv2d,))]
    if not convs:
        raise UnsupportedModel("gradcam needs a model with a Conv2d layer; this one has none")
    node = convs[-1]
    chosen = node
    while len(node.users) == 1:
        (node,) = node.users
        if _is_kind(traced, node, _ACTIVATION_MODULES, _ACTIVATION_FUNCTIONS):
            chosen = node
            break
        if not _is_kind(traced, node, _NORM_MODULES):
            break
    return chosen.name


def default_layer(bundle: ClassifierBundle) -> str:
    """The bundle's ``cam_layer``, else the map a GAP+linear head pools, else the last conv's activation."""
    try:
        return bundle.cam_node
    except UnsupportedModel:
        return last_conv_activation(bundle.traced)


@register
class GradCAM(Method):
    """``L = ReLU(sum_k a_k A_k)`` with ``a_k`` the spatial mean of ``d y_c / d A_k`` (Selvaraju eqs. 1-2).

    Options: ``layer`` (fx node name or module path; default: see :func:`default_layer`). The map is
    upsampled bilinearly to the input size and otherwise left raw (no normalization).
    """

    name = "gradcam"
    options = {"layer": str}
    layer: str | None = None

    def node(self, bundle: ClassifierBundle) -> str:
        return resolve_layer(bundle.traced, self.layer) if self.layer else default_layer(bundle)

    def captures(self, bundle: ClassifierBundle) -> Captures:
        return (self.node(bundle),)

    def feature_map(self, ctx: ForwardContext) -> torch.Tensor:
        """(N, h, w) Grad-CAM at the layer's resolution, before upsampling."""
        name = self.node(ctx.bundle)
        features = ctx.activations[name]
        if features.ndim != 4:
            raise UnsupportedModel(
                f"gradcam needs a (N, K, h, w) feature map; layer {name!r} gives shape "
                f"{tuple(features.shape)}: choose a convolutional layer with the layer option"
            )
        # Rows are independent, so the gradient of the summed target logits is each row's own gradient.
        (grads,) = torch.autograd.grad(ctx.target_logits().sum(), features, retain_graph=True,
                                       allow_unused=True)
        if grads is None:  # the layer does not reach the logits (a side branch): no evidence there
            grads = torch.zeros_like(features)
        weights = grads.mean(dim=(2, 3))  # Selvaraju eq. 1: alpha_k^c = 1/Z sum_ij dy^c/dA_ij^k
        return torch.relu(torch.einsum("nk,nkhw->nhw", weights, features.detach()))  # eq. 2

    def explain(self, ctx: ForwardContext) -> MethodOutput:
        return MethodOutput(heatmap=to_input_size(self.feature_map(ctx), ctx.x))

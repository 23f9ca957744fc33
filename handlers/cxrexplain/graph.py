"""The classifier as a torch.fx graph: one forward pass that keeps the activations methods need.

Tracing gives the exact topology (concatenations, additions, functional ReLUs) that propagation rules walk
backwards, and lets the forward return chosen intermediate tensors without hooks. In-place operations are
turned off on the traced copy so kept activations are not overwritten.
"""

from __future__ import annotations

import copy
import functools
import operator
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .errors import UnsupportedModel


def _strip_inplace(gm: fx.GraphModule) -> None:
    for module in gm.modules():
        if hasattr(module, "inplace"):
            module.inplace = False  # type: ignore[assignment]  # nn.ReLU & co. declare it as a bool
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.kwargs.get("inplace"):
            node.kwargs = {**node.kwargs, "inplace": False}
        elif node.op == "call_method" and node.target in ("relu_", "add_"):
            node.target = node.target[:-1]
        elif node.op == "call_function" and node.target is operator.iadd:
            node.target = operator.add
    gm.recompile()


@dataclass(frozen=True)
class CamHead:
    """A global-average-pool + linear head: CAM is defined for it (Zhou et al.)."""

    feature_node: str  # the (N, K, h, w) map that is pooled
    linear: nn.Linear


class TracedModel:
    """An fx-traced, in-place-free copy of a classifier sharing the original's parameters."""

    def __init__(self, module: nn.Module):
        try:
            gm = fx.symbolic_trace(copy.copy(module))
        except Exception as exc:  # fx raises many types; the user needs the reason, not the type
            raise UnsupportedModel(
                f"{type(module).__name__} cannot be traced by torch.fx ({exc}); graph-based methods "
                "(lrp, rap, guided_backprop, cam auto-detection) need a traceable model"
            ) from exc
        _strip_inplace(gm)
        self.gm = gm
        self.nodes: dict[str, fx.Node] = {n.name: n for n in gm.graph.nodes}
        self._capturing: dict[tuple[str, ...], fx.GraphModule] = {}

    @property
    def output_node(self) -> fx.Node:
        return next(n for n in self.gm.graph.nodes if n.op == "output")

    def module_of(self, node: fx.Node) -> nn.Module:
        return self.gm.get_submodule(str(node.target))

    def capturing(self, names: tuple[str, ...]) -> fx.GraphModule:
        """A GraphModule returning ``(logits, {name: activation})`` for the given node names."""
        if names not in self._capturing:
            graph = copy.deepcopy(self.gm.graph)
            by_name = {n.name: n for n in graph.nodes}
            out = next(n for n in graph.nodes if n.op == "output")
            logits = out.args[0]
            with graph.inserting_before(out):
                kept = {name: by_name[name] for name in names}
            out.args = ((logits, kept),)
            gm = fx.GraphModule(self.gm, graph)
            self._capturing[names] = gm
        return self._capturing[names]

    def run(self, x: torch.Tensor, capture: tuple[str, ...] | str = ()) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward once. ``capture="all"`` keeps every node's output (for propagation methods)."""
        if capture == "all":
            names = tuple(n.name for n in self.gm.graph.nodes if n.op not in ("output",))
        else:
            names = tuple(sorted(set(capture)))
        if not names:
            return self.gm(x), {}
        logits, kept = self.capturing(names)(x)
        return logits, kept

    @functools.cached_property
    def _cam_head(self) -> CamHead | UnsupportedModel:
        node = self.output_node.args[0]
        linear = self.module_of(node) if isinstance(node, fx.Node) and node.op == "call_module" else None
        if not isinstance(node, fx.Node) or not isinstance(linear, nn.Linear):
            return UnsupportedModel("CAM needs a model whose last layer is nn.Linear; ask for 'gradcam' instead")
        node = node.args[0]
        while isinstance(node, fx.Node) and self._is_reshape(node):
            node = node.args[0]
        if isinstance(node, fx.Node) and self._is_global_pool(node) and isinstance(node.args[0], fx.Node):
            return CamHead(feature_node=node.args[0].name, linear=linear)
        return UnsupportedModel(
            "CAM is defined only for global-average-pool + linear heads (DenseNet, ResNet); "
            "this head is not one: ask for 'gradcam'"
        )

    def cam_head(self) -> CamHead:
        """The feature map pooled by a global-average-pool + linear head, found walking back from the output.

        Raises :class:`UnsupportedModel` for other heads (VGG's classifier stack, for instance).
        """
        head = self._cam_head
        if isinstance(head, UnsupportedModel):
            raise head
        return head

    def _is_reshape(self, node: fx.Node) -> bool:
        if node.op == "call_function":
            return node.target is torch.flatten
        if node.op == "call_method":
            return node.target in ("view", "reshape", "flatten", "squeeze")
        return node.op == "call_module" and isinstance(self.module_of(node), nn.Flatten | nn.Dropout)

    def _is_global_pool(self, node: fx.Node) -> bool:
        if node.op == "call_module":
            module = self.module_of(node)
            return isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1))
        if node.op == "call_function" and node.target is F.adaptive_avg_pool2d:
            return node.args[1] in (1, (1, 1)) if len(node.args) > 1 else node.kwargs.get("output_size") in (1, (1, 1))
        if node.op == "call_method" and node.target == "mean":
            return tuple(node.args[1:2]) in (((2, 3),), ((-2, -1),)) or node.kwargs.get("dim") in ((2, 3), (-2, -1))
        return False

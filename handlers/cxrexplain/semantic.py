"""Semantic attribution ([Khakzar2021] §2.3, eq. 6): integrated gradients over the units of one layer.

``s_k^i = a_k^i int_0^1 df(alpha a)/da_k^i dalpha``: the whole layer's activation ``a`` is scaled by ``alpha``
together (every unit and position at once, zero baseline), the gradient of the target logit with respect to
the scaled activation is integrated along the path, and multiplied by ``a``. A unit's contribution is
``sum_i |s_k^i|`` ([Khakzar2021] §2.3). The quadrature is the one the ``integrated_gradients`` method uses
(:func:`~cxrexplain.methods.gradients.path_rule`: Gauss-Legendre by default, as captum's), so the two agree
on nodes and weights; ``steps`` path points per row.

The forward hook replaces the layer's output by the scaled activation on every path point; the layers before
it are recomputed per chunk of path points (as captum's ``LayerIntegratedGradients`` does), which keeps the
function independent of how the model is written. Hooks are removed on return, also after an exception.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .bundle import ClassifierBundle
from .errors import InvalidOption, UnsupportedModel
from .methods.gradients import CPU_POINTS, CUDA_POINTS, path_rule


def find_layer(model: nn.Module, layer: str) -> nn.Module:
    """The submodule called ``layer`` in ``model.named_modules()`` (for example ``"features.denseblock4"``)."""
    names = [name for name, _ in model.named_modules() if name]
    if layer not in names:
        hint = ", ".join(names[-8:]) if names else "none"
        raise InvalidOption(
            f"no layer {layer!r} in this model; give a module path from model.named_modules() "
            f"(its last ones: {hint})"
        )
    return model.get_submodule(layer)


def unit_layer(bundle: ClassifierBundle, node_name: str | None = None) -> str:
    """The module path (in ``model.named_modules()``) whose output fx node ``node_name`` reads (default: the CAM
    layer's node). The unit analyses hook modules, and CAM's node is often a functional ReLU after one
    (``features.norm5`` in a DenseNet)."""
    name = node_name or bundle.cam_node
    node = bundle.traced.nodes[name]
    while node.op != "call_module":
        inputs = [a for a in node.all_input_nodes if a.op != "placeholder"]
        if not inputs:
            raise InvalidOption(f"layer {name!r} reads no module's output; name a module path from "
                                "model.named_modules() (for example features.denseblock4)")
        node = inputs[0]
    return str(node.target)


def _feature_map(output: object, layer: str) -> torch.Tensor:
    if not isinstance(output, torch.Tensor) or output.dim() != 4:
        raise UnsupportedModel(
            f"layer {layer!r} does not output one (N, K, h, w) feature map; pick a convolutional layer or block"
        )
    return output


@contextmanager
def capture_output(model: nn.Module, layer: str) -> Iterator[list[torch.Tensor]]:
    """Within the context, every forward of ``model`` appends ``layer``'s (N, K, h, w) output to the list."""
    seen: list[torch.Tensor] = []

    def hook(_module: nn.Module, _inputs: object, output: object) -> None:
        seen.append(_feature_map(output, layer))

    handle = find_layer(model, layer).register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


@dataclass
class UnitAttribution:
    """Semantic attribution of each row of a batch to the units of ``layer``.

    ``attributions`` (N, K, h, w): ``s_k^i`` of eq. 6 at the layer's resolution. ``scores`` (N, K):
    ``sum_i |s_k^i|``, the contribution of unit k ([Khakzar2021] §2.3).
    """

    layer: str
    attributions: torch.Tensor
    scores: torch.Tensor

    def top_units(self, n: int) -> torch.Tensor:
        """(N, n) unit indices, highest contribution first (ties: lower index first)."""
        n = min(int(n), self.scores.shape[1])
        order = torch.sort(self.scores, dim=1, descending=True, stable=True).indices
        return order[:, :n]

    def unit_maps(self, units: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(N, n, H, W) maps of the given units (``units`` (N, n), as :meth:`top_units` returns).

        As [Khakzar2021] §3.5 shows them: each unit's ``s_k`` divided by the maximum of its ``s_k^i``, then
        upsampled bilinearly to ``size`` (the input image). A unit whose ``s_k^i`` are all <= 0 is divided by
        its largest magnitude instead (the paper's maximum would flip or blow up its sign); an all-zero map
        stays zero.
        """
        idx = units[:, :, None, None].expand(-1, -1, *self.attributions.shape[2:])
        maps = self.attributions.gather(1, idx)
        peak = maps.amax(dim=(2, 3), keepdim=True)
        magnitude = maps.abs().amax(dim=(2, 3), keepdim=True)
        scale = torch.where(peak > 0, peak, magnitude)
        maps = torch.where(scale > 0, maps / scale.clamp_min(torch.finfo(maps.dtype).tiny), torch.zeros_like(maps))
        return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def semantic_attribution(
    model: nn.Module,
    x: torch.Tensor,
    targets: torch.Tensor,
    layer: str,
    steps: int = 32,
    integration: str = "gausslegendre",
    internal_batch_size: int = 0,
) -> UnitAttribution:
    """Eq. 6 of [Khakzar2021] for each row of ``x`` (N, C, H, W) and its target index in ``targets`` (N,).

    Parameters
    ----------
    model
        The classifier, in the mode it should be explained in (call ``model.eval()`` first for inference).
    layer
        Module path in ``model.named_modules()``; its output must be one (N, K, h, w) tensor.
    steps, integration
        Path points and quadrature rule (``gausslegendre`` or ``riemann_trapezoid``), as the
        ``integrated_gradients`` method takes them.
    internal_batch_size
        Path points per forward; 0 picks by device (8 on CPU, 32 on CUDA).
    """
    if steps < 1:
        raise InvalidOption(f"semantic attribution: steps must be >= 1, got {steps}")
    x = x.detach()
    n = x.shape[0]
    targets = torch.as_tensor(targets, device=x.device).reshape(n)
    with torch.no_grad(), capture_output(model, layer) as seen:
        model(x)
    if len(seen) != 1:
        raise UnsupportedModel(f"layer {layer!r} runs {len(seen)} times per forward; pick a layer that runs once")
    acts = seen[0].detach()
    alphas, weights = path_rule(integration, steps)
    alpha = torch.tensor(alphas, dtype=acts.dtype, device=x.device).repeat_interleave(n)
    weight = torch.tensor(weights, dtype=acts.dtype, device=x.device).repeat_interleave(n)
    rows = torch.arange(n, device=x.device).repeat(steps)  # point j is row j % n at alpha[j // n]
    total = torch.zeros_like(acts)
    chunk = internal_batch_size or (CUDA_POINTS if x.device.type == "cuda" else CPU_POINTS)
    point: list[torch.Tensor] = []

    def replace(_module: nn.Module, _inputs: object, _output: object) -> torch.Tensor:
        return point[0].clone()  # a non-leaf, so an in-place activation after the layer cannot touch the leaf

    handle = find_layer(model, layer).register_forward_hook(replace)
    try:
        for start in range(0, alpha.numel(), chunk):
            part = slice(start, start + chunk)
            r = rows[part]
            scaled = (alpha[part].view(-1, 1, 1, 1) * acts[r]).requires_grad_(True)
            point[:] = [scaled]
            with torch.enable_grad():
                logits = model(x[r])
                chosen = logits.gather(1, targets[r][:, None]).sum()
                (grad,) = torch.autograd.grad(chosen, scaled)
            total.index_add_(0, r, grad * weight[part].view(-1, 1, 1, 1))
    finally:
        handle.remove()
    attributions = acts * total
    return UnitAttribution(layer=layer, attributions=attributions, scores=attributions.abs().sum(dim=(2, 3)))


@dataclass(frozen=True)
class DissectionTable:
    """What the ``semantic`` method needs of a Network Dissection ([Khakzar2021] eq. 5) of ``layer``: each
    unit's best concept, that IoU and whether it reaches the detector threshold, one entry per unit in
    channel order. The exporter computes it (``dissection.json`` in the archive); ``data`` says on what.
    """

    layer: str
    concepts: tuple[str, ...]
    ious: tuple[float, ...]
    detectors: tuple[bool, ...]
    data: str = ""
    detector_iou: float = 0.04

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DissectionTable:
        """Read ``dissection.json``; raises ``ValueError`` saying what is missing (re-export the archive)."""
        try:
            units = sorted(d["units"], key=lambda u: int(u["unit"]))
            if [int(u["unit"]) for u in units] != list(range(len(units))) or not units:
                raise ValueError("its units must be 0 .. K-1, each once")
            return cls(layer=str(d["layer"]), concepts=tuple(str(u["concept"]) for u in units),
                       ious=tuple(float(u["iou"]) for u in units), detectors=tuple(bool(u["detector"]) for u in units),
                       data=str(d.get("data", "")), detector_iou=float(d.get("detector_iou", 0.04)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a dissection table ({type(exc).__name__}: {exc}): re-export the archive with "
                             "its recipe's semantic field") from exc

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "data": self.data, "detector_iou": self.detector_iou,
                "units": [{"unit": k, "concept": c, "iou": v, "detector": det}
                          for k, (c, v, det) in enumerate(zip(self.concepts, self.ious, self.detectors, strict=True))]}

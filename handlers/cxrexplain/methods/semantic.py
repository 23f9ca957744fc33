"""``semantic``: the units of a dissected layer that drive a target ([Khakzar2021] §2.3 eq. 6, §3.5).

Available on a model that carries a :class:`~cxrexplain.semantic.DissectionTable` in ``bundle.extra["dissection"]``
(the exporter computes it from a recipe's ``semantic`` field): semantic attribution over the table's layer, the
``top`` units by ``sum_i |s_k^i|``, each with its dissection concept and IoU, and each unit's map divided by its
maximum and upsampled to the input (§3.5). The heatmap is the layer's attribution summed over every unit,
upsampled: where the layer's evidence for the target lies (captum's ``LayerIntegratedGradients`` summed over
channels).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .. import semantic as units
from ..bundle import ClassifierBundle
from ..errors import DissectionRequired, InvalidOption, UnsupportedModel
from .base import ForwardContext, Method, MethodOutput, register


@dataclass(frozen=True)
class SemanticResult:
    """The top units of N rows. ``units``, ``scores``, ``ious``, ``detectors`` are (N, n); ``concepts`` is N lists
    of n names; ``maps`` (N, n, H, W) each unit's ``s_k`` divided by its maximum, at the input size."""

    layer: str
    units: torch.Tensor
    scores: torch.Tensor
    concepts: list[list[str]]
    ious: torch.Tensor
    detectors: torch.Tensor
    maps: torch.Tensor

    def cpu(self) -> SemanticResult:
        """The same result detached and on the CPU (what :class:`ExplanationResult` holds)."""
        tensors = {f.name: getattr(self, f.name).detach().cpu() for f in dataclasses.fields(self)
                   if isinstance(getattr(self, f.name), torch.Tensor)}
        return dataclasses.replace(self, **tensors)


@dataclass
class SemanticOutput(MethodOutput):
    """:class:`MethodOutput` of ``semantic``: the layer's map as ``heatmap``, the top units as ``units``."""

    units: SemanticResult


def dissection_table(bundle: ClassifierBundle) -> units.DissectionTable:
    """The model's dissection table; raises :class:`DissectionRequired` saying how to get one."""
    table = bundle.extra.get("dissection")
    if not isinstance(table, units.DissectionTable):
        raise DissectionRequired(
            "semantic needs a dissection table and this model has none: export the archive with a recipe "
            "'semantic: {layer: ..., concepts: ...}' field (docs/units.md), or ask for another method")
    return table


@register
class Semantic(Method):
    name = "semantic"
    options = {"steps": int, "top": int}
    needs_graph = False  # it runs its own forwards with the layer scaled along the path
    steps = 32
    top = 5

    def __init__(self, **options: Any):
        super().__init__(**options)
        if self.steps < 1 or self.top < 1:
            raise InvalidOption(f"semantic: steps and top must be >= 1, got steps={self.steps}, top={self.top}")

    @classmethod
    def cost_of(cls, options: Mapping[str, Any]) -> int:
        return int(options.get("steps", cls.steps))  # one forward+backward per path point, as integrated gradients

    def explain(self, ctx: ForwardContext) -> SemanticOutput:
        table = dissection_table(ctx.bundle)
        size = (int(ctx.x.shape[-2]), int(ctx.x.shape[-1]))
        att = units.semantic_attribution(ctx.bundle.module, ctx.x.detach(), ctx.targets, table.layer, steps=self.steps)
        if att.scores.shape[1] != len(table.concepts):
            raise UnsupportedModel(
                f"the dissection table labels {len(table.concepts)} units, layer {table.layer!r} has "
                f"{att.scores.shape[1]}: the table is of another model; re-export the archive")
        top = att.top_units(self.top)
        index = top.cpu().tolist()
        ious = torch.tensor(table.ious, dtype=torch.float32)
        detectors = torch.tensor(table.detectors, dtype=torch.bool)
        layer_map = att.attributions.sum(dim=1, keepdim=True).float()
        heatmap = F.interpolate(layer_map, size=size, mode="bilinear", align_corners=False)[:, 0]
        return SemanticOutput(heatmap=heatmap, units=SemanticResult(
            layer=table.layer, units=top, scores=att.scores.gather(1, top).float(),
            concepts=[[table.concepts[k] for k in row] for row in index],
            ious=ious[top.cpu()], detectors=detectors[top.cpu()], maps=att.unit_maps(top, size).float()))

"""Network Dissection on chest X-rays ([Khakzar2021] §2.2, eq. 5).

For unit k of a layer chosen by module path: the threshold ``T_k`` with ``P(a_k > T_k) = 0.005`` over all
positions of all images; each map ``S_k`` upsampled bilinearly to the annotation's size (``S'_k``);
``M_k = S'_k >= T_k``; ``IoU_{k,c} = sum |M_k n L_c| / sum |M_k u L_c|`` with both sums over **the images
that contain concept c** only; unit k is a detector of c when ``IoU_{k,c} >= 0.04``. Each unit is labelled by
its best concept, as Network Dissection does, and a concept's detector count is the number of units labelled
with it whose IoU passes the threshold.

What the 0.005 quantile implies: a unit is on at about 0.5 % of all positions of all N images (about, since
the masks are thresholded after upsampling). Against a concept that n_c images contain, covering a fraction p
of each, its IoU is at most about 0.005 N / (p n_c) (every on-pixel inside the concept), that is 0.005 / p for
a concept in every image: below 0.04 once p > 12.5 % (a lung, the heart), whatever the unit does.
:meth:`DissectionResult.best_units` reports each concept's best IoU beside the counts so that a large concept
with no detector reads as the limit it is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cxrexplain_lab.units import UNIT_CHUNK, AnnotatedImage, Progress, kth_largest_per_unit, layer_batches

QUANTILE = 0.005  # [Khakzar2021] §2.2 after Bau et al.: P(f_k > T_k) = 0.005
DETECTOR_IOU = 0.04  # [Khakzar2021] §2.2: a unit is a detector of c when IoU_{k,c} >= 0.04


@dataclass(frozen=True)
class UnitLabel:
    """Unit ``unit`` labelled by its best concept, with that IoU and whether it is a detector."""

    unit: int
    concept: str
    iou: float
    detector: bool


@dataclass
class DissectionResult:
    """The dataset-wide counts of eq. 5 for every unit and concept of one layer.

    ``thresholds`` (K,) ``T_k``; ``intersection`` and ``union`` (K, C) pixel counts summed over the images that
    contain each concept; ``images_with`` (C,) how many images contain each concept (a concept in none has
    IoU NaN and labels no unit).
    """

    layer: str
    concepts: tuple[str, ...]
    thresholds: torch.Tensor
    intersection: torch.Tensor
    union: torch.Tensor
    images_with: torch.Tensor
    quantile: float = QUANTILE
    detector_iou: float = DETECTOR_IOU

    @property
    def iou(self) -> torch.Tensor:
        """(K, C) ``IoU_{k,c}`` (eq. 5), float64; NaN for a concept no image contains."""
        inter, union = self.intersection.double(), self.union.double()
        return torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(inter, math.nan))

    def unit_labels(self) -> list[UnitLabel]:
        """Each unit with its best concept (highest IoU; ties: the concept listed first)."""
        iou = self.iou.nan_to_num(nan=-1.0)
        best, index = iou.max(dim=1)
        return [
            UnitLabel(unit=k, concept=self.concepts[int(c)], iou=float(v), detector=bool(v >= self.detector_iou))
            for k, (v, c) in enumerate(zip(best.tolist(), index.tolist(), strict=True))
        ]

    def detector_counts(self) -> dict[str, int]:
        """Per concept, the units labelled with it whose IoU is >= ``detector_iou`` (every concept listed)."""
        counts = dict.fromkeys(self.concepts, 0)
        for label in self.unit_labels():
            if label.detector:
                counts[label.concept] += 1
        return counts

    def best_units(self) -> dict[str, tuple[int, float]]:
        """Per concept that some image contains: its best unit and that unit's IoU (see the module's note on
        large concepts)."""
        iou = self.iou
        out = {}
        for c, name in enumerate(self.concepts):
            if int(self.images_with[c]) > 0:
                value, unit = iou[:, c].max(dim=0)
                out[name] = (int(unit), float(value))
        return out

    def rows(self) -> list[dict[str, object]]:
        """One row per unit and concept: ``layer, unit, concept, iou, detector`` (``IoU >= detector_iou`` for that
        pair), the shape of ``dissection.csv``."""
        iou = self.iou
        return [
            {"layer": self.layer, "unit": k, "concept": name, "iou": float(iou[k, c]),
             "detector": bool(iou[k, c] >= self.detector_iou)}
            for k in range(iou.shape[0])
            for c, name in enumerate(self.concepts)
        ]


def dissection_threshold_rank(n: int, quantile: float = QUANTILE) -> int:
    """The rank r such that ``T_k`` is the r-th largest of n activations: floor(q n) + 1, so exactly floor(q n)
    values lie above it (when no value ties with it), the largest share not exceeding q."""
    return math.floor(quantile * n) + 1


def dissect(
    model: nn.Module,
    layer: str,
    data: Sequence[AnnotatedImage],
    concepts: Sequence[str] | None = None,
    quantile: float = QUANTILE,
    detector_iou: float = DETECTOR_IOU,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> DissectionResult:
    """Network Dissection ([Khakzar2021] eq. 5) of ``layer`` (a path in ``model.named_modules()``) over ``data``.

    Two passes over the data (the model runs twice per image): the first finds ``T_k`` exactly, keeping the
    largest 0.5 % of each unit's activations (:func:`~cxrexplain_lab.units.kth_largest_per_unit`); the second
    upsamples each map bilinearly (half-pixel centres, ``align_corners=False``) to each mask's size and counts.
    ``concepts`` restricts and orders the concepts; by default every concept some image names, in order of
    first appearance. The model runs in the mode it is in: call ``model.eval()`` first.
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    if concepts is None:
        concepts = list(dict.fromkeys(name for item in data for name in item.masks))
    names = tuple(concepts)
    if not names:
        raise ValueError("no concepts: give images with masks (or boxes through box_masks)")
    column = {name: c for c, name in enumerate(names)}
    thresholds = kth_largest_per_unit(
        model, layer, data, lambda n: dissection_threshold_rank(n, quantile), batch_size, progress
    )
    units, device = thresholds.shape[0], thresholds.device
    inter = torch.zeros(units, len(names), dtype=torch.int64, device=device)
    union = torch.zeros_like(inter)
    images_with = torch.zeros(len(names), dtype=torch.int64)
    for idx, acts in layer_batches(model, layer, data, batch_size, progress):
        for row, i in enumerate(idx):
            masks = {name: m for name, m in data[i].concept_masks(device).items() if name in column}
            for size in {tuple(m.shape) for m in masks.values()}:
                same_size = [(column[name], m) for name, m in masks.items() if tuple(m.shape) == size]
                for start in range(0, units, UNIT_CHUNK):
                    part = slice(start, start + UNIT_CHUNK)
                    up = F.interpolate(acts[row : row + 1, part], size=size, mode="bilinear", align_corners=False)
                    on = up[0] >= thresholds[part, None, None]  # M_k, (units, h, w)
                    for c, mask in same_size:
                        inter[part, c] += (on & mask).sum(dim=(1, 2))
                        union[part, c] += (on | mask).sum(dim=(1, 2))
            for name in masks:
                images_with[column[name]] += 1
    return DissectionResult(
        layer=layer, concepts=names, thresholds=thresholds.cpu(), intersection=inter.cpu(), union=union.cpu(),
        images_with=images_with, quantile=quantile, detector_iou=detector_iou,
    )

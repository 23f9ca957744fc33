"""Concept counts ([Khakzar2022] §3.2 "Analyzing Encoded Concepts", §4 "Analysis of Concepts").

A procedure distinct from Network Dissection: for each channel c of a chosen layer, ``tau_c`` with
``P(A^c >= tau_c) = q`` over the data set; each image's thresholded map is split into 8-connected components,
and a component is a (pathology-related) concept when any of its cells lies in a bounding box.

- **disjoint**: such components, summed over all channels and images, divided by the number of images;
- **unique**: channels with at least one such component, summed over images, divided by the number of images.

The text's q: 0.01 for T-DenseNet, 0.04 for ResNet-50.

Where this follows the text and the authors' code departs:

- ``tau_c`` is one dataset-wide threshold per channel, from every activation of every image (exactly: the
  ceil(q n)-th largest of the n values, so ties with it are all on). The authors' code takes quantiles per
  batch.
- A component counts when any of its cells lies in a box (the text: "overlaps the bounding box region"),
  counted once. The authors' code multiplies the thresholded map by the box before labelling, which counts
  the pieces of the map inside the box: a component crossing the box edge in two places counts twice there.
- The text does not say at which resolution components are found. Here each map is upsampled bilinearly
  (half-pixel centres) to its box mask's size, the image's, and thresholded there with the ``tau_c`` of the raw
  activations, as Network Dissection does ([Khakzar2021] eq. 5; the text: "similar to [1]"), so a box is
  compared at the pixels it was drawn on. The authors' code upsamples to 224, their input size, which is the
  same when the images are 224 px.

The boxes of an image are the union of its masks (boxes become masks with
:func:`~cxrexplain_lab.units.box_masks`); images without any box are not counted, and ``tau_c`` comes from all
images given, so pass the annotated subset to follow the paper.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cxrexplain_lab.units import UNIT_CHUNK, AnnotatedImage, Progress, kth_largest_per_unit, layer_batches


def _max3x3(labels: torch.Tensor) -> torch.Tensor:
    """The maximum over each cell's 3x3 neighbourhood, zero outside (labels are >= 0), as two separable passes
    (several times faster than a stride-1 ``max_pool2d`` on the CPU)."""
    p = F.pad(labels, (1, 1, 1, 1))
    rows = torch.maximum(torch.maximum(p[:, :-2], p[:, 1:-1]), p[:, 2:])
    return torch.maximum(torch.maximum(rows[:, :, :-2], rows[:, :, 1:-1]), rows[:, :, 2:])


def label_components(on: torch.Tensor) -> torch.Tensor:
    """8-connected components of boolean maps ``on`` (..., H, W), each map on its own.

    Returns int64 labels of the same shape: 0 off, and every component one positive label (the largest flat
    index + 1 of its cells within its map). Label propagation with a 3x3 maximum (the 8-neighbourhood) and pointer
    jumping, batched over all maps, pure PyTorch: scipy is a test dependency only, and this runs on the
    model's device.
    """
    shape = on.shape
    height, width = shape[-2], shape[-1]
    on = on.reshape(-1, height, width).bool()
    ids = torch.arange(1, height * width + 1, device=on.device).view(1, height, width)
    labels = ids * on
    while True:
        grown = _max3x3(labels) * on
        flat = grown.reshape(grown.shape[0], -1)
        # the label l names cell l - 1 of the same component; its label is >= l: jump to it
        jumped = flat.gather(1, (flat - 1).clamp_min(0)).view_as(grown) * on
        updated = torch.maximum(grown, jumped)
        if torch.equal(updated, labels):
            return labels.reshape(shape)
        labels = updated


def components_in_region(labels: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """(K,) for labels (K, H, W) and a boolean (H, W) region: per map, the components with a cell in the
    region."""
    inside = labels[:, region]  # (K, P)
    stride = labels.shape[-2] * labels.shape[-1] + 1
    keys = inside + torch.arange(labels.shape[0], device=labels.device)[:, None] * stride
    distinct = torch.unique(keys[inside > 0])
    return torch.bincount(distinct // stride, minlength=labels.shape[0])


@dataclass
class ConceptCounts:
    """The counts of [Khakzar2022] Tab. 2 for one layer.

    ``thresholds`` (K,) ``tau_c``; ``components`` (K,) each channel's components in boxes, summed over
    images; ``images_with`` (K,) the images in which each channel has at least one; ``images`` the images with
    a box.
    """

    layer: str
    q: float
    thresholds: torch.Tensor
    components: torch.Tensor
    images_with: torch.Tensor
    images: int

    @property
    def disjoint(self) -> float:
        """Components overlapping a box, over all channels and images, per image."""
        return float(self.components.sum()) / self.images if self.images else math.nan

    @property
    def unique(self) -> float:
        """Channels with at least one component in a box, summed over images, per image."""
        return float(self.images_with.sum()) / self.images if self.images else math.nan


def concept_threshold_rank(n: int, q: float) -> int:
    """The rank r such that ``tau_c`` is the r-th largest of n activations: ceil(q n), the fewest values >= it
    reaching a share q (at least one)."""
    return max(1, math.ceil(q * n))


def concept_counts(
    model: nn.Module,
    layer: str,
    data: Sequence[AnnotatedImage],
    q: float = 0.01,
    concepts: Sequence[str] | None = None,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> ConceptCounts:
    """Disjoint and unique concept counts ([Khakzar2022] §4) of ``layer`` (a path in ``model.named_modules()``).

    ``q``: the top share of each channel's activations kept (0.01 for T-DenseNet, 0.04 for ResNet-50 in the
    paper). ``concepts`` restricts which masks make an image's boxes (default: all of them). Two passes over the
    data, as :func:`~cxrexplain_lab.dissection.dissect`. The model runs in the mode it is in: call
    ``model.eval()`` first.
    """
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1), got {q}")
    keep = None if concepts is None else set(concepts)
    thresholds = kth_largest_per_unit(model, layer, data, lambda n: concept_threshold_rank(n, q), batch_size, progress)
    units, device = thresholds.shape[0], thresholds.device
    components = torch.zeros(units, dtype=torch.int64, device=device)
    images_with = torch.zeros_like(components)
    images = 0
    for idx, acts in layer_batches(model, layer, data, batch_size, progress):
        for row, i in enumerate(idx):
            masks = [m for name, m in data[i].concept_masks(device).items() if keep is None or name in keep]
            if not masks:
                continue
            sizes = {tuple(m.shape) for m in masks}
            if len(sizes) > 1:
                raise ValueError(f"image {i} has box masks of sizes {sorted(sizes)}; give them at the image's size")
            region = torch.stack(masks).any(dim=0)
            found = torch.zeros_like(components)
            for start in range(0, units, UNIT_CHUNK):  # bounds the (units, H, W) labels at image size
                part = slice(start, start + UNIT_CHUNK)
                up = F.interpolate(acts[row : row + 1, part], size=region.shape, mode="bilinear", align_corners=False)
                found[part] = components_in_region(label_components(up[0] >= thresholds[part, None, None]), region)
            components += found
            images_with += found > 0
            images += 1
    return ConceptCounts(
        layer=layer, q=q, thresholds=thresholds.cpu(), components=components.cpu(), images_with=images_with.cpu(),
        images=images,
    )

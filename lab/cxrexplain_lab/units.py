"""The units of one layer over an annotated data set: the data's shape, the layer's activations batch by batch,
and exact dataset-wide per-unit order statistics kept in bounded memory.

Shared by Network Dissection (:mod:`cxrexplain_lab.dissection`, [Khakzar2021] eq. 5) and the concept counts
(:mod:`cxrexplain_lab.concepts`, [Khakzar2022] §3.2), which both threshold each unit at a dataset-wide quantile
and then compare the thresholded maps with annotations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from cxrexplain.semantic import capture_output
from cxrexplain_lab.metrics import Box, box_mask
from cxrexplain_lab.phantom import PhantomSample

T = TypeVar("T")
UNIT_CHUNK = 128
"""Units upsampled at once to the annotation size: bounds the (units, H, W) maps whatever the layer's width."""
Progress = Callable[[Iterable[Any]], Iterable[Any]]
"""Wraps an iterable of batches to show progress (``tqdm.tqdm`` fits); ``None`` shows nothing."""


@dataclass(frozen=True)
class AnnotatedImage:
    """One image of an annotation data set.

    ``image`` is (C, H, W), as the model takes it (already resized and normalized). ``masks`` maps a concept
    name to a boolean (h, w) mask at the annotation's size (usually the image's); a concept the image does
    not contain is absent (an all-false mask means the same). Boxes become masks with :func:`box_masks`.
    """

    image: torch.Tensor
    masks: Mapping[str, np.ndarray | torch.Tensor] = field(default_factory=dict)

    def concept_masks(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The non-empty masks as boolean tensors on ``device``."""
        out = {}
        for name, mask in self.masks.items():
            m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
            if m.dim() != 2:
                raise ValueError(f"the mask of concept {name!r} has shape {tuple(m.shape)}; give one (h, w) mask")
            m = m.to(device=device, dtype=torch.bool)
            if bool(m.any()):
                out[name] = m
        return out


def box_masks(boxes: Mapping[str, Sequence[Box]], shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Concept masks from boxes: each concept's mask is the union of its boxes ``(x0, y0, x1, y1)`` (exclusive
    ends, the convention of :func:`cxrexplain_lab.metrics.box_mask`) on an (h, w) grid."""
    out = {}
    for name, concept_boxes in boxes.items():
        mask = np.zeros(shape, dtype=bool)
        for box in concept_boxes:
            mask |= box_mask(box, shape)
        out[name] = mask
    return out


def from_phantoms(samples: Iterable[PhantomSample]) -> list[AnnotatedImage]:
    """The phantom set as annotation data: each image (1, H, W) in unit space, as the phantom-trained
    classifiers take it, with its anatomy (``left_lung``, ``right_lung``, ``heart``) and finding masks as
    concepts."""
    return [
        AnnotatedImage(torch.from_numpy(s.image)[None], {**s.anatomy, **s.masks}) for s in samples
    ]


def _device(model: nn.Module) -> torch.device:
    return next(iter(model.parameters()), torch.empty(0)).device


def layer_batches(
    model: nn.Module,
    layer: str,
    data: Sequence[AnnotatedImage],
    batch_size: int = 16,
    progress: Progress | None = None,
) -> Iterator[tuple[range, torch.Tensor]]:
    """``(indices, activations (B, K, h, w))`` of ``layer`` for consecutive batches of ``data``, without
    autograd. The model runs in the mode it is in (call ``model.eval()`` first)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = _device(model)
    starts: Iterable[int] = range(0, len(data), batch_size)
    if progress is not None:
        starts = progress(starts)
    for start in starts:
        idx = range(start, min(start + batch_size, len(data)))
        x = torch.stack([torch.as_tensor(data[i].image) for i in idx]).to(device)
        with torch.no_grad(), capture_output(model, layer) as seen:
            model(x)
        if len(seen) != 1:
            raise ValueError(f"layer {layer!r} runs {len(seen)} times per forward; pick a layer that runs once")
        yield idx, seen[0].detach()


def kth_largest_per_unit(
    model: nn.Module,
    layer: str,
    data: Sequence[AnnotatedImage],
    rank: Callable[[int], int],
    batch_size: int = 16,
    progress: Progress | None = None,
) -> torch.Tensor:
    """(K,) the ``rank(n)``-th largest activation of each unit over all positions of all images (``n`` of
    them per unit: images x h x w), exactly.

    Streaming: one pass over the data keeping the ``rank(n)`` largest values per unit, so memory is
    K x rank(n) values rather than K x n (for a 0.5 % quantile, 1/200 of the activations).
    """
    if len(data) == 0:
        raise ValueError("the annotation data set is empty; give at least one image")
    kept: torch.Tensor | None = None
    k, grid = 0, (0, 0)
    for _, acts in layer_batches(model, layer, data, batch_size, progress):
        units = acts.shape[1]
        if kept is not None and tuple(acts.shape[2:]) != grid:
            raise ValueError(
                f"layer {layer!r} gives {tuple(acts.shape[2:])} maps on some images and {grid} on others; "
                "resize the images to one input size"
            )
        if kept is None:
            grid = (acts.shape[2], acts.shape[3])
            n = len(data) * grid[0] * grid[1]
            k = rank(n)
            if not 1 <= k <= n:
                raise ValueError(f"the rank {k} is outside 1..{n}; the quantile is too small or too large")
            kept = acts.new_empty(units, 0)
        values = torch.cat([kept, acts.transpose(0, 1).reshape(units, -1)], dim=1)
        kept = values.topk(min(k, values.shape[1]), dim=1).values
    assert kept is not None
    return kept[:, k - 1]

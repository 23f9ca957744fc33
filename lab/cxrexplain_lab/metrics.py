"""The evaluation metrics: IoU of the normalized map, best-case IoU, soft IoBB / IoR, AUROC, Spearman.

Heatmaps leave the engine raw and signed. The IoU uses by default the display normalization of
:func:`cxrexplain_render.normalize_for_display`, written down once: negatives are
cast to zero, then each map is divided by its maximum ([Nam2021] §4, "Negative attributions are cast as zero ...
heatmaps ... normalized in {0 ~ 1}"); min-max normalization, which [Khakzar2022]'s authors use, is the option
``normalization="minmax"`` (see :func:`normalize`). Every function takes numpy arrays or torch tensors and returns
numpy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from cxrexplain_render import normalize_for_display

Box = tuple[int, int, int, int]  # (x0, y0, x1, y1), x1 and y1 exclusive: region [y0:y1, x0:x1]
ArrayLike = np.ndarray | torch.Tensor | Sequence[Any]
Normalization = Literal["positive", "minmax"]
IOU_THRESHOLDS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5)  # [Nam2021] Table 2
NORMALIZATIONS: tuple[str, ...] = ("positive", "minmax")


def _np(a: ArrayLike, dtype: Any = np.float64) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=dtype)


def box_mask(box: Box, shape: tuple[int, int]) -> np.ndarray:
    """Boolean (H, W) mask of a box ``(x0, y0, x1, y1)`` (exclusive ends), clipped to the image."""
    x0, y0, x1, y1 = (int(v) for v in box)
    if x1 < x0 or y1 < y0:
        raise ValueError(f"box {box} has x1 < x0 or y1 < y0; boxes are (x0, y0, x1, y1)")
    mask = np.zeros(shape, dtype=bool)
    mask[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = True
    return mask


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boolean masks over the last two axes; 0 when both are empty."""
    inter = np.logical_and(a, b).sum(axis=(-2, -1))
    union = np.logical_or(a, b).sum(axis=(-2, -1))
    return np.divide(inter, union, out=np.zeros(inter.shape, dtype=np.float64), where=union > 0)


def normalize(maps: ArrayLike, normalization: Normalization = "positive") -> np.ndarray:
    """Each (H, W) map brought to [0, 1], float64.

    ``positive`` ([Nam2021] §4, the display normalization): negatives cast to zero, then divided by the maximum;
    an all-zero or all-negative map stays zero. ``minmax`` ([Khakzar2022]'s authors): ``(A - min) / (max - min)``,
    so the smallest value becomes 0 whatever its sign; a constant map (max = min) becomes zero, since it
    points nowhere.

    Parameters
    ----------
    maps
        (H, W) or (..., H, W) raw heatmaps.
    normalization
        ``positive`` (default) or ``minmax``.
    """
    if normalization == "positive":
        return normalize_for_display(maps).astype(np.float64)
    if normalization != "minmax":
        raise ValueError(f"normalization is one of {', '.join(NORMALIZATIONS)}, got {normalization!r}")
    m = _np(maps)
    if m.ndim < 2:
        raise ValueError(f"heatmaps are (H, W) or (..., H, W), got shape {m.shape}")
    low = m.min(axis=(-2, -1), keepdims=True)
    span = m.max(axis=(-2, -1), keepdims=True) - low
    return np.divide(m - low, span, out=np.zeros_like(m), where=span > 0)


def iou_at_threshold(heatmap: ArrayLike, box: Box | ArrayLike, threshold: float,
                     normalization: Normalization = "positive") -> float:
    """IoU between the thresholded heatmap and a lesion box ([Nam2021] §4, Table 2).

    The map is normalized (:func:`normalize`); pixels below ``threshold`` are cast to zero and the
    remaining positive pixels (value >= T and > 0) form the explanation's region, compared with the box.

    Parameters
    ----------
    heatmap
        (H, W) raw heatmap.
    box
        ``(x0, y0, x1, y1)`` with exclusive ends, or an (H, W) boolean region.
    threshold
        T in [0, 1].
    normalization
        ``positive`` ([Nam2021], default) or ``minmax`` ([Khakzar2022]'s authors): see :func:`normalize`.
    """
    norm = normalize(heatmap, normalization)
    if norm.ndim != 2:
        raise ValueError(f"iou_at_threshold takes one (H, W) map, got shape {norm.shape}; use iou_table")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"thresholds are in [0, 1] (the map is normalized), got {threshold}")
    region = _region(box, norm.shape)
    return float(_iou((norm >= threshold) & (norm > 0), region))


def _region(box: Box | ArrayLike, shape: tuple[int, ...]) -> np.ndarray:
    arr = _np(box, dtype=np.float64) if not isinstance(box, tuple) else None
    if arr is not None and arr.shape == tuple(shape[-2:]):
        return arr > 0.5
    return box_mask(tuple(int(v) for v in (box if arr is None else arr.ravel())), shape[-2:])  # type: ignore


def iou_table(
    heatmaps: ArrayLike, boxes: Sequence[Box | ArrayLike], thresholds: Sequence[float] = IOU_THRESHOLDS,
    normalization: Normalization = "positive",
) -> np.ndarray:
    """IoU of each map with its box at each threshold: (N, len(thresholds)); average over rows for [Nam2021] Table 2.

    Parameters
    ----------
    heatmaps
        (N, H, W) raw heatmaps.
    boxes
        N boxes (or boolean regions), one per map.
    thresholds
        T values, default 0.1 ... 0.5 as in [Nam2021] Table 2.
    normalization
        ``positive`` ([Nam2021], default) or ``minmax`` ([Khakzar2022]'s authors): see :func:`normalize`.
    """
    norm = normalize(heatmaps, normalization)
    if norm.ndim != 3 or norm.shape[0] != len(boxes):
        raise ValueError(f"need (N, H, W) maps and N boxes, got maps {norm.shape} and {len(boxes)} boxes")
    regions = np.stack([_region(b, norm.shape) for b in boxes])
    t = np.asarray(thresholds, dtype=np.float64)[None, :, None, None]
    above = (norm[:, None] >= t) & (norm[:, None] > 0)
    return _iou(above, regions[:, None])


def best_case_iou(heatmap: ArrayLike, mask: ArrayLike) -> float:
    """Best-case IoU of [Cohen2021] §3.4: binarize the map at its top-p pixels, p = the number of mask pixels.

    The cut is the p-th largest value: every pixel >= the cut is kept, so tied pixels are all kept (more than p
    may be); zero-valued pixels are never kept, so a map with fewer than p positive pixels keeps only those (a
    map that is zero everywhere scores 0). The map must be non-negative: pass ``|map|`` for gradient maps, as
    [Cohen2021] does (App. H: "absolute values are taken of all attribution maps"), or the positive part for
    maps whose negative values mean evidence against.

    Parameters
    ----------
    heatmap
        (H, W) non-negative map.
    mask
        (H, W) lesion mask (non-zero = inside); must not be empty.
    """
    h = _np(heatmap)
    m = _np(mask, dtype=bool)
    if h.shape != m.shape or h.ndim != 2:
        raise ValueError(f"heatmap {h.shape} and mask {m.shape} must be the same (H, W) shape")
    if (h < 0).any():
        raise ValueError("best_case_iou takes a non-negative map: pass |map| for gradient maps ([Cohen2021] "
                         "takes absolute values) or the positive part for relevance maps")
    p = int(m.sum())
    if p == 0:
        raise ValueError("the mask is empty: best-case IoU is undefined")
    cut = np.partition(h.ravel(), h.size - p)[h.size - p]  # the p-th largest value
    return float(_iou((h >= cut) & (h > 0), m))


def soft_iobb_ior(heatmap: ArrayLike, boxes: Sequence[Box | ArrayLike],
                  image_shape: tuple[int, int]) -> tuple[float, float]:
    """Soft IoBB and IoR of [Khakzar2022] §3 ("Feature Alignment Analysis"): the map A, min-max normalized to
    [0, 1] and resized to the image, summed inside the finding's region instead of thresholded.

    ``IoBB = sum_box A / |box|`` (how much of the box the map covers: a recall) and ``IoR = sum_box A / sum A``
    (how much of the map lies in the box: a precision), the box being the union of that finding's boxes. The
    map is normalized at its own size and then resized bilinearly (``align_corners=False``, as the CAM layers are
    upsampled elsewhere in the project), which keeps it in [0, 1]. A constant map (nothing to normalize) gives
    (0, 0).

    Parameters
    ----------
    heatmap
        (h, w) raw map, for example a CAM at the feature maps' size.
    boxes
        The finding's boxes ``(x0, y0, x1, y1)`` (exclusive ends) in image pixels, or (H, W) boolean regions.
    image_shape
        (H, W) of the image the boxes refer to.

    Returns
    -------
    tuple[float, float]
        (IoBB, IoR).
    """
    norm = normalize(heatmap, "minmax")
    if norm.ndim != 2:
        raise ValueError(f"soft_iobb_ior takes one (h, w) map, got shape {norm.shape}")
    if not boxes:
        raise ValueError("soft_iobb_ior needs at least one box of the finding")
    size = (int(image_shape[0]), int(image_shape[1]))
    if norm.shape != size:
        resized = F.interpolate(torch.from_numpy(norm)[None, None], size=size, mode="bilinear", align_corners=False)
        norm = resized[0, 0].numpy()
    region = np.logical_or.reduce([_region(b, size) for b in boxes])
    inside, total = float(norm[region].sum()), float(norm.sum())
    iobb = inside / int(region.sum()) if region.any() else 0.0
    return iobb, (inside / total if total > 0 else 0.0)


def _rank(a: np.ndarray) -> np.ndarray:
    """Average ranks (1-based) along the last axis, ties sharing the mean of their positions."""
    order = np.argsort(a, axis=-1, kind="stable")
    sorted_a = np.take_along_axis(a, order, axis=-1)
    n = a.shape[-1]
    ranks = np.empty_like(a, dtype=np.float64)
    for idx in np.ndindex(a.shape[:-1]):
        s = sorted_a[idx]
        new_group = np.r_[True, s[1:] != s[:-1]]
        starts = np.flatnonzero(new_group)
        ends = np.r_[starts[1:], n]
        avg = (starts + ends + 1) / 2.0  # mean of 1-based positions start+1 .. end
        group_rank = np.repeat(avg, ends - starts)
        r = np.empty(n)
        r[order[idx]] = group_rank
        ranks[idx] = r
    return ranks


def spearman(a: ArrayLike, b: ArrayLike, batch: bool | None = None) -> float | np.ndarray:
    """Spearman rank correlation (Pearson correlation of average ranks, ties handled).

    Parameters
    ----------
    a, b
        Arrays of equal shape. Unbatched, everything is flattened into one sample (a float comes back);
        batched, the leading axis indexes items and each item is flattened (an (N,) array comes back).
    batch
        Default: batched for inputs of 3 or more dimensions ((N, H, W) maps), unbatched otherwise.

    A constant input gives NaN, as for Pearson.
    """
    x, y = _np(a), _np(b)
    if x.shape != y.shape:
        raise ValueError(f"spearman needs equal shapes, got {x.shape} and {y.shape}")
    batched = x.ndim >= 3 if batch is None else batch
    x = x.reshape(x.shape[0], -1) if batched else x.reshape(1, -1)
    y = y.reshape(x.shape)
    rx, ry = _rank(x), _rank(y)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    denom = np.sqrt((rx**2).sum(axis=1) * (ry**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (rx * ry).sum(axis=1) / denom
    return rho if batched else float(rho[0])


def auroc(scores: ArrayLike, labels: ArrayLike) -> float | np.ndarray:
    """Area under the ROC curve by the Mann-Whitney statistic, ties counted one half.

    1-D inputs give a float; (N, L) inputs give one AUROC per column. A column with only one class gives NaN.
    """
    s, y = _np(scores), _np(labels) > 0.5
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} differ in shape")
    single = s.ndim == 1
    s2, y2 = (s[:, None], y[:, None]) if single else (s, y)
    if s2.ndim != 2:
        raise ValueError(f"auroc takes (N,) or (N, L) inputs, got {s.shape}")
    ranks = _rank(s2.T)  # (L, N) average ranks: ties get half credit
    n_pos = y2.sum(axis=0).astype(np.float64)
    n_neg = y2.shape[0] - n_pos
    rank_sum = (ranks * y2.T).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    out = np.where((n_pos > 0) & (n_neg > 0), out, np.nan)
    return float(out[0]) if single else out


def youden_threshold(scores: ArrayLike, labels: ArrayLike) -> float:
    """The score threshold maximizing Youden's J = sensitivity + specificity - 1 (an operating point).

    Candidates are the midpoints between consecutive distinct scores (and 0.5 when only one class is
    present); a finding is called positive when its score is >= the threshold.
    """
    s, y = _np(scores).ravel(), _np(labels).ravel() > 0.5
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} differ in shape")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return 0.5
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    tp, fp = np.cumsum(y_sorted), np.cumsum(~y_sorted)
    last = np.r_[s_sorted[1:] != s_sorted[:-1], True]  # cut after the last of each group of equal scores
    j = tp[last] / n_pos - fp[last] / n_neg
    cut_scores = s_sorted[last]
    best = int(np.argmax(j))
    lower = cut_scores[best + 1] if best + 1 < len(cut_scores) else cut_scores[best] - 1e-6
    return float((cut_scores[best] + lower) / 2.0)


def iou_summary(table: np.ndarray, thresholds: Sequence[float] = IOU_THRESHOLDS) -> Mapping[float, float]:
    """Mean IoU per threshold of an :func:`iou_table`: the numbers of one column of [Nam2021] Table 2."""
    return {float(t): float(v) for t, v in zip(thresholds, np.asarray(table).mean(axis=0), strict=True)}

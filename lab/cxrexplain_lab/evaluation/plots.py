"""The evaluation's pictures (matplotlib, drawn off-screen): IoU against T per method, randomization curves,
detectors per concept and the units' maps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server or in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def iou_against_t(curves: Mapping[str, Sequence[float]], thresholds: Sequence[float], path: Path,
                  title: str) -> Path:
    """One line per method: mean IoU of the thresholded map with the lesion box at each T ([Nam2021] Table 2)."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for method, values in curves.items():
        if method == "random":  # the level to beat, drawn apart
            ax.plot(thresholds, values, marker="o", label=method, color="black", linestyle="--")
        else:
            ax.plot(thresholds, values, marker="o", label=method)
    ax.set_xlabel("threshold T (map normalized to [0, 1])")
    ax.set_ylabel("mean IoU with the lesion box")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def randomization_curves(steps: Sequence[str], mean: Mapping[str, np.ndarray], std: Mapping[str, np.ndarray],
                         path: Path, title: str) -> Path:
    """[Cohen2021] Fig. 5 / H.1: Spearman correlation with the original map as the model is randomized from the
    output backwards, mean over the images with one standard deviation as a band."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    x = np.arange(len(steps))
    for method in mean:
        ax.plot(x, mean[method], marker="o", label=method)
        ax.fill_between(x, mean[method] - std[method], mean[method] + std[method], alpha=0.15)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xticks(x, [s.removeprefix("features.") for s in steps], rotation=45, ha="right", fontsize=7)
    ax.set_xlabel("randomized up to (cumulative, from the output)")
    ax.set_ylabel("Spearman rank correlation of |map|")
    ax.set_ylim(-0.5, 1.05)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def detectors_per_concept(counts: Mapping[str, int], best: Mapping[str, tuple[int, float]], path: Path,
                          title: str) -> Path:
    """Bars: detectors per concept ([Khakzar2021] Fig. 3's count); beside them each concept's best unit IoU."""
    names = list(counts)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5), dpi=120)
    left.bar(names, [counts[n] for n in names], color="tab:blue")
    left.set_ylabel("detector units (IoU >= threshold)")
    right.bar(names, [best[n][1] if n in best else 0.0 for n in names], color="tab:orange")
    right.set_ylabel("best unit's IoU")
    for ax in (left, right):
        ax.tick_params(axis="x", rotation=45, labelsize=7)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


@dataclass(frozen=True)
class UnitView:
    """One unit on one image: the image (H, W), the unit's map upsampled to the mask's size, its threshold T_k and
    the concept's mask."""

    title: str
    image: np.ndarray
    unit_map: np.ndarray
    threshold: float
    mask: np.ndarray


def unit_maps(views: Sequence[UnitView], path: Path) -> Path:
    """A row per view: the image with the concept outlined, the unit's map over it, and M_k = map >= T_k."""
    fig, axes = plt.subplots(max(1, len(views)), 3, figsize=(7.5, 2.5 * max(1, len(views))), dpi=100,
                             squeeze=False)
    for row, view in zip(axes, views, strict=False):
        for ax in row:
            ax.imshow(view.image, cmap="gray")
            ax.contour(view.mask, levels=[0.5], colors="cyan", linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_title(view.title, fontsize=8, loc="left")
        row[1].imshow(view.unit_map, cmap="inferno", alpha=0.6)
        row[1].set_title("unit map", fontsize=8)
        row[2].imshow(np.ma.masked_where(view.unit_map < view.threshold, view.unit_map), cmap="autumn", alpha=0.8)
        row[2].set_title("M_k (map >= T_k)", fontsize=8)
    for row in axes[len(views):]:
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path

"""The evaluation's pictures (matplotlib, drawn off-screen): IoU against T per method, randomization curves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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

"""Display normalization of raw signed heatmaps, shared by the server's PNG heatmaps, the SDK's overlays and
the lab's IoU."""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import RenderInputError


def normalize_for_display(maps: Any) -> np.ndarray:
    """Negatives cast to zero, then each 2-D map divided by its own maximum; an all-zero map stays zero.

    Parameters
    ----------
    maps
        (H, W) or (..., H, W) raw heatmaps.

    Returns
    -------
    np.ndarray
        float32 in [0, 1], same shape.
    """
    m = np.maximum(np.asarray(maps, dtype=np.float64), 0.0)
    if m.ndim < 2:
        raise RenderInputError(f"heatmaps are (H, W) or (..., H, W), got shape {m.shape}")
    peak = m.max(axis=(-2, -1), keepdims=True)
    out = np.divide(m, peak, out=np.zeros_like(m), where=peak > 0)
    return out.astype(np.float32)


def require_finite(values: np.ndarray, what: str) -> None:
    """Raise :class:`RenderInputError` when a float array holds NaN or Inf (no colour stands for them).

    Parameters
    ----------
    values
        Any numpy array; integer arrays always pass.
    what
        What the array is, for the message ("heatmap", "frames", ...).
    """
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise RenderInputError(f"the {what} contains NaN or Inf values: replace them before rendering")

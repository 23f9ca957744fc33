"""Checks every decoder applies: sizes from the header before any pixel is decoded, finite values, luma."""

from __future__ import annotations

import numpy as np

from cxrexplain.errors import InvalidInput

MIN_SIDE = 32


def check_size(height: int, width: int, max_pixels: int, what: str) -> None:
    if height <= 0 or width <= 0:
        raise InvalidInput(f"the {what} header gives an empty image ({height} x {width}): send a valid image")
    if height * width > max_pixels:
        raise InvalidInput(
            f"image of {height} x {width} pixels is above the limit of {max_pixels} pixels: "
            "downsample it before sending"
        )
    if min(height, width) < MIN_SIDE:
        raise InvalidInput(
            f"image of {height} x {width} pixels is too small: each side needs at least {MIN_SIDE} pixels"
        )


def finish(pixels: np.ndarray) -> np.ndarray:
    pixels = np.asarray(pixels, dtype=np.float32)
    if not np.isfinite(pixels).all():
        raise InvalidInput("the decoded image contains NaN or Inf values: send finite pixel values")
    return np.ascontiguousarray(np.clip(pixels, 0.0, 1.0))


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma, the weights PIL's ``convert("L")`` uses, kept in float to avoid rounding."""
    rgb = rgb.astype(np.float64)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114

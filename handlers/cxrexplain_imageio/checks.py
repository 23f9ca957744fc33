"""Checks every decoder applies: sizes from the header before any pixel is decoded, finite values, luma."""

from __future__ import annotations

from collections.abc import Callable

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
    pixels = np.ascontiguousarray(pixels, dtype=np.float32)
    if not np.isfinite(pixels).all():
        raise InvalidInput("the decoded image contains NaN or Inf values: send finite pixel values")
    if not pixels.flags.writeable:
        pixels = pixels.copy()
    return np.clip(pixels, 0.0, 1.0, out=pixels)  # in place: the decoders' arrays are their own


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma, the weights PIL's ``convert("L")`` uses, kept in float to avoid rounding."""
    rgb = rgb.astype(np.float64)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def reduction_factor(height: int, width: int, target_size: int | None) -> int:
    """The integer factor an image may be reduced by while decoding and still keep at least twice the model's
    side over its shorter side (the side a centre crop keeps); 1 when no target is given."""
    if not target_size or target_size <= 0:
        return 1
    return max(1, min(height, width) // (2 * int(target_size)))


STRIP_SAMPLES = 1 << 20  # 8 MiB of float64 per strip and channel


def reduce_by_strips(height: int, width: int, factor: int, strip: Callable[[int, int], np.ndarray]) -> np.ndarray:
    """Box-reduce an image by ``factor`` reading it in strips of whole rows; float32 (ceil(H/f), ceil(W/f)).

    ``strip(y0, y1)`` returns rows ``y0:y1`` in display space (float, full width). Each output pixel is the mean
    of its ``factor`` x ``factor`` block (of the pixels that exist, at the right and bottom edges), so memory is
    one strip plus the output, whatever the image's size.
    """
    out = np.empty((-(-height // factor), -(-width // factor)), dtype=np.float32)
    rows = max(1, STRIP_SAMPLES // max(1, width * factor)) * factor
    cols_at = np.arange(0, width, factor)
    col_n = np.minimum(factor, width - cols_at).astype(np.float64)
    for y0 in range(0, height, rows):
        y1 = min(height, y0 + rows)
        block = np.asarray(strip(y0, y1), dtype=np.float64)
        if block.shape != (y1 - y0, width):
            raise InvalidInput("the decoded image does not match its header's size")
        rows_at = np.arange(0, y1 - y0, factor)
        row_n = np.minimum(factor, (y1 - y0) - rows_at).astype(np.float64)
        sums = np.add.reduceat(np.add.reduceat(block, rows_at, axis=0), cols_at, axis=1)
        out[y0 // factor : y0 // factor + len(rows_at)] = sums / row_n[:, None] / col_n[None, :]
    return out

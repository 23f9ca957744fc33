"""Rendering on the client: display normalization, a colour map, overlays and GIFs (no matplotlib).

Display normalization follows the service's rule: negatives cast to zero, then divided by the maximum.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from .results import Geometry

# Anchors of a jet-like map (value, (r, g, b)): dark blue -> blue -> cyan -> yellow -> red -> dark red.
_ANCHORS = (
    (0.0, (0.0, 0.0, 0.5)),
    (0.125, (0.0, 0.0, 1.0)),
    (0.375, (0.0, 1.0, 1.0)),
    (0.625, (1.0, 1.0, 0.0)),
    (0.875, (1.0, 0.0, 0.0)),
    (1.0, (0.5, 0.0, 0.0)),
)


def colormap_lut(n: int = 256) -> np.ndarray:
    """An (n, 3) uint8 lookup table, piecewise linear between the anchors."""
    xs = np.linspace(0.0, 1.0, n)
    pos = np.array([a for a, _ in _ANCHORS])
    rgb = np.array([c for _, c in _ANCHORS])
    lut = np.stack([np.interp(xs, pos, rgb[:, k]) for k in range(3)], axis=1)
    return np.round(lut * 255).astype(np.uint8)


_LUT = colormap_lut()


def normalize_for_display(heatmap: np.ndarray) -> np.ndarray:
    """Negatives to zero, divided by the maximum (all zeros stays all zeros); float32 in [0, 1]."""
    h = np.nan_to_num(np.asarray(heatmap, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    h = np.clip(h, 0.0, None)
    peak = float(h.max()) if h.size else 0.0
    return h / peak if peak > 0 else np.zeros_like(h)


def colorize(unit: np.ndarray) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 colours."""
    idx = np.clip(np.round(np.asarray(unit, dtype=np.float32) * 255), 0, 255).astype(np.intp)
    return _LUT[idx]


def to_display_image(image: Any) -> Image.Image:
    """An RGB picture of the original image: a PIL image, an array, a path / bytes (PNG, JPEG, DICOM, .npy),
    or a pydicom Dataset. Arrays are min-max scaled (intensities of X-rays have no fixed range)."""
    if isinstance(image, Image.Image):
        if image.mode in ("I", "I;16", "I;16B", "F"):
            return to_display_image(np.asarray(image))
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        arr = np.asarray(image, dtype=np.float32)
        if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
            arr = np.moveaxis(arr, 0, -1)
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
        return Image.fromarray(np.round(scaled * 255).astype(np.uint8)).convert("RGB")
    if hasattr(image, "pixel_array"):  # pydicom Dataset
        return to_display_image(_dicom_display_array(image))
    data: bytes
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
    elif isinstance(image, (str, os.PathLike)):
        with open(image, "rb") as fh:
            data = fh.read()
    else:
        raise TypeError(f"cannot display an image of type {type(image).__name__}")
    if data[:6] == b"\x93NUMPY":
        return to_display_image(np.load(io.BytesIO(data), allow_pickle=False))
    if len(data) > 132 and data[128:132] == b"DICM":
        import pydicom

        return to_display_image(_dicom_display_array(pydicom.dcmread(io.BytesIO(data))))
    return to_display_image(Image.open(io.BytesIO(data)))


def _dicom_display_array(ds: Any) -> np.ndarray:
    arr = np.asarray(ds.pixel_array, dtype=np.float32)
    if arr.ndim == 3 and getattr(ds, "SamplesPerPixel", 1) == 1:
        arr = arr[0]  # multi-frame: show the first frame
    if str(getattr(ds, "PhotometricInterpretation", "")) == "MONOCHROME1":
        arr = arr.max() - arr  # MONOCHROME1 shows high values dark
    return arr


def heatmap_to_image_geometry(
    heatmap: np.ndarray, size: tuple[int, int], geometry: Geometry | None
) -> np.ndarray:
    """Place a model-resolution heatmap over the original image (height, width).

    With a geometry, the map is resized to the centre-crop square and pasted at its offset (zero elsewhere);
    without one, it is stretched over the whole image.
    """
    height, width = size
    h = np.asarray(heatmap, dtype=np.float32)
    if geometry is None or geometry.crop_size <= 0:
        return np.asarray(Image.fromarray(h, mode="F").resize((width, height), Image.Resampling.BILINEAR))
    s = geometry.crop_size
    square = np.asarray(Image.fromarray(h, mode="F").resize((s, s), Image.Resampling.BILINEAR))
    out = np.zeros((height, width), dtype=np.float32)
    top, left = geometry.crop_top, geometry.crop_left
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + s, height), min(left + s, width)
    if y1 > y0 and x1 > x0:
        out[y0:y1, x0:x1] = square[y0 - top : y1 - top, x0 - left : x1 - left]
    return out


def overlay(
    heatmap: np.ndarray,
    image: Any,
    geometry: Geometry | None = None,
    alpha: float = 0.6,
    normalized: bool = False,
) -> Image.Image:
    """Colour overlay of a heatmap on the original image.

    Parameters
    ----------
    heatmap
        (H, W) raw map at the model's resolution.
    image
        The original image (anything :func:`to_display_image` takes).
    geometry
        Where the model input lies in the image (from the response); ``None`` stretches the map.
    alpha
        Opacity of the colour at the map's maximum; opacity scales with the value, so cold areas stay clear.
    normalized
        The map is already in [0, 1] (a PNG heatmap): skip display normalization.

    Returns
    -------
    PIL.Image.Image
        RGB, the size of the original image.
    """
    base = to_display_image(image)
    width, height = base.size
    unit = np.clip(heatmap, 0, 1) if normalized else normalize_for_display(heatmap)
    placed = np.clip(heatmap_to_image_geometry(unit, (height, width), geometry), 0.0, 1.0)
    colour = colorize(placed).astype(np.float32)
    weight = (alpha * placed)[..., None]
    mixed = (1.0 - weight) * np.asarray(base, dtype=np.float32) + weight * colour
    return Image.fromarray(np.round(mixed).astype(np.uint8), mode="RGB")


def frames_to_gif(
    frames: np.ndarray | Sequence[np.ndarray], duration_ms: int = 120, bounce: bool = True
) -> bytes:
    """Animated GIF of grayscale frames in [0, 1]; ``bounce`` plays forward then back, as counterfactual
    animations are shown."""
    seq = [np.asarray(f, dtype=np.float32) for f in frames]
    if not seq:
        raise ValueError("no frames to animate")
    if bounce and len(seq) > 2:
        seq = seq + seq[-2:0:-1]
    images = [Image.fromarray(np.round(np.clip(f, 0, 1) * 255).astype(np.uint8), mode="L") for f in seq]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=duration_ms, loop=0)
    return buf.getvalue()

"""Overlays: a raw heatmap, mapped back to the original image through the response's geometry, blended over
the radiograph in the one colormap."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
from PIL import Image

from .colormap import colorize
from .errors import RenderInputError, RenderOptionError
from .maps import normalize_for_display, require_finite

DEFAULT_ALPHA = 0.6
"""Opacity of the colour where the normalized map is 1 (the SDK's, the CLI's and the docs' default)."""


class GeometryLike(Protocol):
    """Where the model's square input lies in the original image, in original pixels.

    The engine's ``Geometry``, the client's ``Geometry`` and the wire's ``Geometry`` message all have these
    fields. ``crop_size == 0`` marks the stretch policy: the whole image was resized to the model's square.
    """

    @property
    def original_height(self) -> int: ...

    @property
    def original_width(self) -> int: ...

    @property
    def crop_top(self) -> int: ...

    @property
    def crop_left(self) -> int: ...

    @property
    def crop_size(self) -> int: ...

    @property
    def model_size(self) -> int: ...


def _resize(a: np.ndarray, height: int, width: int) -> np.ndarray:
    # Pillow's bilinear filter widens its support when shrinking (antialiasing) and samples pixel centres:
    # the same result as torch's bilinear interpolate (align_corners=False, antialias on shrinking).
    im = Image.fromarray(np.ascontiguousarray(a, dtype=np.float32), mode="F")
    return np.asarray(im.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)


def heatmap_to_original(heatmap: Any, geometry: GeometryLike) -> np.ndarray:
    """Map a model-space map back onto the original image: the inverse of centre-crop + resize.

    The map is resized to the crop square and pasted at the crop offset into a zero canvas (the parts of
    the image the model never saw carry no evidence). With the stretch policy (``crop_size == 0``) the map
    is resized to the whole image.

    Parameters
    ----------
    heatmap
        (S, S) map at the model's resolution (raw or display-normalized).
    geometry
        The response's geometry (any object with the fields of :class:`GeometryLike`).

    Returns
    -------
    np.ndarray
        (original_height, original_width) float32.

    Raises
    ------
    RenderInputError
        The map is not 2-D, or the crop square lies outside the image.
    """
    h = np.asarray(heatmap, dtype=np.float32)
    if h.ndim != 2:
        raise RenderInputError(f"expected one (S, S) heatmap, got shape {h.shape}")
    height, width = int(geometry.original_height), int(geometry.original_width)
    if geometry.crop_size == 0:
        return _resize(h, height, width)
    top, left, c = int(geometry.crop_top), int(geometry.crop_left), int(geometry.crop_size)
    if top < 0 or left < 0 or top + c > height or left + c > width:
        raise RenderInputError(
            f"the geometry's crop ({c} px square at row {top}, column {left}) lies outside the "
            f"{height} x {width} image: pass the geometry of the response that explained this image"
        )
    canvas = np.zeros((height, width), dtype=np.float32)
    canvas[top : top + c, left : left + c] = _resize(h, c, c)
    return canvas


def _base_rgb(image: Any) -> np.ndarray:
    """The radiograph as (H, W, 3) float in [0, 255]: uint8 taken as is, floats as [0, 1] (clipped)."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    img = np.asarray(image)
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[-1] != 3):
        raise RenderInputError(f"expected an (H, W) gray or (H, W, 3) RGB image, got shape {img.shape}")
    if img.dtype == np.uint8:
        rgb = img.astype(np.float32)
    else:
        require_finite(img, "image")
        rgb = np.clip(img.astype(np.float32), 0.0, 1.0) * 255.0
    return rgb if rgb.ndim == 3 else np.repeat(rgb[..., None], 3, axis=-1)


def overlay(
    image: Any,
    heatmap: Any,
    *,
    alpha: float = DEFAULT_ALPHA,
    geometry: GeometryLike | None = None,
    normalized: bool = False,
) -> Image.Image:
    """Blend a heatmap over the radiograph in :data:`~cxrexplain_render.colormap.COLORMAP_LUT`.

    Parameters
    ----------
    image
        The radiograph: a PIL image, a uint8 (H, W) / (H, W, 3) array, or a float one in [0, 1].
    heatmap
        At the image's size, or at the model's size when ``geometry`` is given.
    alpha
        Opacity where the normalized map is 1; the opacity of a pixel is ``alpha * map``, so pixels
        without evidence show the radiograph unchanged.
    geometry
        Maps a model-space heatmap back with :func:`heatmap_to_original` first.
    normalized
        The map is already display-normalized in [0, 1] (a PNG heatmap of the wire): it is only clipped.
        Otherwise it is raw and goes through :func:`~cxrexplain_render.maps.normalize_for_display`.

    Returns
    -------
    PIL.Image.Image
        RGB image of the original size.

    Raises
    ------
    RenderOptionError
        ``alpha`` outside [0, 1].
    RenderInputError
        NaN/Inf values, wrong shapes, or a model-size map over a larger image without its geometry.
    """
    if not 0.0 <= alpha <= 1.0:
        raise RenderOptionError(f"alpha {alpha} is outside [0, 1]: pass an opacity between 0 and 1")
    base = _base_rgb(image)
    h = np.asarray(heatmap, dtype=np.float32)
    require_finite(h, "heatmap")
    m = np.clip(h, 0.0, 1.0) if normalized else normalize_for_display(h)
    if geometry is not None:
        m = np.clip(heatmap_to_original(m, geometry), 0.0, 1.0)
    if m.shape != base.shape[:2]:
        raise RenderInputError(
            f"heatmap {m.shape} and image {base.shape[:2]} differ in size: pass the geometry to map it back"
        )
    w = (alpha * m)[..., None]
    out = (1.0 - w) * base + w * colorize(m).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), mode="RGB")

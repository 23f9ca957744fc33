"""Encodings of maps and frames: PNG (8 or 16 bit), raw float16 / float32 arrays (and their decoding), GIF.

These are the bytes of the wire (``heatmap_format=png|array``, the latent-shift GIF) and of the SDK's files.
"""

from __future__ import annotations

import io
from typing import Any, Literal

import numpy as np
from PIL import Image

from .errors import RenderInputError, RenderOptionError
from .maps import require_finite

ArrayDType = Literal["float16", "float32"]
_DTYPES: dict[str, np.dtype] = {"float16": np.dtype("<f2"), "float32": np.dtype("<f4")}


def _dtype(dtype: str) -> np.dtype:
    if dtype not in _DTYPES:
        raise RenderOptionError(f"heatmap dtype {dtype!r} is not supported: use 'float16' or 'float32'")
    return _DTYPES[dtype]


def encode_png(image: Any, bit_depth: Literal[8, 16] = 8) -> bytes:
    """Encode a display image as PNG.

    Parameters
    ----------
    image
        A uint8 (H, W) gray or (H, W, 3) RGB array (or a PIL image), written as it is; or a float (H, W)
        map taken as [0, 1] (clipped) and written as gray.
    bit_depth
        For float maps: 8, or 16 for maps that should keep more than 256 levels (value = round(x * 65535)).

    Returns
    -------
    bytes
        The PNG file.

    Raises
    ------
    RenderInputError
        Wrong shape, or NaN/Inf values.
    RenderOptionError
        A bit depth other than 8 or 16.
    """
    a = np.asarray(image)
    if a.dtype == np.uint8:
        if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] == 3)):
            raise RenderInputError(f"expected (H, W) or (H, W, 3) uint8, got shape {a.shape}")
        im = Image.fromarray(a, mode="L" if a.ndim == 2 else "RGB")
    else:
        a = a.astype(np.float64)
        if a.ndim != 2:
            raise RenderInputError(f"expected an (H, W) map in [0, 1], got shape {a.shape}")
        require_finite(a, "map")
        a = np.clip(a, 0.0, 1.0)
        if bit_depth == 16:
            im = Image.fromarray(np.rint(a * 65535.0).astype(np.uint16))  # mode I;16
        elif bit_depth == 8:
            im = Image.fromarray(np.rint(a * 255.0).astype(np.uint8), mode="L")
        else:
            raise RenderOptionError(f"PNG bit depth {bit_depth} is not supported: use 8 or 16")
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def encode_array(heatmap: Any, dtype: ArrayDType = "float16") -> bytes:
    """Encode a raw map as little-endian bytes of ``dtype`` (row-major): the ``heatmap_format=array`` form.

    Parameters
    ----------
    heatmap
        (H, W) raw map (any array-like of numbers).
    dtype
        ``float16`` (half the bytes) or ``float32``.

    Returns
    -------
    bytes
        ``H * W * itemsize`` bytes.

    Raises
    ------
    RenderOptionError
        Unknown dtype, or values too large for float16 (ask for float32).
    RenderInputError
        NaN/Inf values.
    """
    dt = _dtype(dtype)
    a = np.asarray(heatmap, dtype=np.float64)
    require_finite(a, "heatmap")
    if dtype == "float16" and a.size and np.abs(a).max() > float(np.finfo(np.float16).max):
        raise RenderOptionError("heatmap values exceed the float16 range: request heatmap_dtype=float32")
    return np.ascontiguousarray(a.astype(dt)).tobytes()


def decode_array(data: bytes, height: int, width: int, dtype: ArrayDType = "float16") -> np.ndarray:
    """Inverse of :func:`encode_array`.

    Parameters
    ----------
    data
        The map's bytes.
    height, width
        The map's shape.
    dtype
        The dtype the bytes were written in.

    Returns
    -------
    np.ndarray
        (height, width) float32.

    Raises
    ------
    RenderInputError
        The byte count does not match the shape and dtype.
    """
    dt = _dtype(dtype)
    if len(data) != height * width * dt.itemsize:
        raise RenderInputError(
            f"{len(data)} bytes do not hold a {height} x {width} {dtype} map ({height * width * dt.itemsize})"
        )
    return np.frombuffer(data, dtype=dt).reshape(height, width).astype(np.float32)


def frames_to_gif(frames: Any, duration_ms: int = 100, loop: int | None = 0, bounce: bool = True) -> bytes:
    """Animate display-space frames as a gray GIF.

    Parameters
    ----------
    frames
        (K, H, W) frames in [0, 1] (clipped).
    duration_ms
        Display time of each frame.
    loop
        0 repeats forever; None plays once.
    bounce
        Play forward then backward without repeating the end frames (K + K - 2 frames), as the latent-shift
        videos of [Cohen2021] do.

    Returns
    -------
    bytes
        The GIF file.

    Raises
    ------
    RenderInputError
        Not (K, H, W) with K >= 1, or NaN/Inf values.
    """
    f = np.asarray(frames, dtype=np.float32)
    if f.ndim != 3 or f.shape[0] < 1:
        raise RenderInputError(f"expected (K, H, W) frames with K >= 1, got shape {f.shape}")
    require_finite(f, "frames")
    seq = list(np.rint(np.clip(f, 0.0, 1.0) * 255.0).astype(np.uint8))
    if bounce and len(seq) > 2:
        seq = seq + seq[-2:0:-1]
    images = [Image.fromarray(a, mode="L") for a in seq]
    kwargs: dict[str, Any] = {"save_all": True, "append_images": images[1:], "duration": int(duration_ms)}
    if loop is not None:
        kwargs["loop"] = int(loop)
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", optimize=False, **kwargs)
    return buf.getvalue()

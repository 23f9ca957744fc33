"""Decode request bodies (PNG, JPEG, DICOM, NPY) into one grayscale display-space image, safely.

Everything here is a pure function of the bytes: no file system, no network, and **no logging** (a DICOM
header holds patient data; nothing read from it is ever logged or put in an error message). Hostile input
(random bytes, truncated files, decompression bombs, absurd header dimensions) ends in one of two typed errors:
:class:`~cxrexplain.errors.InvalidInput` (400) or :class:`~cxrexplain.errors.UnsupportedMediaType` (415).
Dimensions are checked from the header *before* any pixel data is decoded.

Display space ("unit space" of :mod:`cxrexplain.spec`): float32 in [0, 1], 0 black, 1 white.
"""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from PIL import Image

from cxrexplain.errors import CxrExplainError, InvalidInput, UnsupportedMediaType

from .checks import STRIP_SAMPLES, check_size, finish, luma, reduce_by_strips, reduction_factor
from .dicom import DEFAULT_MODALITIES, decode_dicom, quiet_pydicom

Kind = Literal["png", "jpeg", "dicom", "npy"]

ACCEPTED = "PNG (8/16-bit), JPEG, DICOM (CR/DX, single frame) or NumPy .npy (float, (H, W))"

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_NPY_MAGIC = b"\x93NUMPY"
_EXPLICIT_VRS = {
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"OB", b"OD", b"OF",
    b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM", b"UC", b"UI", b"UL", b"UN",
    b"UR", b"US", b"UT", b"UV",
}
_CONTENT_TYPES: dict[str, Kind] = {
    "image/png": "png",
    "image/x-png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/pjpeg": "jpeg",
    "application/dicom": "dicom",
    "application/x-dicom": "dicom",
    "image/dicom": "dicom",
    "application/x-npy": "npy",
    "application/npy": "npy",
    "application/x-numpy": "npy",
}


@dataclass
class DecodedImage:
    """One decoded image in display space.

    Attributes
    ----------
    pixels
        float32 in [0, 1], 0 black and 1 white: (H, W), or (ceil(H / r), ceil(W / r)) when decoded reduced by
        ``reduction`` = r (each pixel the mean of an r x r block of the original's display values).
    kind
        The format decoded: ``"png"``, ``"jpeg"``, ``"dicom"`` or ``"npy"``.
    bit_depth
        Bits per sample of the source (8 or 16 for PNG, 8 for JPEG, Bits Stored for DICOM, 8 * itemsize for npy).
    height, width
        The original size in pixels (equal to ``pixels.shape`` unless ``reduction`` > 1); heatmap geometry is
        always in these original pixels (``to_model_input(..., original_size=, reduction=)``).
    dicom
        For DICOM only: technical attributes and the UIDs needed to link a derived object back to the study
        (see :func:`dicom_info`). No patient data. Keep it in memory; never log it.
    patient
        For DICOM only and only when ``decode_image(..., keep_patient_link=True)``: Patient ID and Patient
        Name, the minimum a PACS needs to file a derived object with its study. Hidden from ``repr``.
    """

    pixels: np.ndarray
    kind: Kind
    bit_depth: int
    height: int
    width: int
    dicom: dict[str, Any] | None = field(default=None, repr=False)
    patient: dict[str, str] | None = field(default=None, repr=False)
    reduction: int = 1


# --------------------------------------------------------------------------------------------- detection


def _content_kind(content_type: str | None) -> Kind | None:
    if not content_type:
        return None
    base = content_type.split(";", 1)[0].strip().lower()
    return _CONTENT_TYPES.get(base)


def _looks_like_dicom_without_preamble(data: bytes) -> bool:
    """A DICOM data set written without the 128-byte preamble starts with a (0002,xxxx) or (0008,xxxx) tag."""
    if len(data) < 8:
        return False
    group, element = struct.unpack_from("<HH", data, 0)
    if group not in (0x0002, 0x0008) or element > 0x0100:
        return False
    if data[4:6] in _EXPLICIT_VRS:
        return True
    # Implicit VR: a 4-byte little-endian length that fits in the body.
    (length,) = struct.unpack_from("<I", data, 4)
    return length < min(len(data), 1024)


def detect_kind(data: bytes, content_type: str | None = None) -> Kind:
    """Guess the format from magic bytes, then from the content type.

    Raises
    ------
    UnsupportedMediaType
        Neither the bytes nor the content type name an accepted format.
    """
    if data.startswith(_PNG_MAGIC):
        return "png"
    if data.startswith(_JPEG_MAGIC):
        return "jpeg"
    if data.startswith(_NPY_MAGIC):
        return "npy"
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    if _looks_like_dicom_without_preamble(data):
        return "dicom"
    kind = _content_kind(content_type)
    if kind is not None:
        return kind
    shown = (content_type or "none").split(";", 1)[0].strip()[:60]
    raise UnsupportedMediaType(
        f"unrecognised image format (content type: {shown}): send {ACCEPTED}"
    )



# --------------------------------------------------------------------------------------------- PNG / JPEG


def _png_header(data: bytes) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) from the IHDR chunk, which PNG requires to come first."""
    if len(data) < 29 or data[12:16] != b"IHDR":
        raise InvalidInput("the PNG could not be decoded: its header is missing or truncated")
    width, height, depth, colour = struct.unpack_from(">IIBB", data, 16)
    return width, height, depth, colour


def _decode_pil(
    data: bytes, kind: Kind, max_pixels: int, target_size: int | None
) -> tuple[np.ndarray, int, int, tuple[int, int]]:
    """(display-space pixels, bit depth, reduction factor, original (height, width)).

    With a target size the image is reduced while decoding: JPEG by libjpeg's DCT scaling (``draft``, 1/2 to
    1/8), then any format by a box mean over strips of the decoded integer image, so no full-size float buffer
    is ever made."""
    fmt = "PNG" if kind == "png" else "JPEG"
    depth = 8
    if kind == "png":
        width, height, depth, _ = _png_header(data)
        check_size(height, width, max_pixels, "PNG")
    try:
        with warnings.catch_warnings():
            # Our own pixel limit is the authority; PIL's bomb warning is silenced and its hard error is
            # turned into InvalidInput below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[fmt]) as im:
                width, height = im.size
                check_size(height, width, max_pixels, fmt)  # header only: nothing decoded yet
                if getattr(im, "is_animated", False) and kind == "png":
                    raise InvalidInput("animated PNG: send a single image")
                factor = reduction_factor(height, width, target_size)
                scale = _jpeg_draft(im, width, height, factor) if kind == "jpeg" else 1
                im.load()
                factor = max(1, factor // scale)
                # Strips also at factor 1 for a large image (a long thin one keeps its full resolution): one
                # float32 output instead of a full-size float64 copy.
                if factor > 1 or im.size[0] * im.size[1] > STRIP_SAMPLES:
                    arr = _pil_reduced(im, depth, factor)
                else:
                    arr = _pil_to_unit(im, depth)
                factor *= scale
    except CxrExplainError:
        raise
    except Image.DecompressionBombError:
        raise InvalidInput(
            f"the {fmt} image is above the limit of {max_pixels} pixels: downsample it before sending"
        ) from None
    except Exception as exc:  # any parser failure on hostile or damaged input
        raise InvalidInput(
            f"the {fmt} image could not be decoded ({type(exc).__name__}): the file is corrupt or truncated"
        ) from exc
    return arr, depth if kind == "png" else 8, factor, (height, width)


def _jpeg_draft(im: Image.Image, width: int, height: int, factor: int) -> int:
    """Ask libjpeg to decode at 1/2, 1/4 or 1/8 scale (at most ``factor``); the scale it chose."""
    scale = max((s for s in (8, 4, 2, 1) if s <= factor), default=1)
    if scale == 1:
        return 1
    im.draft(None, (-(-width // scale), -(-height // scale)))
    for s in (8, 4, 2):
        if im.size == (-(-width // s), -(-height // s)):
            return s
    return 1


def _pil_reduced(im: Image.Image, depth: int, factor: int) -> np.ndarray:
    width, height = im.size
    return reduce_by_strips(height, width, factor, lambda y0, y1: _pil_to_unit(im.crop((0, y0, width, y1)), depth))


def _pil_to_unit(im: Image.Image, png_depth: int) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(im, dtype=np.uint16).astype(np.float64) / 65535.0  # by the type's max, not the image's
    if mode == "I":
        # 32-bit integer mode: older Pillow versions open 16-bit grayscale PNGs this way.
        scale = 65535.0 if png_depth == 16 else float(2**31 - 1)
        return np.asarray(im, dtype=np.int64) / scale
    if mode == "F":
        return np.asarray(im, dtype=np.float64)
    if mode == "1":
        return np.asarray(im, dtype=np.float64)
    if mode in ("L", "LA"):  # alpha is dropped: the stored gray values are the radiograph
        return np.asarray(im.getchannel(0), dtype=np.float64) / 255.0
    if mode in ("RGB", "RGBA"):
        return luma(np.asarray(im)[..., :3]) / 255.0
    # P, PA, CMYK, YCbCr, LAB, ...: let PIL bring it to RGB first.
    return luma(np.asarray(im.convert("RGB"))) / 255.0


# --------------------------------------------------------------------------------------------- NPY


def _decode_npy(
    data: bytes, max_pixels: int, value_range: tuple[float, float] | None, target_size: int | None
) -> tuple[np.ndarray, int, int, tuple[int, int]]:
    from numpy.lib import format as npformat

    f = io.BytesIO(data)
    try:
        version = npformat.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = npformat.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, _, dtype = npformat.read_array_header_2_0(f)
        else:
            raise ValueError("unknown npy version")
    except Exception as exc:
        raise InvalidInput(f"the .npy array could not be decoded ({type(exc).__name__}): bad header") from exc
    if dtype.hasobject or dtype.kind not in "biuf":
        raise InvalidInput(f"npy dtype {dtype} is not supported: send a float32 (H, W) array")
    if len(shape) == 3 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) != 2:
        raise InvalidInput(f"npy array has shape {tuple(shape)}: send one (H, W) or (1, H, W) image")
    check_size(int(shape[0]), int(shape[1]), max_pixels, "npy")
    f.seek(0)
    try:
        arr = np.load(f, allow_pickle=False)  # never unpickle request bodies
    except Exception as exc:
        raise InvalidInput(
            f"the .npy array could not be decoded ({type(exc).__name__}): the file is corrupt or truncated"
        ) from exc
    arr = arr.reshape(shape)
    lo, hi = 0.0, 1.0
    if value_range is not None:
        lo, hi = float(value_range[0]), float(value_range[1])
        if not hi > lo:
            raise InvalidInput(f"value_range {value_range} is empty: give (low, high) with high > low")
    height, width = shape
    step = max(1, STRIP_SAMPLES // max(1, width))
    vmin, vmax = np.inf, -np.inf
    for y0 in range(0, height, step):  # checked strip by strip: no full-size float64 copy
        part = np.asarray(arr[y0 : y0 + step], dtype=np.float64)
        if not np.isfinite(part).all():
            raise InvalidInput("the npy array contains NaN or Inf values: send finite values")
        vmin = min(vmin, (float(part.min()) - lo) / (hi - lo))
        vmax = max(vmax, (float(part.max()) - lo) / (hi - lo))
    tol = 1e-3
    if vmin < -tol or vmax > 1 + tol:
        raise InvalidInput(
            f"npy values span [{vmin:.4g}, {vmax:.4g}]: send values in [0, 1] "
            "(0 black, 1 white) or give value_range"
        )
    factor = reduction_factor(height, width, target_size)
    unit = reduce_by_strips(height, width, factor,
                            lambda y0, y1: (np.asarray(arr[y0:y1], dtype=np.float64) - lo) / (hi - lo))
    return unit, dtype.itemsize * 8, factor, (height, width)


# --------------------------------------------------------------------------------------------- public


def decode_image(
    data: bytes,
    content_type: str | None = None,
    *,
    max_pixels: int = 40_000_000,
    max_bytes: int | None = None,
    value_range: tuple[float, float] | None = None,
    modalities: Collection[str] | None = DEFAULT_MODALITIES,
    keep_patient_link: bool = False,
    target_size: int | None = None,
) -> DecodedImage:
    """Decode a request body into a grayscale display-space image.

    Parameters
    ----------
    data
        The raw bytes of the request body (or of its ``data`` part).
    content_type
        The declared media type; used only when the magic bytes do not identify the format.
    max_pixels
        Largest accepted height * width, checked from the header before decoding.
    max_bytes
        Largest accepted body size (None: no limit here; TorchServe has its own).
    value_range
        For .npy only: the (low, high) that map to (0, 1). Without it values must already be in [0, 1].
    modalities
        Accepted DICOM Modality values (a missing Modality is accepted); None accepts any.
    keep_patient_link
        Fill :attr:`DecodedImage.patient` (Patient ID and Name) for writing a derived DICOM back.
    target_size
        The model's input side. When given, the image may be reduced while it is decoded (by an integer factor
        that keeps at least twice this side over the image's shorter side), which bounds the memory a large
        image costs; :attr:`DecodedImage.reduction` says by how much. None decodes at full resolution.

    Returns
    -------
    DecodedImage

    Raises
    ------
    InvalidInput
        Empty, too large, too small, corrupt or truncated input, NaN/Inf, multi-frame DICOM.
    UnsupportedMediaType
        An unrecognised format or a DICOM transfer syntax without a decoder.
    """
    if not data:
        raise InvalidInput(f"empty request body: send the image bytes ({ACCEPTED}) as the body or the 'data' field")
    if max_bytes is not None and len(data) > max_bytes:
        raise InvalidInput(f"request body of {len(data)} bytes is above the limit of {max_bytes} bytes")
    data = bytes(data)
    kind = detect_kind(data, content_type)
    info: dict[str, Any] | None = None
    patient: dict[str, str] | None = None
    reduction = 1
    if kind in ("png", "jpeg"):
        arr, depth, reduction, (height, width) = _decode_pil(data, kind, max_pixels, target_size)
    elif kind == "npy":
        arr, depth, reduction, (height, width) = _decode_npy(data, max_pixels, value_range, target_size)
    else:
        with quiet_pydicom():  # pydicom's warnings and logs quote element values, which may be patient data
            arr, depth, info, patient, reduction = decode_dicom(data, max_pixels, modalities, keep_patient_link,
                                                                target_size)
        height, width = info["rows"], info["columns"]
    pixels = finish(arr)
    return DecodedImage(
        pixels=pixels, kind=kind, bit_depth=int(depth), height=int(height), width=int(width),
        dicom=info, patient=patient, reduction=int(reduction),
    )

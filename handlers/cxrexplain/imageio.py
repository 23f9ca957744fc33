"""Decode request bodies (PNG, JPEG, DICOM, NPY) into one grayscale display-space image, safely.

Everything here is a pure function of the bytes: no file system, no network, and **no logging** (a DICOM
header holds patient data; nothing read from it is ever logged or put in an error message). Hostile input
(random bytes, truncated files, decompression bombs, absurd header dimensions) ends in one of two typed errors:
:class:`~cxrexplain.errors.InvalidInput` (400) or :class:`~cxrexplain.errors.UnsupportedMediaType` (415).
Dimensions are checked from the header *before* any pixel data is decoded.

Display space ("unit space" of :mod:`cxrexplain.spec`): float32 in [0, 1], 0 black, 1 white.
"""

from __future__ import annotations

import contextlib
import io
import logging
import struct
import threading
import warnings
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from .errors import CxrExplainError, InvalidInput, UnsupportedMediaType
from .spec import InputSpec

Kind = Literal["png", "jpeg", "dicom", "npy"]

MIN_SIDE = 32
ACCEPTED = "PNG (8/16-bit), JPEG, DICOM (CR/DX, single frame) or NumPy .npy (float, (H, W))"
DEFAULT_MODALITIES = frozenset({"CR", "DX", "RG", "OT"})  # radiographs and secondary captures

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
        float32 (H, W) in [0, 1], 0 black and 1 white.
    kind
        The format decoded: ``"png"``, ``"jpeg"``, ``"dicom"`` or ``"npy"``.
    bit_depth
        Bits per sample of the source (8 or 16 for PNG, 8 for JPEG, Bits Stored for DICOM, 8 * itemsize for npy).
    height, width
        The original size in pixels (equal to ``pixels.shape``).
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


@dataclass(frozen=True)
class Geometry:
    """Where the model's square input lies in the original image (``Geometry`` of protos/explain.proto).

    ``crop_size == 0`` marks the ``"stretch"`` resize policy: the whole image was resized to the model's
    square without cropping, so ``crop_top`` and ``crop_left`` are 0 and the map goes back by a plain resize.
    """

    original_height: int
    original_width: int
    crop_top: int
    crop_left: int
    crop_size: int
    model_size: int

    def to_dict(self) -> dict[str, int]:
        return {
            "original_height": self.original_height,
            "original_width": self.original_width,
            "crop_top": self.crop_top,
            "crop_left": self.crop_left,
            "crop_size": self.crop_size,
            "model_size": self.model_size,
        }


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


# --------------------------------------------------------------------------------------------- checks


def _check_size(height: int, width: int, max_pixels: int, what: str) -> None:
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


def _finish(pixels: np.ndarray) -> np.ndarray:
    pixels = np.asarray(pixels, dtype=np.float32)
    if not np.isfinite(pixels).all():
        raise InvalidInput("the decoded image contains NaN or Inf values: send finite pixel values")
    return np.ascontiguousarray(np.clip(pixels, 0.0, 1.0))


def _luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma, the weights PIL's ``convert("L")`` uses, kept in float to avoid rounding."""
    rgb = rgb.astype(np.float64)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


# --------------------------------------------------------------------------------------------- PNG / JPEG


def _png_header(data: bytes) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) from the IHDR chunk, which PNG requires to come first."""
    if len(data) < 29 or data[12:16] != b"IHDR":
        raise InvalidInput("the PNG could not be decoded: its header is missing or truncated")
    width, height, depth, colour = struct.unpack_from(">IIBB", data, 16)
    return width, height, depth, colour


def _decode_pil(data: bytes, kind: Kind, max_pixels: int) -> tuple[np.ndarray, int]:
    fmt = "PNG" if kind == "png" else "JPEG"
    depth = 8
    if kind == "png":
        width, height, depth, _ = _png_header(data)
        _check_size(height, width, max_pixels, "PNG")
    try:
        with warnings.catch_warnings():
            # Our own pixel limit is the authority; PIL's bomb warning is silenced and its hard error is
            # turned into InvalidInput below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[fmt]) as im:
                width, height = im.size
                _check_size(height, width, max_pixels, fmt)  # header only: nothing decoded yet
                if getattr(im, "is_animated", False) and kind == "png":
                    raise InvalidInput("animated PNG: send a single image")
                im.load()
                arr = _pil_to_unit(im, depth)
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
    return arr, depth if kind == "png" else 8


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
        return _luma(np.asarray(im)[..., :3]) / 255.0
    # P, PA, CMYK, YCbCr, LAB, ...: let PIL bring it to RGB first.
    return _luma(np.asarray(im.convert("RGB"))) / 255.0


# --------------------------------------------------------------------------------------------- NPY


def _decode_npy(data: bytes, max_pixels: int, value_range: tuple[float, float] | None) -> tuple[np.ndarray, int]:
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
    _check_size(int(shape[0]), int(shape[1]), max_pixels, "npy")
    f.seek(0)
    try:
        arr = np.load(f, allow_pickle=False)  # never unpickle request bodies
    except Exception as exc:
        raise InvalidInput(
            f"the .npy array could not be decoded ({type(exc).__name__}): the file is corrupt or truncated"
        ) from exc
    arr = np.asarray(arr, dtype=np.float64).reshape(shape)
    if not np.isfinite(arr).all():
        raise InvalidInput("the npy array contains NaN or Inf values: send finite values")
    if value_range is not None:
        lo, hi = float(value_range[0]), float(value_range[1])
        if not hi > lo:
            raise InvalidInput(f"value_range {value_range} is empty: give (low, high) with high > low")
        arr = (arr - lo) / (hi - lo)
    tol = 1e-3
    if arr.min() < -tol or arr.max() > 1 + tol:
        raise InvalidInput(
            f"npy values span [{arr.min():.4g}, {arr.max():.4g}]: send values in [0, 1] "
            "(0 black, 1 white) or give value_range"
        )
    return arr, dtype.itemsize * 8


# --------------------------------------------------------------------------------------------- DICOM

_MUTE = threading.local()


class _MuteWhileDecoding(logging.Filter):
    """Drops pydicom's log records in the thread that is decoding a request: they quote element values."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_MUTE, "on", False)


_MUTE_FILTER = _MuteWhileDecoding()


@contextlib.contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """No pydicom log records and no warnings while a request's DICOM is read (thread-local for logs)."""
    # Logger filters do not apply to records propagated from children, so every pydicom logger gets one.
    for name in [n for n in logging.root.manager.loggerDict if n == "pydicom" or n.startswith("pydicom.")]:
        logger = logging.getLogger(name)
        if _MUTE_FILTER not in logger.filters:
            logger.addFilter(_MUTE_FILTER)
    _MUTE.on = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        _MUTE.on = False


def _reraise_fatal(exc: BaseException) -> None:
    """Decoder plugins written in Rust raise pyo3's PanicException (a BaseException) on corrupt streams:
    those count as corrupt input; interpreter exits do not."""
    if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
        raise exc


def _dicom_str(ds: Any, keyword: str) -> str:
    value = ds.get(keyword, None)
    return "" if value is None else str(value)


def dicom_info(ds: Any) -> dict[str, Any]:
    """Technical attributes and UIDs of a pydicom Dataset; deliberately no patient attributes.

    The Study/Series/SOP Instance UIDs are what a derived object needs to reference its source
    (see :func:`cxrexplain.render.heatmap_to_dicom_secondary_capture`). They stay in memory.
    """
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID", None) if meta is not None else None
    info: dict[str, Any] = {
        "modality": _dicom_str(ds, "Modality"),
        "photometric_interpretation": _dicom_str(ds, "PhotometricInterpretation"),
        "rows": int(ds.get("Rows", 0) or 0),
        "columns": int(ds.get("Columns", 0) or 0),
        "bits_stored": int(ds.get("BitsStored", 0) or 0),
        "transfer_syntax_uid": "" if ts is None else str(ts),
        "sop_class_uid": _dicom_str(ds, "SOPClassUID"),
        "study_instance_uid": _dicom_str(ds, "StudyInstanceUID"),
        "series_instance_uid": _dicom_str(ds, "SeriesInstanceUID"),
        "sop_instance_uid": _dicom_str(ds, "SOPInstanceUID"),
    }
    orientation = ds.get("PatientOrientation", None)
    if orientation:
        info["patient_orientation"] = [str(v) for v in orientation] if not isinstance(orientation, str) else [
            orientation
        ]
    spacing = ds.get("PixelSpacing", None)
    if spacing is not None and len(spacing) == 2:
        info["pixel_spacing"] = [float(spacing[0]), float(spacing[1])]
    return info


def dicom_patient_link(ds: Any) -> dict[str, str]:
    """Patient ID and Patient Name when present: what a PACS needs to file a derived object with its study."""
    link = {}
    if ds.get("PatientID", None):
        link["patient_id"] = str(ds.PatientID)
    if ds.get("PatientName", None):
        link["patient_name"] = str(ds.PatientName)
    return link


def _read_dicom(data: bytes) -> Any:
    import pydicom
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    ts = ds.file_meta.get("TransferSyntaxUID", None) if hasattr(ds, "file_meta") else None
    if ts is None:
        # No file meta (a bare data set): the encoding pydicom detected while reading stands in for it.
        implicit, little = getattr(ds, "original_encoding", (None, None))
        if implicit is None:
            raise ValueError("unknown encoding")
        if not hasattr(ds, "file_meta") or ds.file_meta is None:
            ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
        )
    return ds


def _voi_to_unit(arr: np.ndarray, ds: Any) -> tuple[np.ndarray, str]:
    """Apply the first VOI LUT or window (PS3.3 C.11.2) and scale its output range to [0, 1]."""
    from pydicom.pixels import apply_voi, apply_windowing

    seq = ds.get("VOILUTSequence", None)
    if seq and seq[0].get("LUTDescriptor", None) is not None and seq[0].get("LUTData", None) is not None:
        descriptor = [int(v) for v in seq[0].LUTDescriptor]
        entries, first = descriptor[0] or 2**16, descriptor[1]
        lut = apply_voi(np.arange(first, first + entries, dtype=np.int64), ds, 0).astype(np.float64)
        lo, hi = float(lut.min()), float(lut.max())  # the LUT's real output range (some under-use their bits)
        if hi > lo:
            out = apply_voi(np.rint(arr).astype(np.int64), ds, 0).astype(np.float64)
            return (out - lo) / (hi - lo), "lut"
    if ds.get("WindowCenter", None) is not None and ds.get("WindowWidth", None) is not None:
        try:
            with np.errstate(over="ignore"):
                lo, hi = (float(v) for v in apply_windowing(np.array([-1e30, 1e30]), ds, 0))
                out = apply_windowing(arr.astype(np.float64), ds, 0)
            if hi != lo:
                return (out - lo) / (hi - lo), "window"
        except (ValueError, TypeError, IndexError, KeyError):
            pass  # an unusable window (width < 1, unknown function): fall back to min-max, do not reject
    lo, hi = float(arr.min()), float(arr.max())
    if hi == lo:
        return np.zeros_like(arr, dtype=np.float64), "minmax"
    return (arr - lo) / (hi - lo), "minmax"


def _codestream_size(frame: bytes) -> tuple[int, int] | None:
    """(rows, columns) from a JPEG / JPEG-LS SOF segment or a JPEG 2000 SIZ segment; None if not found.

    Read before decoding so a small DICOM header cannot hide a huge compressed frame (a decompression bomb).
    """
    head = frame[:65536]
    siz = head.find(b"\xff\x4f\xff\x51")  # J2K: SOC then SIZ (ISO 15444-1 A.5.1), also inside a JP2 box
    if siz >= 0 and len(head) >= siz + 24:
        xsiz, ysiz, xo, yo = struct.unpack_from(">IIII", head, siz + 8)
        return ysiz - yo, xsiz - xo
    if not head.startswith(b"\xff\xd8"):
        return None
    pos = 2
    while pos + 4 <= len(head):
        if head[pos] != 0xFF:
            return None
        marker = head[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        (length,) = struct.unpack_from(">H", head, pos + 2)
        # SOF0..SOF15 except DHT (C4), JPG (C8), DAC (CC); SOF55 (F7) is JPEG-LS (ISO 14495-1).
        if (0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)) or marker == 0xF7:
            if pos + 9 > len(head):
                return None
            rows, cols = struct.unpack_from(">HH", head, pos + 5)
            return rows, cols
        if marker == 0xDA or length < 2:
            return None
        pos += 2 + length
    return None


def _check_codestream(ds: Any, rows: int, cols: int) -> None:
    from pydicom.encaps import generate_frames
    from pydicom.uid import RLELossless

    ts = ds.file_meta.TransferSyntaxUID
    if not ts.is_encapsulated or ts == RLELossless:  # RLE output is sized by Rows x Columns
        return
    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    except BaseException as exc:
        _reraise_fatal(exc)
        raise InvalidInput(f"the DICOM compressed pixel data is malformed ({type(exc).__name__})") from None
    size = _codestream_size(frame)
    if size is None:
        raise InvalidInput("the DICOM compressed frame has no readable JPEG / JPEG 2000 header")
    if size != (rows, cols) and not (size[0] == 0 and size[1] == cols):  # height 0: defined later by DNL
        raise InvalidInput(
            f"the compressed frame is {size[0]} x {size[1]} but the DICOM header says {rows} x {cols}: "
            "the file is inconsistent"
        )


def _decode_dicom(
    data: bytes, max_pixels: int, modalities: Collection[str] | None, keep_patient_link: bool
) -> tuple[np.ndarray, int, dict[str, Any], dict[str, str] | None]:
    from pydicom.pixels import apply_modality_lut, get_decoder

    try:
        ds = _read_dicom(data)
    except BaseException as exc:
        _reraise_fatal(exc)
        # `from None`: a pydicom message may quote element values, which can be patient data.
        raise InvalidInput(
            f"the DICOM file could not be decoded ({type(exc).__name__}): the file is corrupt or truncated"
        ) from None
    try:
        info = dicom_info(ds)
    except Exception as exc:
        raise InvalidInput(f"the DICOM header could not be read ({type(exc).__name__})") from None
    if "PixelData" not in ds:
        raise InvalidInput("the DICOM file has no (uncompressed or compressed) Pixel Data: send an image")
    modality = info["modality"].upper()
    if modalities is not None and modality and modality not in modalities:
        raise InvalidInput(
            f"DICOM modality {modality[:16]} is not accepted: send a chest radiograph "
            f"({', '.join(sorted(modalities))})"
        )
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits_stored = int(ds.get("BitsStored", 0) or ds.get("BitsAllocated", 0) or 0)
    except (TypeError, ValueError):
        raise InvalidInput("the DICOM image attributes are malformed (frames, samples, bits)") from None
    if frames != 1:
        raise InvalidInput(f"multi-frame DICOM ({frames} frames) is not supported: send one frame per request")
    if samples not in (1, 3):
        raise InvalidInput(f"DICOM with {samples} samples per pixel is not supported: send gray or RGB")
    if not 1 <= bits_stored <= 32:
        raise InvalidInput(f"DICOM Bits Stored {bits_stored} is not supported")
    _check_size(info["rows"], info["columns"], max(1, max_pixels // samples), "DICOM")
    photometric = info["photometric_interpretation"].upper()
    if samples == 1 and photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise InvalidInput(f"DICOM photometric interpretation {photometric[:20]} is not supported for gray")
    ts = ds.file_meta.TransferSyntaxUID
    try:
        decoder = get_decoder(ts)
        available = decoder.is_available
    except NotImplementedError:
        available = False
    if not available:
        raise UnsupportedMediaType(
            f"DICOM transfer syntax {str(ts)[:64]} cannot be decoded by this server: send it uncompressed, "
            "RLE, JPEG, JPEG-LS or JPEG 2000"
        )
    _check_codestream(ds, info["rows"], info["columns"])
    try:
        raw = ds.pixel_array
    except BaseException as exc:
        _reraise_fatal(exc)
        raise InvalidInput(
            f"the DICOM pixel data could not be decoded ({type(exc).__name__}): the file is corrupt or truncated"
        ) from None
    if raw.shape[:2] != (info["rows"], info["columns"]):
        raise InvalidInput("the DICOM pixel data does not match Rows and Columns")
    if samples == 3:
        # Colour secondary capture: pydicom returns RGB; VOI does not apply to colour (PS3.3 C.11.2).
        unit = _luma(raw[..., :3]) / float(2**bits_stored - 1)
        info["voi"] = "none"
    else:
        try:
            values = apply_modality_lut(raw, ds)  # Rescale Slope/Intercept or Modality LUT (C.11.1)
            unit, info["voi"] = _voi_to_unit(np.asarray(values, dtype=np.float64), ds)
        except CxrExplainError:
            raise
        except BaseException as exc:
            _reraise_fatal(exc)
            raise InvalidInput(f"the DICOM grayscale transforms failed ({type(exc).__name__})") from None
        if photometric == "MONOCHROME1":
            # MONOCHROME1: the minimum value is displayed white. (DX's Presentation LUT Shape INVERSE only
            # restates this, so it is not applied a second time.)
            unit = 1.0 - unit
    patient = dicom_patient_link(ds) if keep_patient_link else None
    return unit, bits_stored, info, patient


# --------------------------------------------------------------------------------------------- public


def decode_image(
    data: bytes,
    content_type: str | None = None,
    *,
    max_pixels: int = 50_000_000,
    max_bytes: int | None = None,
    value_range: tuple[float, float] | None = None,
    modalities: Collection[str] | None = DEFAULT_MODALITIES,
    keep_patient_link: bool = False,
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
    if kind in ("png", "jpeg"):
        arr, depth = _decode_pil(data, kind, max_pixels)
    elif kind == "npy":
        arr, depth = _decode_npy(data, max_pixels, value_range)
    else:
        with _quiet_pydicom():  # pydicom's warnings and logs quote element values, which may be patient data
            arr, depth, info, patient = _decode_dicom(data, max_pixels, modalities, keep_patient_link)
    pixels = _finish(arr)
    return DecodedImage(
        pixels=pixels, kind=kind, bit_depth=int(depth), height=pixels.shape[0], width=pixels.shape[1],
        dicom=info, patient=patient,
    )


def to_model_input(pixels: np.ndarray, spec: InputSpec) -> tuple[torch.Tensor, Geometry]:
    """Display-space (H, W) image -> model input (1, C, S, S) and the geometry to map heatmaps back.

    Uses the spec's own resize policy (:meth:`InputSpec.resize_unit`: centre-crop to a square, then resize)
    and :meth:`InputSpec.from_unit`, so the server and the engine preprocess identically.
    """
    arr = np.asarray(pixels, dtype=np.float32)
    if arr.ndim != 2:
        raise InvalidInput(f"expected one (H, W) gray image, got shape {arr.shape}")
    h, w = arr.shape
    g = torch.from_numpy(np.ascontiguousarray(arr))[None, None]
    x = spec.from_unit(spec.resize_unit(g))
    if spec.resize == "center_crop":
        s = min(h, w)
        geometry = Geometry(h, w, (h - s) // 2, (w - s) // 2, s, spec.size)
    else:
        geometry = Geometry(h, w, 0, 0, 0, spec.size)
    return x, geometry

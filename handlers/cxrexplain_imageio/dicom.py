"""DICOM CR/DX decoding: header checks before pixel data, VOI LUT / window to display space, and the UIDs
(never the patient data, unless asked) that link a derived object back to its study.

pydicom's own warnings and logs quote element values, which may be patient data: they are silenced while a
dataset is decoded (:func:`quiet_pydicom`), and nothing read from a header is put in an error message.
"""

from __future__ import annotations

import contextlib
import io
import logging
import struct
import threading
import warnings
import zlib
from collections.abc import Callable, Collection, Iterator
from typing import Any

import numpy as np

from cxrexplain.errors import CxrExplainError, InvalidInput, UnsupportedMediaType

from .checks import check_size, luma, reduce_by_strips, reduction_factor

DEFAULT_MODALITIES = frozenset({"CR", "DX", "RG", "OT"})  # radiographs and secondary captures

_MUTE = threading.local()


class _MuteWhileDecoding(logging.Filter):
    """Drops pydicom's log records in the thread that is decoding a request: they quote element values."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_MUTE, "on", False)


_MUTE_FILTER = _MuteWhileDecoding()


@contextlib.contextmanager
def quiet_pydicom() -> Iterator[None]:
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
    (see :func:`cxrexplain_render.secondary_capture`, which also takes this dict). They stay in memory.
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


def _voi_plan(ds: Any) -> tuple[Callable[[np.ndarray], np.ndarray], tuple[float, float] | None, str]:
    """The first VOI LUT or window (PS3.3 C.11.2) as an elementwise function, the range its output is scaled
    from to [0, 1] (None: the image's own min-max), and its name. Elementwise, so it can run strip by strip."""
    from pydicom.pixels import apply_voi, apply_windowing

    seq = ds.get("VOILUTSequence", None)
    if seq and seq[0].get("LUTDescriptor", None) is not None and seq[0].get("LUTData", None) is not None:
        descriptor = [int(v) for v in seq[0].LUTDescriptor]
        entries, first = descriptor[0] or 2**16, descriptor[1]
        lut = apply_voi(np.arange(first, first + entries, dtype=np.int64), ds, 0).astype(np.float64)
        lo, hi = float(lut.min()), float(lut.max())  # the LUT's real output range (some under-use their bits)
        if hi > lo:
            return (lambda a: apply_voi(np.rint(a).astype(np.int64), ds, 0).astype(np.float64)), (lo, hi), "lut"
    if ds.get("WindowCenter", None) is not None and ds.get("WindowWidth", None) is not None:
        try:
            with np.errstate(over="ignore"):
                lo, hi = (float(v) for v in apply_windowing(np.array([-1e30, 1e30]), ds, 0))
            if hi != lo:
                return (lambda a: apply_windowing(a.astype(np.float64), ds, 0)), (lo, hi), "window"
        except (ValueError, TypeError, IndexError, KeyError):
            pass  # an unusable window (width < 1, unknown function): fall back to min-max, do not reject
    return (lambda a: a), None, "minmax"


def unused_bits_cleared(stored: np.ndarray, bits_stored: int) -> np.ndarray:
    """The stored values without the bits above Bits Stored (PS3.5 8.1.1), sign-extended when signed: what
    pydicom's ``correct_unused_bits`` does to the whole image, here on one strip."""
    shift = stored.dtype.itemsize * 8 - bits_stored
    if stored.dtype.kind not in "iu" or shift <= 0:
        return stored
    return (stored << shift) >> shift


def _gray_to_unit(raw: np.ndarray, ds: Any, factor: int, bits_stored: int, invert: bool) -> tuple[np.ndarray, str]:
    """Rescale (C.11.1), VOI (C.11.2), MONOCHROME1 inversion, then the box reduction by ``factor``.

    The grayscale transforms run at full resolution on strips of the stored integer image and the reduction
    comes after them, so the display values are exactly those of a full decode (a window or LUT is not linear,
    so reducing the stored values first would change them near the window's edges); memory is the stored image
    plus one float strip, never a full-size float image.
    """
    from pydicom.pixels import apply_modality_lut

    voi, out_range, name = _voi_plan(ds)
    height, width = raw.shape[:2]

    def values(y0: int, y1: int) -> np.ndarray:
        return voi(np.asarray(apply_modality_lut(unused_bits_cleared(raw[y0:y1], bits_stored), ds), dtype=np.float64))

    if out_range is None:  # min-max of the whole image's values, found strip by strip
        lo, hi = np.inf, -np.inf
        step = max(1, (1 << 21) // max(1, width))
        for y0 in range(0, height, step):
            v = values(y0, min(height, y0 + step))
            lo, hi = min(lo, float(v.min())), max(hi, float(v.max()))
    else:
        lo, hi = out_range
    span = (hi - lo) or 1.0  # a constant image is all 0 (min-max), as before

    def unit(y0: int, y1: int) -> np.ndarray:
        u = (values(y0, y1) - lo) / span
        return 1.0 - u if invert else u

    return reduce_by_strips(height, width, factor, unit), name


_DEFLATED = "1.2.840.10008.1.2.1.99"
HEADER_CEILING = 8 * 2**20  # inflated bytes before Pixel Data a deflated data set may take
_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"
_INFLATE_STEP = 1 << 16


def check_deflated(data: bytes, max_pixels: int) -> None:
    """Refuse a Deflated Explicit VR Little Endian file that is over the pixel cap before inflating it.

    pydicom inflates a deflated data set whole before Rows and Columns can be read, so 1 MB on the wire can
    cost gigabytes. Here the stream is inflated step by step: the header up to the top-level Pixel Data is
    read (at most :data:`HEADER_CEILING` bytes) and its size checked against the cap; an accepted file is then
    inflated to its end only to count, and refused if it inflates past what its header and the cap allow.
    """
    import pydicom.filereader as reader

    fp = io.BytesIO(data)
    try:
        reader.read_preamble(fp, True)
        meta = reader._read_file_meta_info(fp)
    except BaseException as exc:
        _reraise_fatal(exc)
        return  # not a file with meta: the full reader reports what is wrong with it
    if str(meta.get("TransferSyntaxUID", "")) != _DEFLATED:
        return
    src = memoryview(data)[fp.tell():]
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    head = bytearray()
    offset, ceiling, total, header = 0, HEADER_CEILING, 0, None
    try:
        while not inflater.eof:
            chunk = inflater.unconsumed_tail or bytes(src[offset : offset + _INFLATE_STEP])
            if not inflater.unconsumed_tail:
                if offset >= len(src):
                    break  # truncated stream: the full reader reports it
                offset += _INFLATE_STEP
            out = inflater.decompress(chunk, _INFLATE_STEP)
            total += len(out)
            if header is None:
                head += out
                if _PIXEL_DATA_TAG in head[max(0, len(head) - len(out) - 3):] or len(head) >= ceiling:
                    header = _deflated_header(bytes(head), max_pixels)
                    if header is not None:
                        ceiling = len(head) + header + HEADER_CEILING
                        head = bytearray()
                    elif len(head) >= HEADER_CEILING:
                        raise InvalidInput(
                            f"the deflated DICOM header is larger than {HEADER_CEILING} bytes: send it uncompressed"
                        )
            if total > ceiling and header is not None:
                raise InvalidInput(
                    f"the deflated DICOM inflates past its pixel data's size (limit {max_pixels} pixels): "
                    "the file is corrupt"
                )
    except zlib.error:
        raise InvalidInput("the deflated DICOM data could not be inflated: the file is corrupt") from None


def _deflated_header(head: bytes, max_pixels: int) -> int | None:
    """Check the size in an inflated header; the pixel data's byte count, or None if the header is incomplete."""
    import pydicom.filereader as reader

    try:
        ds = reader.read_dataset(io.BytesIO(head), False, True, stop_when=lambda tag, vr, length: tag == 0x7FE00010)
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.get("BitsAllocated", 16) or 16)
    except BaseException as exc:
        _reraise_fatal(exc)
        return None  # cut inside an element: inflate more
    if "Rows" not in ds or "Columns" not in ds:
        return None
    check_size(rows, cols, max(1, max_pixels // max(1, samples * max(1, frames))), "DICOM")
    return rows * cols * max(1, frames) * max(1, samples) * max(1, -(-bits // 8))


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


def decode_dicom(
    data: bytes, max_pixels: int, modalities: Collection[str] | None, keep_patient_link: bool,
    target_size: int | None = None,
) -> tuple[np.ndarray, int, dict[str, Any], dict[str, str] | None, int]:
    """(display-space pixels, Bits Stored, info, patient link or None, reduction factor)."""
    from pydicom.pixels import get_decoder

    check_deflated(data, max_pixels)
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
    check_size(info["rows"], info["columns"], max(1, max_pixels // samples), "DICOM")
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
        # A view of uncompressed Pixel Data (ds.pixel_array copies it to clear the unused high bits, which
        # unused_bits_cleared does strip by strip instead).
        raw, _ = next(decoder.iter_array(ds, view_only=True, correct_unused_bits=False))
    except BaseException as exc:
        _reraise_fatal(exc)
        raise InvalidInput(
            f"the DICOM pixel data could not be decoded ({type(exc).__name__}): the file is corrupt or truncated"
        ) from None
    if raw.shape[:2] != (info["rows"], info["columns"]):
        raise InvalidInput("the DICOM pixel data does not match Rows and Columns")
    factor = reduction_factor(info["rows"], info["columns"], target_size)
    if samples == 3:
        # Colour secondary capture: pydicom returns RGB; VOI does not apply to colour (PS3.3 C.11.2).
        scale = float(2**bits_stored - 1)
        unit = reduce_by_strips(info["rows"], info["columns"], factor,
                                lambda y0, y1: luma(unused_bits_cleared(raw[y0:y1, :, :3], bits_stored)) / scale)
        info["voi"] = "none"
    else:
        try:
            # MONOCHROME1: the minimum value is displayed white. (DX's Presentation LUT Shape INVERSE only
            # restates this, so it is not applied a second time.)
            unit, info["voi"] = _gray_to_unit(raw, ds, factor, bits_stored, invert=photometric == "MONOCHROME1")
        except CxrExplainError:
            raise
        except BaseException as exc:
            _reraise_fatal(exc)
            raise InvalidInput(f"the DICOM grayscale transforms failed ({type(exc).__name__})") from None
    patient = dicom_patient_link(ds) if keep_patient_link else None
    return unit, bits_stored, info, patient, factor

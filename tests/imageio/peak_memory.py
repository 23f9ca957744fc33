"""Peak memory growth of decoding one large image, measured in a fresh process (run as a script).

``python peak_memory.py CASE [MODEL_SIZE]`` builds the case's bytes cheaply (zlib of zero rows for PNG, a
streamed deflate for DICOM), warms the decoders on a small image, resets the kernel's peak-RSS mark (``5`` to
``/proc/self/clear_refs``), decodes and makes the model input, and prints one JSON line: the growth of
``VmHWM`` over the RSS before decoding, in MiB, and the outcome. Linux only.
"""

from __future__ import annotations

import io
import json
import struct
import sys
import zlib
from collections.abc import Callable

import numpy as np
from PIL import Image

SIDE = 7000
DEFLATED_SIDE = 16384
DEFLATED_EXPLICIT_VR_LE = "1.2.840.10008.1.2.1.99"


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_of_rows(width: int, height: int, depth: int, row: Callable[[int], bytes]) -> bytes:
    """A gray PNG whose filtered rows (filter byte 0 + samples) come from ``row(y)``, compressed as a stream."""
    z = zlib.compressobj(6)
    parts = [z.compress(b"\x00" + row(y)) for y in range(height)]
    parts.append(z.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, depth, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts))
            + _chunk(b"IEND", b""))


def zero_png(side: int = SIDE, depth: int = 8) -> bytes:
    zeros = bytes(side * depth // 8)
    return png_of_rows(side, side, depth, lambda y: zeros)


def large_jpeg(side: int = SIDE) -> bytes:
    yy, xx = np.ogrid[0:side, 0:side]
    img = (127 + 60 * np.sin(xx / 90.0) * np.cos(yy / 70.0)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def rgba_png(side: int = SIDE) -> bytes:
    row = bytes(range(256)) * (side * 4 // 256) + bytes(side * 4 % 256)
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 6, 0, 0, 0)
    z = zlib.compressobj(6)
    idat = b"".join([z.compress(b"\x00" + row) for _ in range(side)] + [z.flush()])
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def windowed_dicom(rows: int = 5600, cols: int = 5600) -> bytes:
    """An uncompressed 16-bit MONOCHROME1 DX with rescale and a window, just under the 64 MiB body cap."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Modality = "DX"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.WindowCenter, ds.WindowWidth = 1000, 1500
    yy, xx = np.ogrid[0:rows, 0:cols]
    ds.PixelData = ((2048 + 1500 * np.sin(xx / 90.0) * np.cos(yy / 70.0)).astype(np.uint16)).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def jpegls_dicom(side: int = SIDE) -> bytes:
    """``windowed_dicom`` compressed with JPEG-LS lossless (needs a JPEG-LS encoder plugin)."""
    import pydicom
    from pydicom.uid import JPEGLSLossless

    ds = pydicom.dcmread(io.BytesIO(windowed_dicom(side, side)))
    ds.compress(JPEGLSLossless)
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def deflated_dicom(side: int = DEFLATED_SIDE) -> bytes:
    """A 16-bit DX in Deflated Explicit VR Little Endian whose pixel data (zeros) is ``side`` x ``side``."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import DigitalXRayImageStorageForPresentation, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = DEFLATED_EXPLICIT_VR_LE
    ds = Dataset()
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows = ds.Columns = side
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    write_dataset(head, ds)
    n_bytes = side * side * 2
    pixel_header = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, n_bytes)
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts = [z.compress(head.getvalue() + pixel_header)]
    block = bytes(2**24)
    for _ in range(n_bytes // len(block)):
        parts.append(z.compress(block))
    parts.append(z.compress(bytes(n_bytes % len(block))))
    parts.append(z.flush())
    out = DicomBytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)
    return out.getvalue() + b"".join(parts)


CASES: dict[str, Callable[[], tuple[bytes, str]]] = {
    "png8": lambda: (zero_png(depth=8), "image/png"),
    "png16": lambda: (zero_png(depth=16), "image/png"),
    "jpeg": lambda: (large_jpeg(), "image/jpeg"),
    "dicom_deflated": lambda: (deflated_dicom(), "application/dicom"),
    "png_rgba": lambda: (rgba_png(), "image/png"),
    "dicom_windowed": lambda: (windowed_dicom(), "application/dicom"),
    "dicom_jpegls": lambda: (jpegls_dicom(), "application/dicom"),
}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(case: str, model_size: int) -> dict[str, object]:
    import torch

    from cxrexplain.errors import CxrExplainError
    from cxrexplain.preprocess import to_model_input
    from cxrexplain.spec import unit_spec
    from cxrexplain_imageio import decode_image

    torch.set_num_threads(1)
    spec = unit_spec(1, model_size)

    def run(data: bytes, content_type: str) -> str:
        try:
            # 50 MP, above the 40 MP default cap: the budget holds with a margin for every accepted size.
            image = decode_image(data, content_type, max_pixels=50_000_000, target_size=model_size)
            to_model_input(image.pixels, spec, original_size=(image.height, image.width))
        except CxrExplainError as exc:
            return f"{type(exc).__name__}: {exc}"
        return "ok"

    data, content_type = CASES[case]()
    small = {"png8": zero_png(64), "png16": zero_png(64, 16), "jpeg": large_jpeg(64),
             "dicom_deflated": deflated_dicom(64), "png_rgba": rgba_png(64),
             "dicom_windowed": windowed_dicom(64, 64), "dicom_jpegls": jpegls_dicom(64)}[case]
    run(small, content_type)  # lazy imports and decoder set-up are not the request's cost
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kib("VmRSS")
    outcome = run(data, content_type)
    peak = _status_kib("VmHWM")
    return {"case": case, "growth_mib": round((peak - before) / 1024, 1), "outcome": outcome[:200],
            "body_bytes": len(data)}


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 96)))

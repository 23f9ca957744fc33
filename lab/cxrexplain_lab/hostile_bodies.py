"""Request bodies for the hostile corpus (:mod:`.hostile`) and the memory probes: valid images, decompression
bombs and headers that lie, of every format the service reads.

The bodies are built cheaply: decompression bombs of zeros repeat one deflate block (:func:`deflate_zeros`), so a
30000 x 30000 PNG costs the test a few milliseconds and about 1 MB, not the 900 MB it inflates to.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

DEFLATED_EXPLICIT_VR_LE = "1.2.840.10008.1.2.1.99"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def deflate_zeros(n_bytes: int, prefix: bytes = b"", raw: bool = False) -> bytes:
    """A deflate stream of ``prefix`` then ``n_bytes`` zero bytes, built in milliseconds whatever ``n_bytes``.

    After a full flush the compressor's window is empty, so every 1 MiB block of zeros compresses to the same
    bytes: the stream is the prefix's block, that block repeated, the remainder and the end. ``raw`` gives a bare
    deflate stream (DICOM's deflated transfer syntax), else a zlib stream (PNG's IDAT) with its Adler-32.
    """
    chunk = 2**20
    level, wbits = 9, (-15 if raw else 15)
    head = zlib.compressobj(level, zlib.DEFLATED, wbits)
    parts = [head.compress(prefix) + head.flush(zlib.Z_FULL_FLUSH)]
    block = zlib.compressobj(level, zlib.DEFLATED, -15)
    repeated = block.compress(bytes(chunk)) + block.flush(zlib.Z_FULL_FLUSH)
    parts.append(repeated * (n_bytes // chunk))
    tail = zlib.compressobj(level, zlib.DEFLATED, -15)
    parts.append(tail.compress(bytes(n_bytes % chunk)) + tail.flush(zlib.Z_FINISH))
    stream = b"".join(parts)
    if raw:
        return stream
    # Adler-32 of prefix + zeros: zeros leave the byte sum alone and add it to the running sum once per byte.
    a_sum = zlib.adler32(prefix)
    a, b = a_sum & 0xFFFF, a_sum >> 16
    b = (b + a * n_bytes) % 65521
    return stream + struct.pack(">I", (b << 16) | a)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def zero_png(side: int, depth: int = 8) -> bytes:
    """A valid gray PNG of zeros, ``side`` x ``side`` at ``depth`` bits: a decompression bomb for large sides
    (a few hundred KB on the wire per 100 MB decoded)."""
    ihdr = struct.pack(">IIBBBBB", side, side, depth, 0, 0, 0, 0)
    idat = deflate_zeros(side * (1 + side * depth // 8))  # each row: filter byte 0, then the samples
    return PNG_MAGIC + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def large_jpeg(side: int) -> bytes:
    """A smooth 8-bit gray JPEG, ``side`` x ``side`` (a real image: decoded, not only its header read)."""
    yy, xx = np.ogrid[0:side, 0:side]
    img = (127 + 60 * np.sin(xx / 90.0) * np.cos(yy / 70.0)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def jpeg_claiming(height: int, width: int) -> bytes:
    """A small real JPEG whose start-of-frame header claims ``height`` x ``width``: a bomb read from its header."""
    data = bytearray(large_jpeg(64))
    sof = next(i for i in range(2, len(data) - 9) if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC1, 0xC2))
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def _dicom_dataset(rows: int, cols: int, bits: int = 16, **extra: object):
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
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    for key, value in extra.items():
        setattr(ds, key, value)
    return ds


def _save(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def dicom_claiming(rows: int, cols: int, syntax: str = "uncompressed", frames: int = 1) -> bytes:
    """A DX whose header claims ``rows`` x ``cols`` (x ``frames``) while its pixel data is one small frame:
    uncompressed, or a 64 x 64 frame encapsulated as ``jpeg`` (baseline), ``jpeg2000`` or ``rle``."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, RLELossless

    if syntax == "uncompressed":
        ds = _dicom_dataset(rows, cols)
        ds.PixelData = bytes(64 * 64 * 2)
        if frames > 1:
            ds.NumberOfFrames = frames
        return _save(ds)
    small = _dicom_dataset(64, 64, bits=8)
    small.PixelData = (np.arange(64 * 64) % 251).astype(np.uint8).tobytes()
    syntaxes = {"jpeg": JPEGBaseline8Bit, "jpeg2000": JPEG2000Lossless, "rle": RLELossless}
    if syntax not in syntaxes:
        raise ValueError(f"unknown syntax {syntax!r}: uncompressed, jpeg, jpeg2000 or rle")
    uid = syntaxes[syntax]
    if syntax == "jpeg":  # pydicom encodes no JPEG baseline: Pillow's stream, encapsulated
        frame = large_jpeg(64)
    else:
        small.compress(uid)
        frame = _first_fragment(small.PixelData)
    ds = _dicom_dataset(rows, cols, bits=8)
    ds.file_meta.TransferSyntaxUID = uid
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    if frames > 1:
        ds.NumberOfFrames = frames
    return _save(ds)


def _first_fragment(encapsulated: bytes) -> bytes:
    from pydicom.encaps import generate_frames

    return next(generate_frames(encapsulated, number_of_frames=1))


def dicom_with_frame(frame: bytes, rows: int, cols: int) -> bytes:
    """An encapsulated JPEG DX whose header says ``rows`` x ``cols`` around any ``frame`` (one that lies)."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    ds = _dicom_dataset(rows, cols, bits=8)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    return _save(ds)


def windowed_dicom(rows: int = 5600, cols: int = 5600) -> bytes:
    """An uncompressed 16-bit MONOCHROME1 DX with rescale and a window, just under the 64 MiB body cap."""
    ds = _dicom_dataset(rows, cols, PhotometricInterpretation="MONOCHROME1")
    ds.BitsStored, ds.HighBit = 12, 11
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.WindowCenter, ds.WindowWidth = 1000, 1500
    yy, xx = np.ogrid[0:rows, 0:cols]
    ds.PixelData = ((2048 + 1500 * np.sin(xx / 90.0) * np.cos(yy / 70.0)).astype(np.uint16)).tobytes()
    return _save(ds)


def deflated_dicom(side: int = 16384) -> bytes:
    """A 16-bit DX in Deflated Explicit VR Little Endian whose pixel data (zeros) is ``side`` x ``side``: 512 MiB
    inflated at the default side, about 0.5 MB on the wire."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import UID

    ds = _dicom_dataset(side, side)
    ds.BitsStored, ds.HighBit = 12, 11
    meta = FileMetaDataset(ds.file_meta)
    meta.TransferSyntaxUID = UID(DEFLATED_EXPLICIT_VR_LE)
    del ds.file_meta
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    write_dataset(head, ds)
    n_bytes = side * side * 2
    pixel_header = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, n_bytes)
    out = DicomBytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)
    return out.getvalue() + deflate_zeros(n_bytes, prefix=head.getvalue() + pixel_header, raw=True)


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=array.dtype.hasobject)
    return buf.getvalue()


def npy_claiming(shape: tuple[int, ...], dtype: str = "<f4") -> bytes:
    """A ``.npy`` header claiming ``shape`` followed by no data at all."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode("latin1")
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def phantom_png(side: int = 64) -> bytes:
    """A small valid 8-bit PNG (the good request, and the image of the option cases)."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray((rng.random((side, side)) * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def gif_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (64, 64)).save(buf, format="GIF")
    return buf.getvalue()


__all__ = ["DEFLATED_EXPLICIT_VR_LE", "PNG_MAGIC", "deflate_zeros", "deflated_dicom", "dicom_claiming",
           "dicom_with_frame", "gif_bytes", "jpeg_claiming", "large_jpeg", "npy", "npy_claiming", "phantom_png",
           "png_chunk", "windowed_dicom", "zero_png"]

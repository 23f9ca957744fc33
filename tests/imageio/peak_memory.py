"""Peak memory growth of decoding one large image, measured in a fresh process (run as a script).

``python peak_memory.py CASE [MODEL_SIZE]`` builds the case's bytes cheaply (the hostile corpus's builders,
:mod:`cxrexplain_lab.hostile`: repeated deflate blocks of zeros for PNG and deflated DICOM), warms the decoders
on a small image, resets the kernel's peak-RSS mark (``5`` to ``/proc/self/clear_refs``), decodes and makes the
model input, and prints one JSON line: the growth of ``VmHWM`` over the RSS before decoding, in MiB, and the
outcome. Linux only.
"""

from __future__ import annotations

import io
import json
import struct
import sys
import zlib
from collections.abc import Callable

from cxrexplain_lab.hostile_bodies import deflated_dicom, large_jpeg, png_chunk, windowed_dicom, zero_png

SIDE = 7000


def rgba_png(side: int = SIDE) -> bytes:
    row = bytes(range(256)) * (side * 4 // 256) + bytes(side * 4 % 256)
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 6, 0, 0, 0)
    z = zlib.compressobj(6)
    idat = b"".join([z.compress(b"\x00" + row) for _ in range(side)] + [z.flush()])
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def jpegls_dicom(side: int = SIDE) -> bytes:
    """``windowed_dicom`` compressed with JPEG-LS lossless (needs a JPEG-LS encoder plugin)."""
    import pydicom
    from pydicom.uid import JPEGLSLossless

    ds = pydicom.dcmread(io.BytesIO(windowed_dicom(side, side)))
    ds.compress(JPEGLSLossless)
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


CASES: dict[str, Callable[[], tuple[bytes, str]]] = {
    "png8": lambda: (zero_png(SIDE, depth=8), "image/png"),
    "png16": lambda: (zero_png(SIDE, depth=16), "image/png"),
    "jpeg": lambda: (large_jpeg(SIDE), "image/jpeg"),
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

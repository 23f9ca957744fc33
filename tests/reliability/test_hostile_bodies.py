"""The hostile corpus's bodies are what their names say: a bomb inflates to the size it claims, so a refusal in
``test_hostile.py`` is the service's doing, not a broken test input. No server: decoders and zlib only."""

from __future__ import annotations

import io
import zlib

import pydicom
import pytest
from PIL import Image

from cxrexplain_lab import hostile, hostile_bodies


@pytest.mark.parametrize("n_bytes", [0, 5, 2**20, 3 * 2**20 + 17])
@pytest.mark.parametrize("prefix", [b"", b"DICM header"])
def test_deflate_zeros_inflates_to_prefix_then_zeros(n_bytes, prefix):
    expected = prefix + bytes(n_bytes)
    assert zlib.decompress(hostile_bodies.deflate_zeros(n_bytes, prefix)) == expected  # checks the Adler-32 too
    assert zlib.decompress(hostile_bodies.deflate_zeros(n_bytes, prefix, raw=True), -15) == expected


def test_png_bombs_are_valid_pngs_of_their_size():
    for depth, mode in ((8, "L"), (16, "I;16")):
        image = Image.open(io.BytesIO(hostile_bodies.zero_png(300, depth)))
        image.load()  # the whole stream decodes: a complete PNG, not only a header
        assert (image.size, image.mode) == ((300, 300), mode)
    assert len(hostile_bodies.zero_png(30000)) < 2**20  # 900 MB of pixels in under 1 MB


def test_claims_are_in_the_headers():
    with pytest.raises(Image.DecompressionBombError, match="3600000000 pixels"):  # Pillow reads the SOF claim
        Image.open(io.BytesIO(hostile_bodies.jpeg_claiming(60000, 60000)))
    for syntax in ("uncompressed", "jpeg", "jpeg2000", "rle"):
        ds = pydicom.dcmread(io.BytesIO(hostile_bodies.dicom_claiming(20000, 20000, syntax)))
        assert (ds.Rows, ds.Columns) == (20000, 20000), syntax
    deflated = pydicom.dcmread(io.BytesIO(hostile_bodies.deflated_dicom(256)))
    assert (deflated.Rows, deflated.Columns, len(deflated.PixelData)) == (256, 256, 256 * 256 * 2)
    assert len(hostile_bodies.deflated_dicom()) < 2**20


def test_option_cases_follow_the_schema():
    """Every option the schema declares has cases, so a new option is covered without new code."""
    from cxrexplain import options_schema as schema

    keys = set(schema.REQUEST_OPTIONS) | {s.key for m in schema.METHOD_OPTIONS.values() for s in m.values()}
    assert {case.group.removeprefix("option ") for case in hostile.option_cases()} == keys

"""Decoding: every accepted format against known values, every error path, and a little fuzzing."""

from __future__ import annotations

import io
import os
import struct
import warnings

import numpy as np
import pydicom
import pytest
import torch
from dicom_samples import dicom_bytes, make_dicom, ramp12
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    MPEG2MPML,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
)

from cxrexplain.errors import CxrExplainError, InvalidInput, UnsupportedMediaType
from cxrexplain.preprocess import Geometry, to_model_input
from cxrexplain.spec import XRV, unit_spec
from cxrexplain_imageio import decode_image, detect_kind

RNG = np.random.default_rng(0)


# --------------------------------------------------------------------------------------------- builders


def png_bytes(arr: np.ndarray, mode: str | None = None, **save: object) -> bytes:
    im = Image.fromarray(arr, mode=mode) if mode else Image.fromarray(arr)
    buf = io.BytesIO()
    im.save(buf, format="PNG", **save)
    return buf.getvalue()


def jpeg_bytes(arr: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------- PNG / JPEG


def test_png_8bit_gray_exact() -> None:
    a = RNG.integers(0, 256, (40, 50), dtype=np.uint8)
    d = decode_image(png_bytes(a))
    assert (d.kind, d.bit_depth, d.height, d.width) == ("png", 8, 40, 50)
    assert d.pixels.dtype == np.float32
    np.testing.assert_allclose(d.pixels, a / 255.0, atol=1e-7)


def test_png_16bit_scaled_by_type_max_not_image_max() -> None:
    a = np.linspace(0, 40000, 48 * 36).reshape(48, 36).astype(np.uint16)
    d = decode_image(png_bytes(a))
    assert d.bit_depth == 16
    np.testing.assert_allclose(d.pixels, a / 65535.0, atol=1e-7)
    assert d.pixels.max() == pytest.approx(40000 / 65535, abs=1e-6)  # not stretched to 1
    a[0, 0] = 65535
    assert decode_image(png_bytes(a)).pixels.max() == 1.0


def test_png_rgb_rgba_gray_alpha_palette() -> None:
    rgb = RNG.integers(0, 256, (33, 35, 3), dtype=np.uint8)
    luma = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]) / 255.0
    np.testing.assert_allclose(decode_image(png_bytes(rgb)).pixels, luma, atol=1e-6)
    rgba = np.concatenate([rgb, np.full((33, 35, 1), 7, np.uint8)], axis=-1)
    np.testing.assert_allclose(decode_image(png_bytes(rgba)).pixels, luma, atol=1e-6)  # alpha dropped
    la = np.stack([rgb[..., 0], rgb[..., 1]], axis=-1)
    np.testing.assert_allclose(decode_image(png_bytes(la, mode="LA")).pixels, rgb[..., 0] / 255.0, atol=1e-7)
    # Palette: index i -> colour (i, 255 - i, 0): gray = 0.299 i + 0.587 (255 - i).
    idx = RNG.integers(0, 256, (32, 40), dtype=np.uint8)
    pal = Image.fromarray(idx, mode="P")
    pal.putpalette([c for i in range(256) for c in (i, 255 - i, 0)])
    buf = io.BytesIO()
    pal.save(buf, format="PNG")
    expected = (0.299 * idx + 0.587 * (255.0 - idx)) / 255.0
    np.testing.assert_allclose(decode_image(buf.getvalue()).pixels, expected, atol=1e-6)
    bw = (RNG.random((32, 32)) > 0.5)
    np.testing.assert_array_equal(decode_image(png_bytes(bw)).pixels, bw.astype(np.float32))


def test_jpeg_gray_and_rgb() -> None:
    a = (np.add.outer(np.arange(64), np.arange(48)) * 2).astype(np.uint8)
    data = jpeg_bytes(a)
    d = decode_image(data)
    assert d.kind == "jpeg" and d.bit_depth == 8
    np.testing.assert_allclose(d.pixels, np.asarray(Image.open(io.BytesIO(data))) / 255.0, atol=1e-7)
    assert np.abs(d.pixels - a / 255.0).max() < 0.05  # lossy, but close to the source
    rgb = np.repeat(a[..., None], 3, axis=-1)
    assert np.abs(decode_image(jpeg_bytes(rgb)).pixels - a / 255.0).max() < 0.05


# --------------------------------------------------------------------------------------------- NPY


def test_npy_shapes_and_value_range() -> None:
    a = RNG.random((40, 36), dtype=np.float32)
    np.testing.assert_array_equal(decode_image(npy_bytes(a)).pixels, a)
    np.testing.assert_array_equal(decode_image(npy_bytes(a[None])).pixels, a)
    np.testing.assert_array_equal(decode_image(npy_bytes(np.asfortranarray(a))).pixels, a)
    d = decode_image(npy_bytes(a * 2048 - 1024), value_range=(-1024, 1024))
    assert d.kind == "npy" and d.bit_depth == 32
    np.testing.assert_allclose(d.pixels, a, atol=1e-6)
    # Detected by magic even with a misleading content type.
    assert decode_image(npy_bytes(a), "image/png").kind == "npy"


@pytest.mark.parametrize(
    "arr, match",
    [
        (np.full((40, 40), np.nan, np.float32), "NaN or Inf"),
        (np.full((40, 40), np.inf, np.float32), "NaN or Inf"),
        (np.full((40, 40), 255.0, np.float32), "value_range"),
        (np.zeros((2, 40, 40), np.float32), "shape"),
        (np.zeros((40, 40), np.complex64), "dtype"),
    ],
)
def test_npy_rejects(arr: np.ndarray, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        decode_image(npy_bytes(arr))


def test_npy_never_unpickles() -> None:
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}] * (40 * 40), dtype=object).reshape(40, 40), allow_pickle=True)
    with pytest.raises(InvalidInput, match="dtype"):
        decode_image(buf.getvalue())


# --------------------------------------------------------------------------------------------- DICOM


def test_dicom_monochrome2_minmax_and_info_without_patient_data() -> None:
    a = ramp12()
    ds = make_dicom(a)
    d = decode_image(dicom_bytes(ds))
    assert (d.kind, d.bit_depth, d.height, d.width) == ("dicom", 12, 48, 40)
    np.testing.assert_allclose(d.pixels, (a - 100.0) / 2900.0, atol=1e-6)
    assert d.dicom is not None and d.dicom["voi"] == "minmax"
    assert d.dicom["study_instance_uid"] == ds.StudyInstanceUID
    assert d.dicom["sop_instance_uid"] == ds.SOPInstanceUID
    assert d.dicom["transfer_syntax_uid"] == ExplicitVRLittleEndian
    text = repr(d) + repr(d.dicom)
    for secret in ("Doe", "PID-0001", "19700101"):
        assert secret not in text
    assert d.patient is None
    linked = decode_image(dicom_bytes(ds), keep_patient_link=True)
    assert linked.patient == {"patient_id": "PID-0001", "patient_name": "Doe^Jane"}
    assert "PID-0001" not in repr(linked)


def test_dicom_monochrome1_is_inverted() -> None:
    a = ramp12()
    m2 = decode_image(dicom_bytes(make_dicom(a))).pixels
    m1 = decode_image(dicom_bytes(make_dicom(a, photometric="MONOCHROME1", modality="CR",
                                             sop_class=ComputedRadiographyImageStorage))).pixels
    np.testing.assert_allclose(m1, 1.0 - m2, atol=1e-6)
    assert m1[0, 0] == pytest.approx(1.0) and m1[-1, -1] == pytest.approx(0.0)


def _linear_window(v: np.ndarray, c: float, w: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 LINEAR, output in [0, 1]."""
    out = (v - (c - 0.5)) / (w - 1) + 0.5
    out[v <= c - 0.5 - (w - 1) / 2] = 0.0
    out[v > c - 0.5 + (w - 1) / 2] = 1.0
    return out


def test_dicom_rescale_then_first_window() -> None:
    a = ramp12()
    ds = make_dicom(a, extra={"RescaleSlope": 2, "RescaleIntercept": -1000,
                              "WindowCenter": [2000, 99], "WindowWidth": [3001, 5]})
    d = decode_image(dicom_bytes(ds))
    assert d.dicom is not None and d.dicom["voi"] == "window"
    expected = _linear_window(2.0 * a - 1000.0, 2000.0, 3001.0)
    np.testing.assert_allclose(d.pixels, expected, atol=1e-5)
    assert 0.0 < expected.mean() < 1.0 and (expected == 0).any() and (expected == 1).any()


def test_dicom_window_monochrome1_and_bad_window_falls_back() -> None:
    a = ramp12()
    ds = make_dicom(a, photometric="MONOCHROME1", extra={"WindowCenter": 1500, "WindowWidth": 1001})
    np.testing.assert_allclose(decode_image(dicom_bytes(ds)).pixels,
                               1.0 - _linear_window(a.astype(float), 1500, 1001), atol=1e-5)
    bad = make_dicom(a, extra={"WindowCenter": 1500, "WindowWidth": 0})
    d = decode_image(dicom_bytes(bad))
    assert d.dicom is not None and d.dicom["voi"] == "minmax"
    np.testing.assert_allclose(d.pixels, (a - 100.0) / 2900.0, atol=1e-6)


def test_dicom_voi_lut_sequence() -> None:
    a = ramp12()
    lut = np.rint(4095 * np.sqrt(np.arange(4096) / 4095.0)).astype(np.uint16)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.LUTData = lut.tolist()
    item["LUTDescriptor"].VR = "US"
    item["LUTData"].VR = "US"
    ds = make_dicom(a, extra={"VOILUTSequence": [item], "WindowCenter": 10, "WindowWidth": 5})
    d = decode_image(dicom_bytes(ds))
    assert d.dicom is not None and d.dicom["voi"] == "lut"  # the LUT wins over the window
    np.testing.assert_allclose(d.pixels, lut[a] / 4095.0, atol=1e-6)


def test_dicom_secondary_capture_rgb_and_8bit() -> None:
    rgb = RNG.integers(0, 256, (36, 40, 3), dtype=np.uint8)
    ds = make_dicom(rgb[..., 0], modality="OT", sop_class=SecondaryCaptureImageStorage, bits_stored=8)
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.PixelData = rgb.tobytes()
    luma = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]) / 255.0
    np.testing.assert_allclose(decode_image(dicom_bytes(ds)).pixels, luma, atol=1e-6)


def test_dicom_without_preamble() -> None:
    a = ramp12()
    data = dicom_bytes(make_dicom(a), preamble=False)
    assert data[128:132] != b"DICM"
    assert detect_kind(data) == "dicom"
    np.testing.assert_allclose(decode_image(data).pixels, (a - 100.0) / 2900.0, atol=1e-6)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless, JPEGLSLossless])
def test_dicom_compressed_lossless(syntax: str) -> None:
    a = ramp12()
    ds = make_dicom(a)
    ds.compress(syntax)
    assert ds.file_meta.TransferSyntaxUID == syntax
    d = decode_image(dicom_bytes(ds))
    assert d.dicom is not None and d.dicom["transfer_syntax_uid"] == syntax
    np.testing.assert_allclose(d.pixels, (a - 100.0) / 2900.0, atol=1e-6)


def test_dicom_jpeg_baseline_encapsulated() -> None:
    # pydicom has no JPEG Baseline encoder: encapsulate a Pillow-encoded JPEG, as a modality would.
    a = (np.add.outer(np.arange(48), np.arange(40)) * 3).astype(np.uint8)
    stream = jpeg_bytes(a)
    ds = make_dicom(a, bits_stored=8)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([stream])
    ds["PixelData"].VR = "OB"
    ds.LossyImageCompression = "01"
    d = decode_image(dicom_bytes(ds))
    ref = np.asarray(Image.open(io.BytesIO(stream)), dtype=np.float64)
    expected = (ref - ref.min()) / (ref.max() - ref.min())
    assert np.abs(d.pixels - expected).max() < 2.5 / 255  # pylibjpeg vs Pillow IDCT rounding


def test_dicom_rejections() -> None:
    a = ramp12()
    with pytest.raises(InvalidInput, match="multi-frame"):
        decode_image(dicom_bytes(make_dicom(np.stack([a, a]), frames=2)))
    with pytest.raises(InvalidInput, match="modality CT"):
        decode_image(dicom_bytes(make_dicom(a, modality="CT", sop_class=CTImageStorage)))
    assert decode_image(dicom_bytes(make_dicom(a, modality="CT")), modalities=None).kind == "dicom"
    no_pixels = make_dicom(a)
    del no_pixels.PixelData
    with pytest.raises(InvalidInput, match="no .*Pixel Data"):
        decode_image(dicom_bytes(no_pixels))
    # Header dimensions are checked before any pixel decoding: a 60000 x 60000 header with tiny data.
    bomb = make_dicom(a)
    bomb.Rows = bomb.Columns = 60000
    with pytest.raises(InvalidInput, match="limit of 40000000 pixels"):
        decode_image(dicom_bytes(bomb))
    with pytest.raises(InvalidInput, match="too small"):
        decode_image(dicom_bytes(make_dicom(np.zeros((16, 64), np.uint16))))


def test_dicom_unknown_transfer_syntax_is_415() -> None:
    ds = make_dicom(ramp12())
    ds.file_meta.TransferSyntaxUID = MPEG2MPML  # a video syntax: pydicom has no decoder for it
    ds.PixelData = encapsulate([b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    with pytest.raises(UnsupportedMediaType, match="transfer syntax"):
        decode_image(dicom_bytes(ds))


def test_dicom_implicit_vr_file() -> None:
    a = ramp12()
    ds = make_dicom(a)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    d = decode_image(dicom_bytes(ds))
    np.testing.assert_allclose(d.pixels, (a - 100.0) / 2900.0, atol=1e-6)


# --------------------------------------------------------------------------------------------- errors


def test_empty_unknown_and_limits() -> None:
    with pytest.raises(InvalidInput, match="empty request body"):
        decode_image(b"")
    with pytest.raises(UnsupportedMediaType, match="PNG") as info:
        decode_image(b"hello, this is not an image at all " * 10, "text/plain")
    assert info.value.http_status == 415
    with pytest.raises(InvalidInput, match="could not be decoded"):
        decode_image(b"not really a png", "image/png")  # declared PNG, corrupt: 400, not 415
    small = png_bytes(np.zeros((64, 64), np.uint8))
    with pytest.raises(InvalidInput, match="limit of 1000 pixels"):
        decode_image(small, max_pixels=1000)
    with pytest.raises(InvalidInput, match="limit of 20 bytes"):
        decode_image(small, max_bytes=20)
    with pytest.raises(InvalidInput, match="too small"):
        decode_image(png_bytes(np.zeros((31, 200), np.uint8)))


def test_png_bomb_header_checked_before_decoding() -> None:
    data = bytearray(png_bytes(np.zeros((64, 64), np.uint8)))
    struct.pack_into(">II", data, 16, 100_000, 100_000)  # IHDR width/height; CRC left stale on purpose
    with pytest.raises(InvalidInput, match="limit of 40000000 pixels"):
        decode_image(bytes(data))


def test_jpeg_bomb_header_checked_before_decoding() -> None:
    data = bytearray(jpeg_bytes(np.zeros((64, 64), np.uint8)))
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, 60000, 60000)  # SOF0 height, width
    with pytest.raises(InvalidInput, match="limit of"):
        decode_image(bytes(data))


def test_pil_decompression_bomb_error_becomes_invalid_input() -> None:
    # Above PIL's own hard limit (2 x MAX_IMAGE_PIXELS) with our limit raised past it: PIL's error is mapped.
    data = bytearray(jpeg_bytes(np.zeros((64, 64), np.uint8)))
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, 65000, 65000)
    with pytest.raises(InvalidInput, match="limit"):
        decode_image(bytes(data), max_pixels=10**10)


def _only_our_errors(data: bytes, content_type: str | None = None) -> None:
    try:
        d = decode_image(data, content_type)
    except (InvalidInput, UnsupportedMediaType):
        return
    except CxrExplainError as exc:  # pragma: no cover - a failure message
        pytest.fail(f"unexpected error type {type(exc).__name__}")
    assert d.pixels.dtype == np.float32 and np.isfinite(d.pixels).all()
    assert 0.0 <= d.pixels.min() and d.pixels.max() <= 1.0


def test_fuzz_random_and_truncated_inputs() -> None:
    rng = np.random.default_rng(1234)
    a16 = ramp12()
    rle = make_dicom(a16)
    rle.compress(RLELossless)
    samples = [
        png_bytes(rng.integers(0, 256, (40, 40), dtype=np.uint8)),
        png_bytes(a16.astype(np.uint16) * 16),
        jpeg_bytes(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)),
        dicom_bytes(make_dicom(a16)),
        dicom_bytes(rle),
        npy_bytes(rng.random((40, 40), dtype=np.float32)),
    ]
    for sample in samples:
        for frac in (0.02, 0.1, 0.3, 0.5, 0.8, 0.95, 0.999):
            _only_our_errors(sample[: max(1, int(len(sample) * frac))])
        for _ in range(10):  # random byte corruption after the magic
            bad = bytearray(sample)
            pos = rng.integers(8, len(bad), size=8)
            bad[pos[0]:pos[0] + 1] = b""  # a deletion shifts everything after it
            for p in pos[1:]:
                if p < len(bad):
                    bad[p] = int(rng.integers(0, 256))
            _only_our_errors(bytes(bad))
    prefixes = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"\x93NUMPY", b"\x00" * 128 + b"DICM",
                b"\x08\x00\x05\x00CS"]
    for prefix in prefixes:
        for n in (0, 10, 200, 3000):
            _only_our_errors(prefix + rng.bytes(n))
            _only_our_errors(prefix + rng.bytes(n), "application/dicom")


# --------------------------------------------------------------------------------------------- model input


def test_to_model_input_crops_centre_and_applies_spec() -> None:
    img = np.ones((96, 64), np.float32)
    img[16:80] = 0.25  # the centre square; the bands outside it must be cropped away
    x, geo = to_model_input(img, XRV.__class__(**{**XRV.to_dict(), "size": 64}))
    assert x.shape == (1, 1, 64, 64)
    assert geo == Geometry(96, 64, 16, 0, 64, 64)
    torch.testing.assert_close(x, torch.full((1, 1, 64, 64), 0.25 * 2048 - 1024))
    x3, geo3 = to_model_input(np.zeros((40, 100), np.float32), unit_spec(channels=3, size=32))
    assert x3.shape == (1, 3, 32, 32) and geo3 == Geometry(40, 100, 0, 30, 40, 32)
    stretch = XRV.__class__(**{**unit_spec(1, 32).to_dict(), "resize": "stretch"})
    assert to_model_input(np.zeros((40, 100), np.float32), stretch)[1].crop_size == 0


def test_dicom_decoding_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    ds = make_dicom(ramp12())
    with pydicom.config.disable_value_validation(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.StudyInstanceUID = "1.2.SECRET-NAME"  # invalid UI: pydicom's warning quotes the value
        data = dicom_bytes(ds)
    with caplog.at_level("DEBUG"), pytest.warns(UserWarning, match="SECRET-NAME"):
        pydicom.dcmread(io.BytesIO(data)).StudyInstanceUID  # noqa: B018 - shows the log is real
    if not any("SECRET-NAME" in r.getMessage() for r in caplog.records):
        pytest.skip("this pydicom does not log invalid values; nothing to mute")
    caplog.clear()
    with caplog.at_level("DEBUG"):
        decode_image(data)
        _only_our_errors(data[: len(data) // 2])
    assert not [r for r in caplog.records if r.name.startswith("pydicom")]


def test_dicom_compressed_frame_larger_than_header_is_rejected_before_decoding() -> None:
    buf = io.BytesIO()
    Image.new("L", (3000, 2000)).save(buf, format="JPEG", quality=10)  # compresses to a few kB
    ds = make_dicom(np.zeros((64, 64), np.uint8), bits_stored=8)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    with pytest.raises(InvalidInput, match="2000 x 3000 but the DICOM header says 64 x 64"):
        decode_image(dicom_bytes(ds))


# --------------------------------------------------------------------------------------------- memory budget


def _natural(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A radiograph-like image in [0, 1]: smooth anatomy, edges, and a little noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = 0.45 + 0.25 * np.sin(9 * xx) * np.cos(7 * yy) + 0.2 * ((xx - 0.5) ** 2 + (yy - 0.4) ** 2 < 0.05)
    return np.clip(img + 0.03 * rng.standard_normal((h, w)), 0, 1)


def _reduced_case(kind: str, h: int, w: int) -> bytes:
    img = _natural(h, w)
    if kind == "png8":
        return png_bytes((img * 255).round().astype(np.uint8))
    if kind == "png16":
        return png_bytes((img * 65535).round().astype(np.uint16))
    if kind == "png_rgb":
        rgb = np.stack([img, img ** 1.2, img ** 0.8], axis=-1)
        return png_bytes((rgb * 255).round().astype(np.uint8))
    if kind == "jpeg":
        return jpeg_bytes((img * 255).round().astype(np.uint8))
    stored = (img * 4095).round().astype(np.uint16)
    if kind == "dicom_window_m1":  # rescale, a window that clips both ends, MONOCHROME1
        return dicom_bytes(make_dicom(stored, photometric="MONOCHROME1", extra={
            "RescaleSlope": 1, "RescaleIntercept": -1024, "WindowCenter": 900, "WindowWidth": 1600}))
    if kind == "dicom_lut":
        lut = Dataset()
        lut.LUTDescriptor = [4096, 0, 16]
        lut.LUTData = (65535 * (np.linspace(0, 1, 4096) ** 0.5)).round().astype(np.uint16).tolist()
        lut["LUTDescriptor"].VR = lut["LUTData"].VR = "US"
        return dicom_bytes(make_dicom(stored, extra={"VOILUTSequence": [lut]}))
    raise AssertionError(kind)


def _box(a: np.ndarray, f: int) -> np.ndarray:
    h, w = a.shape
    return a[: h - h % f, : w - w % f].reshape(h // f, f, w // f, f).mean(axis=(1, 3))


@pytest.mark.parametrize("kind", ["png8", "png16", "png_rgb", "jpeg", "dicom_window_m1", "dicom_lut"])
@pytest.mark.parametrize("shape", [(1500, 1100), (1100, 1500)])
@pytest.mark.parametrize("resize", ["center_crop", "stretch"])
def test_reduced_decode_gives_the_full_decodes_model_input_and_geometry(kind: str, shape: tuple[int, int],
                                                                         resize: str) -> None:
    data = _reduced_case(kind, *shape)
    spec = XRV.__class__(**{**unit_spec(1, 96).to_dict(), "resize": resize})
    full = decode_image(data)
    reduced = decode_image(data, target_size=96)
    assert full.reduction == 1 and reduced.reduction in (4, 5)  # 1100 // (2 * 96) = 5; JPEG's DCT scale: 4
    assert (reduced.height, reduced.width) == (full.height, full.width) == shape
    f = reduced.reduction
    assert reduced.pixels.shape == (-(-shape[0] // f), -(-shape[1] // f))
    x_full, g_full = to_model_input(full.pixels, spec)
    x_red, g_red = to_model_input(reduced.pixels, spec, original_size=(reduced.height, reduced.width),
                                  reduction=f)
    assert g_red == g_full
    assert float((x_red - x_full).abs().mean()) < 1e-2
    if kind != "jpeg":  # the display values are reduced, not the stored ones: a box mean of the full decode
        inner = _box(full.pixels.astype(np.float64), f)
        np.testing.assert_allclose(reduced.pixels[: inner.shape[0], : inner.shape[1]], inner, atol=1e-5)


def test_reduce_by_strips_is_a_box_mean_with_partial_edges() -> None:
    from cxrexplain_imageio.checks import reduce_by_strips

    a = np.arange(35, dtype=np.float64).reshape(5, 7)
    out = reduce_by_strips(5, 7, 2, lambda y0, y1: a[y0:y1])
    expected = np.array([[4, 6, 8, 9.5], [18, 20, 22, 23.5], [28.5, 30.5, 32.5, 34]])
    np.testing.assert_allclose(out, expected)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(reduce_by_strips(5, 7, 1, lambda y0, y1: a[y0:y1]), a.astype(np.float32))


def test_small_images_and_no_target_are_not_reduced() -> None:
    data = png_bytes((_natural(300, 200) * 255).astype(np.uint8))
    assert decode_image(data, target_size=96).reduction == 1  # 200 // 192 = 1: already near the model's size
    assert decode_image(data).pixels.shape == (300, 200)


def _deflated(ds: Dataset, junk: int = 0) -> bytes:
    """``ds`` in Deflated Explicit VR Little Endian, with ``junk`` zero bytes appended before deflating."""
    import zlib

    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info

    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflated = z.compress(body.getvalue()) + z.compress(bytes(junk)) + z.flush()
    out = DicomBytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(out, ds.file_meta, enforce_standard=True)
    return out.getvalue() + deflated


def test_deflated_dicom_decodes_as_the_uncompressed_one() -> None:
    plain = make_dicom(ramp12(), photometric="MONOCHROME1")
    expected = decode_image(dicom_bytes(plain)).pixels
    np.testing.assert_array_equal(decode_image(_deflated(make_dicom(ramp12(), photometric="MONOCHROME1"))).pixels,
                                  expected)


def test_deflated_dicom_over_the_cap_is_refused_from_its_header() -> None:
    from cxrexplain_lab.hostile_bodies import deflated_dicom

    data = deflated_dicom(2048)  # 8 MiB inflated
    with pytest.raises(InvalidInput, match="above the limit of 1000000 pixels"):
        decode_image(data, max_pixels=1_000_000)
    assert decode_image(data, target_size=96).reduction == 2048 // 192


def test_deflated_dicom_that_inflates_past_its_pixel_data_is_refused() -> None:
    data = _deflated(make_dicom(ramp12()), junk=64 * 2**20)
    assert len(data) < 200_000
    with pytest.raises(InvalidInput, match="inflates past its pixel data"):
        decode_image(data)
    with pytest.raises(InvalidInput):  # and a cut stream is still an InvalidInput
        decode_image(data[: len(data) // 2])


def _peak_growth(case: str) -> dict[str, object]:
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    probe = Path(__file__).with_name("peak_memory.py")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, str(probe), case, "96"], capture_output=True, text=True, env=env,
                          timeout=300, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="peak RSS reset needs Linux /proc")
@pytest.mark.parametrize("case", ["png8", "png16", "jpeg", "dicom_deflated"])
def test_decoding_a_large_image_stays_within_the_memory_budget(case: str) -> None:
    """7000 x 7000 PNG (8 and 16-bit) and JPEG for a 96 px model, and the deflated 16384 x 16384 DICOM the
    pixel cap refuses: each costs the process at most 300 MB at its peak (issue #10; before: +795, +842,
    +748 and +1037 MiB)."""
    measured = _peak_growth(case)
    if case == "dicom_deflated":
        assert "above the limit of 50000000 pixels" in str(measured["outcome"])
        assert float(measured["growth_mib"]) <= 50  # refused from the header: nothing is inflated
    else:
        assert measured["outcome"] == "ok"
    assert float(measured["growth_mib"]) * 2**20 <= 300e6


def test_dicom_unused_high_bits_are_ignored_strip_by_strip() -> None:
    a = ramp12()
    clean = decode_image(dicom_bytes(make_dicom(a, extra={"WindowCenter": 1500, "WindowWidth": 2000})))
    dirty = decode_image(dicom_bytes(make_dicom(a | np.uint16(0xA000), extra={"WindowCenter": 1500,
                                                                            "WindowWidth": 2000})))
    np.testing.assert_array_equal(dirty.pixels, clean.pixels)


def test_damaged_deflated_dicom_ends_in_our_errors() -> None:
    data = _deflated(make_dicom(ramp12()))
    meta_end = 144 + struct.unpack_from("<I", data, 140)[0]  # preamble, DICM, (0002,0000) UL 4, its value
    rng = np.random.default_rng(5)
    for n in (0, 10, 300, 5000):
        _only_our_errors(data[:meta_end] + rng.bytes(n))
    for cut in (meta_end + 5, meta_end + 40, len(data) - 10):
        _only_our_errors(data[:cut])
    flipped = bytearray(data)
    for p in rng.integers(meta_end, len(data), 20):
        flipped[p] ^= 0xFF
    _only_our_errors(bytes(flipped))

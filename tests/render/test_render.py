"""The one render package (cxrexplain_render): geometry back-mapping, colormap, overlays, PNG/GIF/array
encodings, DICOM Secondary Capture; checked against the engine's geometry and the server's image decoder."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pydicom
import pytest
import torch
import torch.nn.functional as F
from dicom_samples import dicom_bytes, make_dicom, ramp12
from PIL import Image, ImageSequence
from pydicom.uid import SecondaryCaptureImageStorage

from cxrexplain.preprocess import Geometry, to_model_input
from cxrexplain.spec import unit_spec
from cxrexplain_imageio import decode_image
from cxrexplain_render import (
    COLORMAP_LUT,
    NOT_FOR_DIAGNOSTIC_USE,
    RenderInputError,
    RenderOptionError,
    colorize,
    decode_array,
    encode_array,
    encode_png,
    frames_to_gif,
    heatmap_to_original,
    normalize_for_display,
    overlay,
    secondary_capture,
    srgb_to_lab,
)

RNG = np.random.default_rng(7)


# --------------------------------------------------------------------------------------------- geometry


def test_geometry_round_trip_square_maps_to_rectangle() -> None:
    image = RNG.random((80, 120), dtype=np.float32)
    _, geo = to_model_input(image, unit_spec(1, size=40))
    assert geo == Geometry(80, 120, 0, 20, 80, 40)
    m = np.zeros((40, 40), np.float32)
    m[10:30, 5:25] = 1.0  # model rows 10..29, cols 5..24; crop scale 80 / 40 = 2, offset (0, 20)
    back = heatmap_to_original(m, geo)
    assert back.shape == (80, 120)
    rows, cols = np.nonzero(back > 0.5)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (20, 59, 20 + 10, 20 + 49)
    assert back[25:55, 35:65].min() == pytest.approx(1.0)
    assert back[:, :20].max() == 0.0 and back[:, 100:].max() == 0.0  # outside the crop: zero canvas
    tall = heatmap_to_original(m, Geometry(120, 80, 20, 0, 80, 40))
    rows, cols = np.nonzero(tall > 0.5)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (40, 79, 10, 49)


def test_geometry_stretch_and_invalid() -> None:
    back = heatmap_to_original(np.ones((32, 32), np.float32), Geometry(40, 100, 0, 0, 0, 32))
    assert back.shape == (40, 100) and np.allclose(back, 1.0)
    with pytest.raises(RenderInputError, match="outside"):
        heatmap_to_original(np.ones((32, 32)), Geometry(40, 100, 0, 80, 40, 32))
    assert heatmap_to_original(torch.ones(32, 32), Geometry(64, 64, 0, 0, 64, 32)).dtype == np.float32


@pytest.mark.parametrize(("shape", "size"), [((40, 40), (80, 80)), ((64, 64), (20, 20)), ((32, 32), (40, 100))])
def test_resize_matches_torch_bilinear(shape: tuple[int, int], size: tuple[int, int]) -> None:
    # The render path has no torch; its Pillow resize must give what the server drew with torch before:
    # bilinear at pixel centres, antialiased when shrinking.
    m = RNG.random(shape, dtype=np.float32)
    t = torch.from_numpy(m)[None, None]
    shrink = size[0] < shape[0] or size[1] < shape[1]
    expected = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=shrink)[0, 0].numpy()
    back = heatmap_to_original(m, Geometry(size[0], size[1], 0, 0, 0, shape[0]))
    np.testing.assert_allclose(back, expected, atol=1e-5, rtol=0)


def test_package_imports_without_torch_or_dicom_libraries() -> None:
    # numpy and Pillow only at import: the client SDK installs without torch, pydicom and highdicom.
    heavy = ("torch", "torchvision", "ts", "pydicom", "highdicom", "cxrexplain", "cxrexplain_imageio",
             "cxrexplain_serving", "cxrexplain_lab", "export")
    code = ("import sys, cxrexplain_render, cxrexplain_client; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --------------------------------------------------------------------------------------------- colour


def test_colormap_lightness_rises_linearly() -> None:
    assert COLORMAP_LUT.shape == (256, 3) and COLORMAP_LUT.dtype == np.uint8
    lightness = srgb_to_lab(COLORMAP_LUT / 255.0)[:, 0]
    assert (np.diff(lightness) > 0).all()  # strictly brighter with more evidence
    assert np.abs(lightness - np.linspace(lightness[0], lightness[-1], 256)).max() < 1.0
    assert lightness[0] < 10 and lightness[-1] > 90
    steps = np.diff(lightness)  # near-constant steps: no band of the map looks like an edge
    assert steps.min() > 0.4 * steps.mean() and steps.max() < 2.0 * steps.mean()
    chroma = np.hypot(*srgb_to_lab(COLORMAP_LUT / 255.0)[:, 1:].T)
    assert chroma[64:200].min() > 40  # coloured in the middle, not a gray ramp


def test_srgb_to_lab_known_values() -> None:
    np.testing.assert_allclose(srgb_to_lab(np.array([1.0, 1.0, 1.0])), [100, 0, 0], atol=0.05)
    np.testing.assert_allclose(srgb_to_lab(np.array([0.0, 0.0, 0.0])), [0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(srgb_to_lab(np.array([1.0, 0.0, 0.0])), [53.24, 80.09, 67.20], atol=0.1)


def test_colorize_indexes_lut() -> None:
    m = np.array([[0.0, 1.0], [0.5, 2.0], [-1.0, 254.4 / 255]], np.float32)
    c = colorize(m)
    assert c.shape == (3, 2, 3) and c.dtype == np.uint8
    np.testing.assert_array_equal(c[0, 0], COLORMAP_LUT[0])
    np.testing.assert_array_equal(c[0, 1], COLORMAP_LUT[255])
    np.testing.assert_array_equal(c[1, 0], COLORMAP_LUT[128])
    np.testing.assert_array_equal(c[1, 1], COLORMAP_LUT[255])  # clipped
    np.testing.assert_array_equal(c[2, 0], COLORMAP_LUT[0])
    np.testing.assert_array_equal(c[2, 1], COLORMAP_LUT[254])
    with pytest.raises(RenderInputError, match="NaN"):
        colorize(np.full((2, 2), np.nan))


def test_overlay_blends_by_normalized_evidence() -> None:
    image = np.full((40, 40), 0.5, np.float32)
    heat = np.zeros((40, 40), np.float32)
    heat[10:20, 10:20] = 4.0  # the maximum: normalized to 1
    heat[30:35, 30:35] = 2.0  # half of the maximum
    heat[0:5, 0:5] = -3.0  # negative evidence: cast to zero for display
    out = np.asarray(overlay(image, heat, alpha=0.45)).astype(np.float64)
    assert out.shape == (40, 40, 3)
    np.testing.assert_array_equal(out[2, 2], [128, 128, 128])  # negatives leave the radiograph as it is
    np.testing.assert_array_equal(out[38, 2], [128, 128, 128])
    np.testing.assert_allclose(out[15, 15], np.rint(0.55 * 127.5 + 0.45 * COLORMAP_LUT[255]), atol=0.51)
    w = 0.45 * 0.5
    np.testing.assert_allclose(out[32, 32], np.rint((1 - w) * 127.5 + w * COLORMAP_LUT[128]), atol=0.51)
    with pytest.raises(RenderOptionError):
        overlay(image, heat, alpha=1.5)
    with pytest.raises(RenderInputError, match="geometry"):
        overlay(np.zeros((60, 80)), heat)


def test_overlay_with_geometry_and_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    image = RNG.random((80, 120), dtype=np.float32)
    _, geo = to_model_input(image, unit_spec(1, size=40))
    heat = np.zeros((40, 40), np.float32)
    heat[10:30, 10:30] = 1.0
    out = np.asarray(overlay(image, heat, geometry=geo))
    assert out.shape == (80, 120, 3)
    gray = np.rint(image * 255)
    np.testing.assert_allclose(out[:, :20, 0], gray[:, :20], atol=0.51)  # left of the crop: untouched
    assert np.abs(out[30:50, 50:70].astype(float) - gray[30:50, 50:70, None]).max() > 20
    path = tmp_path / "o.png"
    path.write_bytes(encode_png(out))
    np.testing.assert_array_equal(np.asarray(Image.open(path)), out)


# --------------------------------------------------------------------------------------------- encodings


def test_png_8bit_16bit_and_rgb_round_trip() -> None:
    m = RNG.random((36, 44))
    im8 = Image.open(io.BytesIO(encode_png(m)))
    assert im8.mode == "L"
    np.testing.assert_array_equal(np.asarray(im8), np.rint(m * 255).astype(np.uint8))
    data16 = encode_png(m, bit_depth=16)
    im16 = Image.open(io.BytesIO(data16))
    assert im16.mode.startswith("I")
    np.testing.assert_array_equal(np.asarray(im16).astype(np.int64), np.rint(m * 65535).astype(np.int64))
    np.testing.assert_allclose(decode_image(data16).pixels, m, atol=0.5 / 65535 + 1e-7)  # our decoder agrees
    rgb = RNG.integers(0, 256, (36, 44, 3), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(encode_png(rgb)))), rgb)
    with pytest.raises(RenderOptionError):
        encode_png(m, bit_depth=12)  # type: ignore[arg-type]
    raw = np.zeros((40, 40), np.float32)
    raw[5, 5], raw[6, 6] = 8.0, -8.0
    shown = np.asarray(Image.open(io.BytesIO(encode_png(normalize_for_display(raw)))))  # the wire's png form
    assert shown[5, 5] == 255 and shown[6, 6] == 0 and shown.sum() == 255


def test_array_round_trip() -> None:
    h = (RNG.standard_normal((24, 30)) * 3).astype(np.float32)
    b32 = encode_array(h, "float32")
    assert len(b32) == 24 * 30 * 4 and b32 == h.astype("<f4").tobytes()
    np.testing.assert_array_equal(decode_array(b32, 24, 30, "float32"), h)
    b16 = encode_array(torch.from_numpy(h), "float16")
    assert len(b16) == 24 * 30 * 2
    back = decode_array(b16, 24, 30, "float16")
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, h, rtol=2.0**-11, atol=2.0**-24)  # half precision: 11-bit significand
    with pytest.raises(RenderOptionError, match="float32"):
        encode_array(np.full((4, 4), 1e6), "float16")
    with pytest.raises(RenderOptionError):
        encode_array(h, "int8")  # type: ignore[arg-type]
    with pytest.raises(RenderInputError, match="bytes"):
        decode_array(b16[:-2], 24, 30, "float16")


# --------------------------------------------------------------------------------------------- GIF


def _gif_frames(data: bytes) -> tuple[list[np.ndarray], Image.Image]:
    im = Image.open(io.BytesIO(data))
    return [np.asarray(f.convert("L")) for f in ImageSequence.Iterator(im)], im


@pytest.mark.parametrize("k", [1, 2, 5])
def test_gif_bounce(k: int) -> None:
    frames = np.stack([np.full((32, 40), i / 10.0, np.float32) for i in range(k)])
    frames[:, :4, :4] = 1.0
    decoded, im = _gif_frames(frames_to_gif(frames, duration_ms=80))
    expected = [*range(k), *range(k - 2, 0, -1)] if k > 2 else list(range(k))
    assert len(decoded) == (2 * k - 2 if k > 2 else k)
    for got, i in zip(decoded, expected, strict=True):
        np.testing.assert_array_equal(got, np.rint(frames[i] * 255).astype(np.uint8))
    assert im.info.get("loop") == 0
    if k > 1:
        assert im.info.get("duration") == 80


def test_gif_forward_only_and_play_once() -> None:
    frames = RNG.random((4, 32, 32)).astype(np.float32)
    decoded, im = _gif_frames(frames_to_gif(frames, bounce=False, loop=None))
    assert len(decoded) == 4 and "loop" not in im.info
    np.testing.assert_array_equal(decoded[3], np.rint(frames[3] * 255).astype(np.uint8))
    with pytest.raises(RenderInputError):
        frames_to_gif(np.zeros((32, 32)))


# --------------------------------------------------------------------------------------------- DICOM


def _source() -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(dicom_bytes(make_dicom(ramp12(64, 48)))))


def _strict_round_trip(sc: pydicom.Dataset) -> pydicom.Dataset:
    """Write and read back with pydicom's value validation raising on any invalid value."""
    cfg = pydicom.config.settings
    saved = (cfg.reading_validation_mode, cfg.writing_validation_mode)
    cfg.reading_validation_mode = cfg.writing_validation_mode = pydicom.config.RAISE
    try:
        buf = io.BytesIO()
        sc.save_as(buf, enforce_file_format=True)
        back = pydicom.dcmread(io.BytesIO(buf.getvalue()))
        for elem in back.iterall():
            _ = elem.value  # forces validation of every (lazily converted) value
        return back
    finally:
        cfg.reading_validation_mode, cfg.writing_validation_mode = saved


def test_secondary_capture_from_dataset() -> None:
    pytest.importorskip("highdicom")
    src = _source()
    img = decode_image(dicom_bytes(src))
    heat = np.zeros((64, 64), np.float32)
    heat[20:40, 20:40] = 1.0
    _, geo = to_model_input(img.pixels, unit_spec(1, size=64))
    rgb = np.asarray(overlay(img.pixels, heat, geometry=geo))
    sc = secondary_capture(src, rgb, "cxrexplain RAP Cardiomegaly")
    back = _strict_round_trip(sc)
    assert back.SOPClassUID == SecondaryCaptureImageStorage
    assert back.StudyInstanceUID == src.StudyInstanceUID
    assert back.SeriesInstanceUID != src.SeriesInstanceUID
    assert back.SOPInstanceUID not in (src.SOPInstanceUID, back.SeriesInstanceUID)
    assert back.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert back.SourceImageSequence[0].ReferencedSOPClassUID == src.SOPClassUID
    series_ref = back.ReferencedSeriesSequence[0]
    assert series_ref.SeriesInstanceUID == src.SeriesInstanceUID
    assert series_ref.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert NOT_FOR_DIAGNOSTIC_USE in back.ImageComments and back.BurnedInAnnotation == "YES"
    assert back.ImageType[0] == "DERIVED" and back.SeriesDescription == "cxrexplain RAP Cardiomegaly"
    assert (back.PatientID, str(back.PatientName)) == ("PID-0001", "Doe^Jane")
    assert "PatientBirthDate" not in back or not back.PatientBirthDate  # nothing beyond the link
    assert list(back.PatientOrientation) == ["L", "F"] and [float(v) for v in back.PixelSpacing] == [0.2, 0.2]
    px = back.pixel_array
    assert px.shape == (64, 48, 3) and back.PhotometricInterpretation == "RGB"
    band = px[:12, :]
    assert (band.min(axis=-1) > 200).sum() > 5 and (band.max(axis=-1) == 0).sum() > 50  # white text on black
    np.testing.assert_array_equal(px[32:], rgb[32:])  # below the band, the overlay is unchanged


def test_secondary_capture_from_decoded_info_and_without_patient() -> None:
    pytest.importorskip("highdicom")
    data = dicom_bytes(make_dicom(ramp12(64, 48)))
    img = decode_image(data, keep_patient_link=True)
    assert img.dicom is not None
    rgb = np.zeros((64, 48, 3), np.uint8)
    sc = secondary_capture(img.dicom, Image.fromarray(rgb), "x" * 80, patient=img.patient, burn_in=False)
    back = _strict_round_trip(sc)
    assert back.PatientID == "PID-0001" and back.StudyInstanceUID == img.dicom["study_instance_uid"]
    assert back.BurnedInAnnotation == "NO" and (back.pixel_array == 0).all()
    assert len(back.SeriesDescription) == 64
    anon = secondary_capture(decode_image(data).dicom, rgb, "anon")
    assert not anon.get("PatientID") and not anon.get("PatientName")
    info = dict(img.dicom)
    info.pop("patient_orientation")
    assert not _strict_round_trip(secondary_capture(info, rgb, "o")).PatientOrientation
    info["study_instance_uid"] = ""
    with pytest.raises(RenderInputError, match="study_instance_uid"):
        secondary_capture(info, rgb, "no study")


def test_secondary_capture_reads_a_dataset_as_the_decoder_info_does() -> None:
    # The render package reads the source dataset itself (it may not import the server's decoder): the
    # derived object must not depend on which of the two forms of the source it was given.
    pytest.importorskip("highdicom")
    src = _source()
    rgb = RNG.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    linked = decode_image(dicom_bytes(src), keep_patient_link=True)
    assert linked.dicom is not None
    from_dataset = secondary_capture(src, rgb, "same")
    from_info = secondary_capture(linked.dicom, rgb, "same", patient=linked.patient)
    from_source = ("StudyInstanceUID", "PatientID", "PatientName", "PatientOrientation", "PixelSpacing",
                   "SourceImageSequence", "ReferencedSeriesSequence", "PixelData")
    for keyword in from_source:
        assert from_info.get(keyword) == from_dataset.get(keyword) and from_dataset.get(keyword), keyword
    assert {e.keyword for e in from_info} == {e.keyword for e in from_dataset}


def test_secondary_capture_without_the_dicom_extra_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "highdicom", None)  # as if the [dicom] extra were not installed
    with pytest.raises(ImportError, match=r"pip install 'cxrexplain-client\[dicom\]'"):
        secondary_capture(_source(), np.zeros((8, 8, 3), np.uint8), "x")

"""The SDK's codec, its options checks and its pictures: no server, or a server that only records."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import json_format
from PIL import Image
from servers import (
    EVERY_METHOD,
    EVERY_OPTION,
    EVERY_OPTION_ON_THE_WIRE,
    FAST,
    H,
    HttpState,
    Inference,
    Management,
    W,
    arrays,
    header_options,
    make_response,
    png_bytes,
)

import cxrexplain_client as cx
import cxrexplain_render
from cxrexplain_client import codec
from cxrexplain_client._proto import (
    explain_pb2,
)


# -------------------------------------------------------------------------------------------------- codec
@pytest.mark.parametrize("dtype", ["float16", "float32", "png"])
@pytest.mark.parametrize("encoding", ["binary", "json"])
def test_codec_round_trip(dtype: str, encoding: str) -> None:
    msg = make_response(dtype)
    if encoding == "binary":
        parsed = codec.parse_payload(msg.SerializeToString(), codec.PROTOBUF_MEDIA_TYPE)
    else:
        text = json_format.MessageToJson(msg, preserving_proto_field_name=True)
        parsed = codec.parse_payload(text.encode(), "application/json")
    ex = codec.to_explanation(parsed)
    arrs = arrays()
    if dtype == "png":
        expected, atol = {k: np.clip(v, 0, 1) for k, v in arrs.items()}, 0.5 / 255 + 1e-6
    else:
        expected = {k: v.astype(dtype).astype(np.float32) for k, v in arrs.items()}
        atol = 0.0
    assert ex.request_id == "req-1" and ex.model_name == "m" and ex.model_version == "1.0"
    assert ex.not_for_diagnostic_use is True
    assert [f.label for f in ex.findings] == ["A", "B"] and ex.findings[0].positive
    assert ex.probabilities["A"] == pytest.approx(0.8)
    assert set(ex.results) == {"A", "B"}
    for target in ("A", "B"):
        for method in ("cam", "rap"):
            got = ex.results[target].heatmaps[method]
            assert got.dtype == np.float32 and got.shape == (H, W)
            np.testing.assert_allclose(got, expected[method], atol=atol, rtol=0)
    ls = ex.results["A"].latent_shift
    assert ls is not None and ex.results["B"].latent_shift is None
    assert ls.frames.shape == (3, H, W)
    np.testing.assert_allclose(ls.lambdas, [-20, 0, 5])
    np.testing.assert_allclose(ls.frame_probabilities, [0.2, 0.8, 0.9], rtol=1e-6)
    assert ls.reconstruction_gap == pytest.approx(0.01)
    assert ex.geometry == cx.Geometry(20, 30, 0, 5, 20, H)
    assert ex.timings_ms == {"total": 12.5}


def test_payload_error_raises_typed_exception() -> None:
    msg = explain_pb2.ExplainResponse(request_id="r9")
    msg.error.CopyFrom(
        explain_pb2.Error(code=422, message="unknown label 'Foo'", request_id="r9", type="unknown_label")
    )
    with pytest.raises(cx.InvalidInput) as info:
        codec.to_explanation(codec.parse_payload(msg.SerializeToString()))
    assert info.value.status == 422 and info.value.request_id == "r9" and info.value.error_type == "unknown_label"
    assert "unknown label 'Foo'" in str(info.value)


def test_corrupt_map_is_reported() -> None:
    bad = explain_pb2.Map(height=4, width=4, dtype="float32", data=b"\x00" * 10)
    with pytest.raises(cx.CxrExplainClientError, match=r"10 bytes do not hold a 4 x 4 float32 map \(64\)"):
        codec.decode_map(bad)


def test_options_are_validated_before_upload() -> None:
    with pytest.raises(cx.InvalidInput, match="heatmap_dtype"):
        codec.build_options(heatmap_dtype="float64")
    opts = codec.build_options(methods=["cam", "rap"], targets=["Cardiomegaly", 3], top_k=2, frames=5)
    assert opts == {"methods": "cam,rap", "targets": "Cardiomegaly,3", "top_k": "2", "frames": "5"}


def test_sdk_sends_every_option_the_server_takes(
    http_server: tuple[str, HttpState], grpc_server: tuple[str, Inference, Management]
) -> None:
    url, state = http_server
    target, inference, _ = grpc_server
    with cx.ExplainClient(url, target, retry_policy=FAST) as client:
        client.explain(png_bytes(), "m", EVERY_METHOD, "A", **EVERY_OPTION)
        client.explain(png_bytes(), "m", EVERY_METHOD, "A", transport="grpc", **EVERY_OPTION)
    assert header_options(state.requests[-1]) == EVERY_OPTION_ON_THE_WIRE
    _, req, _ = inference.calls[-1]
    assert req is not None
    assert {k: v.decode() for k, v in req.input.items() if k != "data"} == EVERY_OPTION_ON_THE_WIRE

    async def run() -> None:
        async with cx.AsyncExplainClient(url, target, retry_policy=FAST) as aclient:
            await aclient.explain(png_bytes(), "m", EVERY_METHOD, "A", **EVERY_OPTION)

    asyncio.run(run())
    assert header_options(state.requests[-1]) == EVERY_OPTION_ON_THE_WIRE


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"steps": 0}, "steps must be at least 1"),
        ({"frames": 1}, "frames must be at least 2"),
        ({"top_k": "two"}, "top_k must be an integer"),
        ({"gif": "maybe"}, "gif must be true or false"),
        ({"heatmap_format": "jpeg"}, "heatmap_format must be one of array, png"),
        ({"value_range": (1.0,)}, "value_range must be two numbers"),
        ({"accept": "text/html"}, "accept must be application/json or application/x-protobuf"),
        ({"request_id": "not safe!"}, "request_id must match"),
        ({"methods": ["cam", "telepathy"]}, "unknown method 'telepathy'"),
        ({"method_options": {"gradcam": {"layr": "x"}}}, "gradcam does not take 'layr'"),
        ({"method_options": {"telepathy": {"depth": 1}}}, "unknown method 'telepathy'"),
        ({"method_options": {"integrated_gradients": {"steps": "many"}}}, "integrated_gradients.steps must be"),
        ({"method_options": {"latent_shift": {"map": "median"}}}, "latent_shift.map must be one of"),
    ],
)
def test_bad_options_are_refused_before_anything_is_sent(
    http_server: tuple[str, HttpState], options: dict[str, Any], needle: str
) -> None:
    url, state = http_server
    with cx.ExplainClient(url, retry_policy=FAST) as client, pytest.raises(cx.InvalidInput, match=needle):
        client.explain(png_bytes(), "m", **options)

    async def run() -> None:
        async with cx.AsyncExplainClient(url, retry_policy=FAST) as aclient:
            await aclient.explain(png_bytes(), "m", **options)

    with pytest.raises(cx.InvalidInput, match=needle):
        asyncio.run(run())
    assert state.requests == []


def test_unknown_option_name_is_a_type_error(http_server: tuple[str, HttpState]) -> None:
    url, state = http_server
    with cx.ExplainClient(url) as client, pytest.raises(TypeError, match="unknown option 'colour'"):
        client.explain(png_bytes(), "m", colour="red")  # type: ignore[call-arg]
    assert state.requests == []


def test_overlay_and_gif() -> None:
    ex = codec.to_explanation(make_response("float32"))
    img = png_bytes(20, 30)
    over = ex.overlay("cam", img, target="A")
    assert over.size == (30, 20) and over.mode == "RGB"
    original = np.asarray(Image.open(io.BytesIO(img)).convert("RGB"))
    got = np.asarray(over)
    # Outside the centre-crop square (columns 0-4 and 25-29) the image is untouched; inside, the hot spot shows.
    np.testing.assert_array_equal(got[:, :5], original[:, :5])
    np.testing.assert_array_equal(got[:, 25:], original[:, 25:])
    assert np.abs(got[:, 5:25].astype(int) - original[:, 5:25]).max() > 20
    # A map that is all negative has nothing to show once negatives are cast to zero.
    flat = cx.TargetResult("A", heatmaps={"cam": -np.ones((H, W), np.float32)}, geometry=ex.geometry)
    np.testing.assert_array_equal(np.asarray(flat.overlay("cam", img)), original)


def test_overlay_is_the_render_package_picture() -> None:
    # One render path: the SDK's overlay of a response map is cxrexplain_render.overlay of the same array
    # through the wire's geometry message, pixel for pixel (the picture the server side and the docs draw).
    raw = arrays()["cam"]
    msg = make_response("float32")
    img = png_bytes(20, 30)
    gray = np.asarray(Image.open(io.BytesIO(img)))
    expected = np.asarray(cxrexplain_render.overlay(gray, raw, geometry=msg.geometry))
    np.testing.assert_array_equal(np.asarray(codec.to_explanation(msg).overlay("cam", img, target="A")), expected)
    # A png response carries the server's display-normalized map; its overlay is the same picture up to the
    # 8-bit quantization of the map.
    png = explain_pb2.Map(height=H, width=W, dtype="png",
                          data=cxrexplain_render.encode_png(cxrexplain_render.normalize_for_display(raw)))
    png_result = cx.TargetResult("A", heatmaps={"cam": codec.decode_map(png)}, normalized={"cam": True},
                                 geometry=cx.Geometry(20, 30, 0, 5, 20, H))
    got = np.asarray(png_result.overlay("cam", img)).astype(int)
    assert np.abs(got - expected).max() <= 2


def test_save_gif(tmp_path: Path) -> None:
    ls = codec.to_explanation(make_response()).results["A"].latent_shift
    assert ls is not None
    path = ls.save_gif(tmp_path / "a.gif")
    with Image.open(path) as gif:
        assert getattr(gif, "n_frames", 1) == 4  # 3 frames forward, then back (bounce) without repeating the ends
        assert gif.size == (W, H)


def test_to_dicom_secondary_capture() -> None:
    pydicom = pytest.importorskip("pydicom")
    pytest.importorskip("highdicom")
    from pydicom.data import get_testdata_file

    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    msg = make_response()
    msg.geometry.CopyFrom(
        explain_pb2.Geometry(original_height=src.Rows, original_width=src.Columns, crop_size=src.Rows, model_size=H)
    )
    sc = codec.to_explanation(msg).to_dicom(src, "rap", target="A")
    assert sc.StudyInstanceUID == src.StudyInstanceUID and sc.PatientID == src.PatientID
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
    assert sc.SeriesInstanceUID != src.SeriesInstanceUID
    assert list(sc.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert "NOT FOR DIAGNOSTIC USE" in sc.ImageComments
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert (sc.Rows, sc.Columns, sc.SamplesPerPixel) == (src.Rows, src.Columns, 3)
    # The one writer's guarantees hold for SDK exports too: the marking burned in, no patient data beyond the link.
    assert sc.BurnedInAnnotation == "YES" and not sc.get("PatientSex")

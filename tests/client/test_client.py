"""The client SDK against real in-process servers (http.server and grpc.server on free loopback ports).

Nothing of the client is mocked: requests travel over sockets, servers record what arrived and answer with
scripted responses built from the wire schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import io
import json
import queue
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
if importlib.util.find_spec("cxrexplain_client") is None:  # not installed: use the source tree
    sys.path.insert(0, str(ROOT / "client"))

import grpc  # noqa: E402
from google.protobuf import json_format  # noqa: E402
from google.rpc import status_pb2  # noqa: E402

import cxrexplain_client as cx  # noqa: E402
import cxrexplain_render  # noqa: E402
from cxrexplain_client import codec  # noqa: E402
from cxrexplain_client._proto import (  # noqa: E402
    explain_pb2,
    inference_pb2,
    inference_pb2_grpc,
    management_pb2,
    management_pb2_grpc,
)
from cxrexplain_client._retry import Outcome, RetryState  # noqa: E402
from cxrexplain_client.cli import main as cli_main  # noqa: E402

FAST = cx.RetryPolicy(retries=3, initial_backoff=0.02, max_backoff=0.05)
H = W = 8


# ------------------------------------------------------------------------------------------------ fixtures
def _map(arr: np.ndarray, dtype: str) -> explain_pb2.Map:
    if dtype == "png":
        img = Image.fromarray(np.round(np.clip(arr, 0, 1) * 255).astype(np.uint8), mode="L")
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return explain_pb2.Map(height=arr.shape[0], width=arr.shape[1], dtype="png", data=buf.getvalue())
    data = np.asarray(arr, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
    return explain_pb2.Map(height=arr.shape[0], width=arr.shape[1], dtype=dtype, data=data)


def _arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "cam": rng.normal(size=(H, W)).astype(np.float32),
        "rap": rng.normal(size=(H, W)).astype(np.float32),
        "frames": rng.uniform(size=(3, H, W)).astype(np.float32),
    }


def make_response(dtype: str = "float32", seed: int = 0) -> explain_pb2.ExplainResponse:
    """A full ExplainResponse: 2 findings, targets A and B with cam/rap, latent shift for A."""
    arrs = _arrays(seed)
    if dtype == "png":  # PNG maps are display-normalized
        arrs = {k: np.clip(v, 0, 1) for k, v in arrs.items()}
    msg = explain_pb2.ExplainResponse(
        request_id="req-1", model_name="m", model_version="1.0", not_for_diagnostic_use=True
    )
    msg.findings.add(label="A", probability=0.8, operating_point=0.5, positive=True)
    msg.findings.add(label="B", probability=0.3, operating_point=0.4, positive=False)
    msg.targets.extend(["A", "B"])
    for target in ("A", "B"):
        for method in ("cam", "rap"):
            msg.heatmaps.add(method=method, target=target, map=_map(arrs[method], dtype))
    ls = msg.latent_shifts.add(target="A", reconstruction_gap=0.01, map_kind="max", direction="logit")
    ls.lambdas.extend([-20.0, 0.0, 5.0])
    ls.frame_probabilities.extend([0.2, 0.8, 0.9])
    ls.frames.extend([_map(f, "float32" if dtype == "png" else dtype) for f in arrs["frames"]])
    msg.geometry.CopyFrom(
        explain_pb2.Geometry(original_height=20, original_width=30, crop_top=0, crop_left=5, crop_size=20, model_size=H)
    )
    msg.timings_ms["total"] = 12.5
    return msg


def make_description() -> explain_pb2.ExplainResponse:
    msg = explain_pb2.ExplainResponse(request_id="d-1", model_name="m", model_version="1.0")
    d = msg.description
    d.name, d.version, d.architecture = "m", "1.0", "densenet121"
    d.labels.extend(["A", "B"])
    d.operating_points.extend([0.5, 0.4])
    d.input_spec.channels, d.input_spec.size = 1, 224
    d.input_spec.value_range.extend([-1024.0, 1024.0])
    d.methods.extend(["cam", "rap"])
    d.has_autoencoder = True
    d.intended_use = "research"
    return msg


def png_bytes(h: int = 20, w: int = 30) -> bytes:
    arr = (np.arange(h * w).reshape(h, w) % 256).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, mode="L").save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- HTTP server
RESET = 0  # a scripted "status" that resets the connection instead of answering
@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class HttpState:
    script: list[tuple[int, dict[str, str], bytes]] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)
    default: explain_pb2.ExplainResponse = field(default_factory=make_response)
    token: str | None = None
    delay: float = 0.0


def _handler(state: HttpState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # keep test output quiet
            pass

        def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            state.requests.append(Recorded(self.command, self.path, dict(self.headers.items()), body))
            if state.delay:
                time.sleep(state.delay)
            if state.token is not None and self.headers.get("Authorization") != f"Bearer {state.token}":
                # TorchServe 0.12 answers a bad token with 400 + InvalidKeyException
                err = {"code": 400, "type": "InvalidKeyException", "message": "Token Authorization failed."}
                return self._answer(400, {"Content-Type": "application/json"}, json.dumps(err).encode())
            if state.script and state.script[0][0] == RESET:
                state.script.pop(0)  # drop the connection without an answer, as a dying frontend does
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
                self.close_connection = True
                return None
            if state.script:
                return self._answer(*state.script.pop(0))
            if self.path == "/ping":
                return self._answer(200, {"Content-Type": "application/json"}, b'{"status": "Healthy"}')
            if self.path.startswith("/models"):
                token = 0 if "next_page_token=0" in self.path else 1
                models = [{"modelName": f"m{token}", "modelUrl": f"m{token}.mar"}]
                doc: dict[str, Any] = {"models": models}
                if token == 0:
                    doc["nextPageToken"] = "1"
                return self._answer(200, {"Content-Type": "application/json"}, json.dumps(doc).encode())
            msg = state.default
            if "describe=true" in (self.headers.get(codec.OPTIONS_HEADER) or ""):
                msg = make_description()
            if self.headers.get("Accept") == codec.PROTOBUF_MEDIA_TYPE:
                return self._answer(200, {"Content-Type": codec.PROTOBUF_MEDIA_TYPE}, msg.SerializeToString())
            text = json_format.MessageToJson(msg, preserving_proto_field_name=True)
            return self._answer(200, {"Content-Type": "application/json"}, text.encode())

        do_GET = _handle
        do_POST = _handle

        def finish(self) -> None:
            with contextlib.suppress(OSError, ValueError):  # the connection may have been reset on purpose
                super().finish()

    return Handler


@pytest.fixture
def http_server() -> Iterator[tuple[str, HttpState]]:
    state = HttpState()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()


def _header_options(rec: Recorded) -> dict[str, str]:
    """The options of a recorded REST request: URL-encoded in the options header, each key once."""
    header = next(v for k, v in rec.headers.items() if k.lower() == codec.OPTIONS_HEADER.lower())
    pairs = urllib.parse.parse_qsl(header, keep_blank_values=True, strict_parsing=True)
    assert len({k for k, _ in pairs}) == len(pairs)
    return dict(pairs)


# ----------------------------------------------------------------------------------------------- gRPC server
class Inference(inference_pb2_grpc.InferenceAPIsServiceServicer):
    def __init__(self) -> None:
        self.calls: list[tuple[str, inference_pb2.PredictionsRequest | None, dict[str, str]]] = []
        self.unavailable_first = 0
        self.reply: bytes = make_response().SerializeToString()
        self.abort: tuple[Any, str] | None = None
        self.stream_parts: list[inference_pb2.PredictionResponse] = []
        self.half_closed = threading.Event()
        self.script: list[tuple[Any, str]] = []  # statuses the next calls fail with, in order
        self.token: str | None = None

    def _record(self, name: str, req: Any, context: Any) -> None:
        self.calls.append((name, req, dict(context.invocation_metadata())))

    def Ping(self, request: Any, context: Any) -> inference_pb2.TorchServeHealthResponse:
        self._record("Ping", None, context)
        return inference_pb2.TorchServeHealthResponse(health='{\n  "status": "Healthy"\n}')

    def Predictions(self, request: Any, context: Any) -> inference_pb2.PredictionResponse:
        self._record("Predictions", request, context)
        if self.token is not None and self.calls[-1][2].get("authorization") != f"Bearer {self.token}":
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "Token Authorization failed.")  # as TorchServe 0.12
        if self.script:
            context.abort(*self.script.pop(0))
        if len(self.calls) <= self.unavailable_first:
            context.abort(grpc.StatusCode.UNAVAILABLE, "worker busy")
        if self.abort is not None:
            context.abort(*self.abort)
        return inference_pb2.PredictionResponse(prediction=self.reply)

    def StreamPredictions2(self, request_iterator: Any, context: Any) -> Iterator[inference_pb2.PredictionResponse]:
        # Like TorchServe: each request's parts are sent as they are ready, and the response stream ends
        # as soon as the client half-closes, whether or not parts are still pending.
        out: queue.Queue[inference_pb2.PredictionResponse | None] = queue.Queue()

        def reader() -> None:
            try:
                for req in request_iterator:
                    self._record("StreamPredictions2", req, context)

                    def produce() -> None:
                        for part in self.stream_parts:
                            time.sleep(0.03)
                            out.put(part)

                    threading.Thread(target=produce, daemon=True).start()
            except grpc.RpcError:  # the client cancelled instead of closing its side
                out.put(None)
                return
            self.half_closed.set()
            out.put(None)

        threading.Thread(target=reader, daemon=True).start()
        while (item := out.get()) is not None:
            yield item


class Management(management_pb2_grpc.ManagementAPIsServiceServicer):
    def __init__(self) -> None:
        self.requests: list[management_pb2.ListModelsRequest] = []

    def ListModels(self, request: Any, context: Any) -> management_pb2.ManagementResponse:
        self.requests.append(request)
        if request.limit == 0:  # TorchServe 0.12 lists nothing without a limit
            return management_pb2.ManagementResponse(msg='{"models": []}')
        return management_pb2.ManagementResponse(msg=json.dumps({"models": [{"modelName": "g", "modelUrl": "g.mar"}]}))


@pytest.fixture
def grpc_server() -> Iterator[tuple[str, Inference, Management]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    inference, management = Inference(), Management()
    inference_pb2_grpc.add_InferenceAPIsServiceServicer_to_server(inference, server)
    management_pb2_grpc.add_ManagementAPIsServiceServicer_to_server(management, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", inference, management
    finally:
        server.stop(grace=None)


def _stream_parts() -> list[inference_pb2.PredictionResponse]:
    full = make_response()
    parts = []
    p = explain_pb2.ExplainResponse(
        request_id="req-1", model_name="m", model_version="1.0", not_for_diagnostic_use=True, part="findings"
    )
    p.findings.extend(full.findings)
    p.targets.extend(full.targets)
    p.geometry.CopyFrom(full.geometry)
    parts.append(p)
    for hm in full.heatmaps:
        q = explain_pb2.ExplainResponse(request_id="req-1", part="heatmap")
        q.heatmaps.append(hm)
        parts.append(q)
    r = explain_pb2.ExplainResponse(request_id="req-1", part="latent_shift")
    r.latent_shifts.extend(full.latent_shifts)
    parts.append(r)
    parts.append(explain_pb2.ExplainResponse(request_id="req-1", part="end", last=True))
    return [inference_pb2.PredictionResponse(prediction=m.SerializeToString()) for m in parts]


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
    arrs = _arrays()
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


# Every request option the server takes, one value each, as the SDK's keyword arguments, and the text each must
# become on the wire (REST options header, gRPC input map).
EVERY_OPTION: dict[str, Any] = {
    "top_k": 2,
    "heatmap_format": "png",
    "heatmap_dtype": "float32",
    "frames": 6,
    "latent_shift_map": "minmax",
    "direction": "sigmoid",
    "gif": True,
    "steps": 8,
    "accept": "application/json",
    "request_id": "study-7.a",
    "value_range": (0.0, 4095.0),
    "method_options": {
        "gradcam": {"layer": "features.28"},
        "integrated_gradients": {"internal_batch_size": 4, "integration": "riemann_trapezoid"},
        "latent_shift": {"search": "exhaustive", "max_lambda": 500.0},
        "lrp": {"alpha": 2, "beta": 1},
    },
}
EVERY_OPTION_ON_THE_WIRE = {
    "methods": "gradcam,integrated_gradients,latent_shift,lrp",
    "targets": "A",
    "top_k": "2",
    "heatmap_format": "png",
    "heatmap_dtype": "float32",
    "frames": "6",
    "latent_shift_map": "minmax",
    "direction": "sigmoid",
    "gif": "true",
    "steps": "8",
    "accept": "application/json",
    "request_id": "study-7.a",
    "value_range": "0.0,4095.0",
    "gradcam.layer": "features.28",
    "integrated_gradients.internal_batch_size": "4",
    "integrated_gradients.integration": "riemann_trapezoid",
    "latent_shift.search": "exhaustive",
    "latent_shift.max_lambda": "500.0",
    "lrp.alpha": "2.0",
    "lrp.beta": "1.0",
}
EVERY_METHOD = ["gradcam", "integrated_gradients", "latent_shift", "lrp"]


def test_sdk_sends_every_option_the_server_takes(
    http_server: tuple[str, HttpState], grpc_server: tuple[str, Inference, Management]
) -> None:
    url, state = http_server
    target, inference, _ = grpc_server
    with cx.ExplainClient(url, target, retry_policy=FAST) as client:
        client.explain(png_bytes(), "m", EVERY_METHOD, "A", **EVERY_OPTION)
        client.explain(png_bytes(), "m", EVERY_METHOD, "A", transport="grpc", **EVERY_OPTION)
    assert _header_options(state.requests[-1]) == EVERY_OPTION_ON_THE_WIRE
    _, req, _ = inference.calls[-1]
    assert req is not None
    assert {k: v.decode() for k, v in req.input.items() if k != "data"} == EVERY_OPTION_ON_THE_WIRE

    async def run() -> None:
        async with cx.AsyncExplainClient(url, target, retry_policy=FAST) as aclient:
            await aclient.explain(png_bytes(), "m", EVERY_METHOD, "A", **EVERY_OPTION)

    asyncio.run(run())
    assert _header_options(state.requests[-1]) == EVERY_OPTION_ON_THE_WIRE


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
    raw = _arrays()["cam"]
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


# --------------------------------------------------------------------------------------------------- REST
def test_rest_explain_sends_raw_body_with_options_header_and_parses_binary(http_server: tuple[str, HttpState]) -> None:
    url, state = http_server
    img = png_bytes()
    with cx.ExplainClient(url, token="tok", retry_policy=FAST) as client:
        ex = client.explain(img, "m", methods=["cam", "rap"], targets=["A", 1], heatmap_dtype="float32", frames=5)
    assert set(ex.results) == {"A", "B"}
    rec = state.requests[-1]
    assert rec.method == "POST" and rec.path == "/predictions/m"
    assert rec.headers["Authorization"] == "Bearer tok"
    assert rec.headers["Accept"] == codec.PROTOBUF_MEDIA_TYPE
    assert rec.headers["Content-Type"] == "image/png" and rec.body == img
    assert _header_options(rec) == {"methods": "cam,rap", "targets": "A,1", "heatmap_dtype": "float32",
                                    "frames": "5"}


def test_rest_predict_sends_raw_body_and_array_as_npy(http_server: tuple[str, HttpState]) -> None:
    url, state = http_server
    with cx.ExplainClient(url, retry_policy=FAST) as client:
        client.predict(png_bytes(), "m", version="2.0")
        arr = np.arange(12, dtype=np.uint16).reshape(3, 4)
        client.predict(arr, "m")
    first, second = state.requests[-2:]
    assert first.path == "/predictions/m/2.0" and first.headers["Content-Type"] == "image/png"
    assert first.body == png_bytes() and "Authorization" not in first.headers
    assert second.headers["Content-Type"] == "application/x-npy"
    np.testing.assert_array_equal(np.load(io.BytesIO(second.body)), arr)


def test_pydicom_dataset_is_sent_as_part10(http_server: tuple[str, HttpState]) -> None:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    url, state = http_server
    with cx.ExplainClient(url, retry_policy=FAST) as client:
        client.predict(src, "m")
    rec = state.requests[-1]
    assert rec.headers["Content-Type"] == "application/dicom" and rec.body[128:132] == b"DICM"
    back = pydicom.dcmread(io.BytesIO(rec.body))
    assert back.SOPInstanceUID == src.SOPInstanceUID
    np.testing.assert_array_equal(back.pixel_array, src.pixel_array)


def test_rest_parses_json_answers(http_server: tuple[str, HttpState]) -> None:
    url, state = http_server
    body = json_format.MessageToJson(make_response("float16"), preserving_proto_field_name=True).encode()
    state.script.append((200, {"Content-Type": "application/json"}, body))
    with cx.ExplainClient(url, retry_policy=FAST) as client:
        ex = client.explain(png_bytes(), "m", methods="cam")
    expected = _arrays()["cam"].astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(ex.results["A"].heatmaps["cam"], expected)


def _handler_error(code: int, kind: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message, "request_id": f"r-{code}", "type": kind}}).encode()


def _ts_error(code: int, kind: str, message: str) -> bytes:
    return json.dumps({"code": code, "type": kind, "message": message}).encode()


JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("status", "body", "expected", "text"),
    [
        (400, _handler_error(400, "invalid_input", "cannot decode the image"), cx.InvalidInput, "cannot decode"),
        (415, _handler_error(415, "unsupported_media_type", "GIF is not supported"), cx.InvalidInput, "GIF"),
        (422, _handler_error(422, "unknown_label", "unknown label 'Foo'"), cx.InvalidInput, "Foo"),
        (400, _ts_error(400, "InvalidKeyException", "Token Authorization failed."), cx.Unauthorized, "Token"),
        (401, b"", cx.Unauthorized, "401"),
        (404, _ts_error(404, "ModelNotFoundException", "Model not found: m"), cx.ModelNotFound, "Model not found"),
        (404, b"", cx.ModelNotFound, "404"),
        (413, b"", cx.InvalidInput, "413"),
        (503, _ts_error(503, "ServiceUnavailableException", "no worker"), cx.ServerUnavailable, "no worker"),
        (503, b"", cx.ServerUnavailable, "503"),
    ],
)
def test_rest_error_mapping(
    http_server: tuple[str, HttpState], status: int, body: bytes, expected: type[cx.CxrExplainClientError], text: str
) -> None:
    import httpx

    url, state = http_server
    state.script.append((status, JSON if body else {}, body))
    with cx.ExplainClient(url, retries=0) as client, pytest.raises(expected) as info:
        client.explain(png_bytes(), "m", methods="cam")
    assert text in str(info.value)
    assert info.value.status == status
    assert isinstance(info.value.__cause__, httpx.HTTPStatusError)
    if b'"request_id"' in body:
        assert info.value.request_id == f"r-{status}"


def test_rest_500_is_the_base_error(http_server: tuple[str, HttpState]) -> None:
    url, state = http_server
    state.script.append((500, JSON, _ts_error(500, "InternalServerError", "worker died")))
    with cx.ExplainClient(url, retries=0) as client, pytest.raises(cx.CxrExplainClientError) as info:
        client.predict(png_bytes(), "m")
    assert type(info.value) is cx.CxrExplainClientError and "worker died" in str(info.value)


def test_rest_binary_error_body(http_server: tuple[str, HttpState]) -> None:
    url, state = http_server
    msg = explain_pb2.ExplainResponse(request_id="r-bin")
    msg.error.CopyFrom(explain_pb2.Error(code=422, message="latent_shift needs an autoencoder", type="autoencoder"))
    state.script.append((422, {"Content-Type": codec.PROTOBUF_MEDIA_TYPE}, msg.SerializeToString()))
    with cx.ExplainClient(url, retries=0) as client, pytest.raises(cx.InvalidInput) as info:
        client.explain(png_bytes(), "m", methods="latent_shift")
    assert info.value.request_id == "r-bin" and "autoencoder" in str(info.value)


def test_rest_retries_503_then_succeeds(http_server: tuple[str, HttpState]) -> None:
    url, state = http_server
    state.script.extend([(503, JSON, _ts_error(503, "ServiceUnavailableException", "busy"))] * 2)
    with cx.ExplainClient(url, retry_policy=FAST) as client:
        ex = client.explain(png_bytes(), "m", methods="cam")
    assert ex.request_id == "req-1"
    assert len(state.requests) == 3  # two 503s, then the answer


def test_rest_does_not_retry_a_model_part_the_server_could_not_load(http_server: tuple[str, HttpState]) -> None:
    # The handler's 503 for a latent_shift whose autoencoder failed to load: waiting does not cure it.
    url, state = http_server
    body = _handler_error(503, "autoencoder_unavailable", "latent_shift is unavailable on this server")
    state.script.extend([(503, JSON, body)] * 3)
    with cx.ExplainClient(url, retry_policy=FAST) as client, pytest.raises(
            cx.ServerUnavailable, match="latent_shift is unavailable") as info:
        client.explain(png_bytes(), "m", methods="latent_shift")
    assert info.value.error_type == "autoencoder_unavailable" and len(state.requests) == 1


def test_rest_gives_up_after_retries(http_server: tuple[str, HttpState]) -> None:
    url, state = http_server
    state.script.extend([(503, {}, b"")] * 10)
    policy = cx.RetryPolicy(retries=2, initial_backoff=0.01, max_backoff=0.02)
    with cx.ExplainClient(url, retry_policy=policy) as client, pytest.raises(cx.ServerUnavailable):
        client.predict(png_bytes(), "m")
    assert len(state.requests) == 3


@pytest.mark.parametrize("status", [400, 404, 422])
def test_rest_does_not_retry_client_errors(http_server: tuple[str, HttpState], status: int) -> None:
    url, state = http_server
    state.script.extend([(status, {}, b"")] * 3)
    with cx.ExplainClient(url, retry_policy=FAST) as client, pytest.raises(cx.CxrExplainClientError):
        client.predict(png_bytes(), "m")
    assert len(state.requests) == 1


def test_rest_timeout_and_connection_refused(http_server: tuple[str, HttpState]) -> None:
    url, state = http_server
    state.delay = 1.0
    with cx.ExplainClient(url, timeout=0.2, retries=0) as client, pytest.raises(cx.DeadlineExceeded):
        client.predict(png_bytes(), "m")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    with cx.ExplainClient(f"http://127.0.0.1:{free}", retries=0) as client, pytest.raises(cx.ServerUnavailable):
        client.health()


def test_rest_health_models_describe_and_token_file(http_server: tuple[str, HttpState], tmp_path: Path) -> None:
    url, state = http_server
    key_file = tmp_path / "key_file.json"
    key_file.write_text(
        json.dumps(
            {
                "management": {"key": "mgmt-key", "expiration time": "2099"},
                "inference": {"key": "inf-key", "expiration time": "2099"},
                "API": {"key": "api"},
            }
        )
    )
    state.token = "inf-key"
    with cx.ExplainClient(url, token_file=key_file, management_url=url, retry_policy=FAST) as client:
        assert client.health().healthy
        desc = client.describe("m")
        state.token = "mgmt-key"
        models = client.models(limit=1)
    assert desc.labels == ["A", "B"] and desc.has_autoencoder and desc.input_spec["size"] == 224
    assert [m.name for m in models] == ["m0", "m1"]  # both pages
    describe_req = state.requests[1]
    assert _header_options(describe_req) == {"describe": "true"} and describe_req.body == b""
    state.token = "other"
    with cx.ExplainClient(url, token="wrong", retries=0) as client, pytest.raises(cx.Unauthorized):
        client.health()


# --------------------------------------------------------------------------------------------------- gRPC
def test_grpc_retries_unavailable_in_the_sdk(grpc_server: tuple[str, Inference, Management]) -> None:
    target, inference, _ = grpc_server
    inference.unavailable_first = 2
    with cx.ExplainClient(grpc_target=target, token="tok", retry_policy=FAST, transport="grpc") as client:
        ex = client.explain(png_bytes(), "m", methods=["cam"], targets="positive")
    assert ex.request_id == "req-1"
    assert [c[0] for c in inference.calls] == ["Predictions"] * 3
    name, req, metadata = inference.calls[-1]
    assert req is not None and req.model_name == "m"
    request_id = req.input["request_id"]  # the SDK's id for the call, the same on every attempt
    assert len(request_id) == 32 and {c[1].input["request_id"] for c in inference.calls} == {request_id}  # type: ignore[union-attr]
    assert dict(req.input) == {"data": png_bytes(), "methods": b"cam", "targets": b"positive", "request_id": request_id}
    assert metadata["authorization"] == "Bearer tok"


def test_grpc_without_retries_raises_unavailable(grpc_server: tuple[str, Inference, Management]) -> None:
    target, inference, _ = grpc_server
    inference.unavailable_first = 1
    with cx.ExplainClient(grpc_target=target, retries=0, transport="grpc") as client:
        with pytest.raises(cx.ServerUnavailable) as info:
            client.predict(png_bytes(), "m")
    assert info.value.grpc_code == "UNAVAILABLE" and isinstance(info.value.__cause__, grpc.RpcError)
    assert len(inference.calls) == 1


@pytest.mark.parametrize(
    ("code", "details", "expected"),
    [
        (
            "INTERNAL",
            "Model not found: m\norg.pytorch.serve.archive.model.ModelNotFoundException",
            cx.ModelNotFound,
        ),
        ("PERMISSION_DENIED", "Token Authorization failed.", cx.Unauthorized),
        ("INVALID_ARGUMENT", "bad input", cx.InvalidInput),
        ("FAILED_PRECONDITION", "precondition", cx.InvalidInput),
        ("NOT_FOUND", "no such model", cx.ModelNotFound),
        ("RESOURCE_EXHAUSTED", "queue full", cx.ServerUnavailable),
    ],
)
def test_grpc_status_mapping(
    grpc_server: tuple[str, Inference, Management], code: str, details: str, expected: type[cx.CxrExplainClientError]
) -> None:
    target, inference, _ = grpc_server
    inference.abort = (getattr(grpc.StatusCode, code), details)
    with cx.ExplainClient(grpc_target=target, retries=0, transport="grpc") as client:
        with pytest.raises(expected) as info:
            client.predict(png_bytes(), "m")
    assert info.value.grpc_code == code

    async def run() -> None:
        async with cx.AsyncExplainClient(grpc_target=target, retries=0, transport="grpc") as aclient:
            await aclient.predict(png_bytes(), "m")

    with pytest.raises(expected) as async_info:  # the async client maps errors with the same code
        asyncio.run(run())
    assert type(async_info.value) is type(info.value) and str(async_info.value) == str(info.value)


def test_grpc_payload_error_field(grpc_server: tuple[str, Inference, Management]) -> None:
    target, inference, _ = grpc_server
    msg = explain_pb2.ExplainResponse(request_id="r-g")
    msg.error.CopyFrom(explain_pb2.Error(code=422, message="unary call asked to stream", type="invalid_option"))
    inference.reply = msg.SerializeToString()
    with cx.ExplainClient(grpc_target=target, retries=0) as client:
        with pytest.raises(cx.InvalidInput) as info:
            client.explain(png_bytes(), "m", methods="cam", transport="grpc")
    assert info.value.status == 422 and info.value.request_id == "r-g"


def test_grpc_health_models_describe(grpc_server: tuple[str, Inference, Management]) -> None:
    target, inference, management = grpc_server
    inference.reply = make_description().SerializeToString()
    with cx.ExplainClient(grpc_target=target, grpc_management_target=target, transport="grpc") as client:
        assert client.health().healthy
        assert [m.name for m in client.models()] == ["g"]
        desc = client.describe("m")
    assert management.requests[0].limit > 0
    assert desc.architecture == "densenet121"
    describe_input = dict(inference.calls[-1][1].input)  # type: ignore[union-attr]
    assert describe_input == {"describe": b"true", "request_id": describe_input["request_id"]}
    assert len(describe_input["request_id"]) == 32


def test_grpc_stream_parts_in_order(grpc_server: tuple[str, Inference, Management]) -> None:
    target, inference, _ = grpc_server
    inference.stream_parts = _stream_parts()
    with cx.ExplainClient(grpc_target=target, token="tok") as client:
        parts = list(client.stream_explain(png_bytes(), "m", methods=["cam", "rap", "latent_shift"], frames=3))
    assert [p.kind for p in parts] == ["findings"] + ["heatmap"] * 4 + ["latent_shift", "end"]
    assert parts[-1].last and not any(p.last for p in parts[:-1])
    assert [f.label for f in parts[0].findings] == ["A", "B"]
    assert [(t, m) for p in parts[1:5] for t, m, _ in p.heatmaps] == [
        ("A", "cam"),
        ("A", "rap"),
        ("B", "cam"),
        ("B", "rap"),
    ]
    final = parts[-1].explanation
    unary = codec.to_explanation(make_response())
    assert final.targets == ["A", "B"]
    for t in ("A", "B"):
        for m in ("cam", "rap"):
            np.testing.assert_array_equal(final.results[t].heatmaps[m], unary.results[t].heatmaps[m])
    got_ls, want_ls = final.results["A"].latent_shift, unary.results["A"].latent_shift
    assert got_ls is not None and want_ls is not None
    np.testing.assert_array_equal(got_ls.frames, want_ls.frames)
    _, req, metadata = inference.calls[0]
    # to the streaming twin, with a sequence id (TorchServe 0.12 refuses a stream without one)
    assert req is not None and req.input["stream"] == b"true" and req.model_name == "m-stream"
    assert len(req.sequence_id) == 32
    assert metadata["authorization"] == "Bearer tok"
    assert inference.half_closed.wait(2.0)  # the client closed its side after the last part


def test_grpc_stream_error_status(grpc_server: tuple[str, Inference, Management]) -> None:
    target, inference, _ = grpc_server
    status = status_pb2.Status(code=13, message="Model not found: m")  # how StreamPredictions2 reports errors
    inference.stream_parts = [inference_pb2.PredictionResponse(status=status)]
    with cx.ExplainClient(grpc_target=target) as client, pytest.raises(cx.ModelNotFound):
        list(client.stream_explain(png_bytes(), "m"))


# ------------------------------------------------------------------------------ retries: no call lost (#10)
# What TorchServe 0.12 answers when the worker handling the call dies (seen against a real server): 507 when the
# frontend has already seen the worker exit with 137 (SIGKILL), else 500; over gRPC RESOURCE_EXHAUSTED / INTERNAL.
WORKER_DIED_REST = (507, JSON, _ts_error(507, "InternalServerException", "Worker died."))
WORKER_DIED_REST_500 = (500, JSON, _ts_error(500, "InternalServerException", "Worker died."))
WORKER_DIED_GRPC = (grpc.StatusCode.RESOURCE_EXHAUSTED, "Worker died.\norg.pytorch.serve.http.InternalServerException")
WORKER_DIED_GRPC_500 = (grpc.StatusCode.INTERNAL, "Worker died.\norg.pytorch.serve.http.InternalServerException")
UNAVAILABLE_GRPC = (grpc.StatusCode.UNAVAILABLE, "Model cxr has no worker to serve inference request.")
FAST_BUDGET = cx.RetryPolicy(initial_backoff=0.01, max_backoff=0.02, budget=2.0)


def _explain(mode: str, transport: str = "rest", **kwargs: Any) -> cx.Explanation:
    """One explain call through the sync or the async client built with ``kwargs``."""
    if mode == "sync":
        with cx.ExplainClient(**kwargs) as client:
            return client.explain(png_bytes(), "m", methods="cam", transport=transport)

    async def run() -> cx.Explanation:
        async with cx.AsyncExplainClient(**kwargs) as client:
            return await client.explain(png_bytes(), "m", methods="cam", transport=transport)

    return asyncio.run(run())


def _request_ids(state: HttpState) -> list[str | None]:
    return [next((v for k, v in r.headers.items() if k.lower() == "x-request-id"), None) for r in state.requests]


def _key_file(path: Path, inference: str) -> Path:
    path.write_text(json.dumps({"management": {"key": "mgmt"}, "inference": {"key": inference}, "API": {"key": "a"}}))
    return path


def test_default_policy_covers_30_s_of_unavailability() -> None:
    now = [0.0]
    state = RetryState(cx.RetryPolicy(), clock=lambda: now[0])
    waits = []
    while (delay := state.next_delay(Outcome.UNAVAILABLE)) is not None:
        waits.append(delay)
        now[0] += delay + 0.01  # each attempt is refused at once
    assert now[0] >= 30.0  # a restarting frontend (about 30 s) is ridden out
    assert max(waits) <= cx.RetryPolicy().max_backoff  # and found again within one short wait once it is back
    assert cx.RetryPolicy(retries=0).enabled is False


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_rest_retries_503_507_and_reset_with_one_request_id(http_server: tuple[str, HttpState], mode: str) -> None:
    url, state = http_server
    state.script.extend([(503, {}, b""), (RESET, {}, b""), WORKER_DIED_REST, (RESET, {}, b"")])
    ex = _explain(mode, url=url, retry_policy=FAST_BUDGET)
    assert ex.request_id == "req-1"
    state.script.append(WORKER_DIED_REST_500)  # the other form of a worker death
    _explain(mode, url=url, retry_policy=FAST_BUDGET)
    assert len(state.requests) == 7
    ids = _request_ids(state)[:5]
    assert len(ids) == 5 and ids[0] is not None and len(ids[0]) == 32 and set(ids) == {ids[0]}
    assert len({r.body for r in state.requests}) == 1  # the same request every time


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_a_server_that_starts_late_is_waited_for(mode: str, transport: str) -> None:
    with socket.socket() as s:  # a port nothing listens on yet: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    state, inference = HttpState(), Inference()
    started: list[Any] = []

    def start_later() -> None:
        time.sleep(0.3)  # the frontend restarting
        if transport == "rest":
            http = ThreadingHTTPServer(("127.0.0.1", port), _handler(state))
            threading.Thread(target=http.serve_forever, daemon=True).start()
            started.append(http)
        else:
            server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
            inference_pb2_grpc.add_InferenceAPIsServiceServicer_to_server(inference, server)
            server.add_insecure_port(f"127.0.0.1:{port}")
            server.start()
            started.append(server)

    threading.Thread(target=start_later, daemon=True).start()
    try:
        ex = _explain(mode, transport, url=f"http://127.0.0.1:{port}", grpc_target=f"127.0.0.1:{port}",
                      retry_policy=FAST_BUDGET)
    finally:
        time.sleep(0.35)
        for server in started:
            if isinstance(server, ThreadingHTTPServer):
                server.shutdown()
                server.server_close()
            else:
                server.stop(grace=None)
    assert ex.request_id == "req-1"
    assert len(state.requests if transport == "rest" else inference.calls) == 1  # refusals never reached it


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_rest_worker_death_is_retried_once(http_server: tuple[str, HttpState], mode: str) -> None:
    url, state = http_server
    state.script.extend([WORKER_DIED_REST, (503, {}, b""), WORKER_DIED_REST])  # a poison image, twice deadly
    with pytest.raises(cx.ServerUnavailable) as info:
        _explain(mode, url=url, retry_policy=FAST_BUDGET)
    assert info.value.status == 507 and "Worker died" in str(info.value)
    assert len(state.requests) == 3  # the second worker death ends the call
    assert isinstance(info.value.__cause__, Exception)
    state.requests.clear()
    state.script.extend([WORKER_DIED_REST_500, WORKER_DIED_REST_500])
    with pytest.raises(cx.ServerUnavailable) as second:
        _explain(mode, url=url, retry_policy=FAST_BUDGET)
    assert second.value.status == 500 and len(state.requests) == 2


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_retry_budget_stops_retrying(
    http_server: tuple[str, HttpState], grpc_server: tuple[str, Inference, Management], mode: str, transport: str
) -> None:
    url, state = http_server
    target, inference, _ = grpc_server
    state.script.extend([(503, {}, b"")] * 1000)
    inference.unavailable_first = 1000
    policy = cx.RetryPolicy(initial_backoff=0.02, max_backoff=0.05, budget=0.3)
    start = time.monotonic()
    with pytest.raises(cx.ServerUnavailable):
        _explain(mode, transport, url=url, grpc_target=target, retry_policy=policy)
    elapsed = time.monotonic() - start
    attempts = len(state.requests) if transport == "rest" else len(inference.calls)
    assert 0.2 < elapsed < 1.0 and 4 <= attempts <= 30  # retried for the budget, then no more


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_grpc_retries_unavailable_and_a_dead_worker_with_one_request_id(
    grpc_server: tuple[str, Inference, Management], mode: str
) -> None:
    target, inference, _ = grpc_server
    inference.script.extend([UNAVAILABLE_GRPC, WORKER_DIED_GRPC, (grpc.StatusCode.UNAVAILABLE, "restarting")])
    ex = _explain(mode, "grpc", grpc_target=target, retry_policy=FAST_BUDGET)
    assert ex.request_id == "req-1"
    ids = {c[1].input["request_id"] for c in inference.calls}  # type: ignore[union-attr]
    assert len(inference.calls) == 4 and len(ids) == 1 and len(ids.pop()) == 32
    inference.script.append(WORKER_DIED_GRPC_500)
    _explain(mode, "grpc", grpc_target=target, retry_policy=FAST_BUDGET)
    assert len(inference.calls) == 6


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_grpc_worker_death_is_retried_once_and_a_full_queue_not_at_all(
    grpc_server: tuple[str, Inference, Management], mode: str
) -> None:
    target, inference, _ = grpc_server
    inference.script.extend([WORKER_DIED_GRPC, WORKER_DIED_GRPC_500])
    with pytest.raises(cx.ServerUnavailable) as info:
        _explain(mode, "grpc", grpc_target=target, retry_policy=FAST_BUDGET)
    assert info.value.status == 500 and info.value.grpc_code == "INTERNAL"
    assert len(inference.calls) == 2 and isinstance(info.value.__cause__, grpc.RpcError)
    inference.calls.clear()
    inference.script.append((grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full"))  # load, not a dead worker
    with pytest.raises(cx.ServerUnavailable) as full:
        _explain(mode, "grpc", grpc_target=target, retry_policy=FAST_BUDGET)
    assert full.value.status == 429 and len(inference.calls) == 1


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_rest_refused_key_rereads_the_token_file_once(
    http_server: tuple[str, HttpState], tmp_path: Path, mode: str
) -> None:
    url, state = http_server
    key_file = _key_file(tmp_path / "key_file.json", "old-key")
    state.token = "new-key"  # the server restarted and wrote new keys

    async def run_async(client: cx.AsyncExplainClient) -> list[cx.Explanation]:
        _key_file(key_file, "new-key")
        first = await client.explain(png_bytes(), "m", methods="cam")
        return [first, await client.explain(png_bytes(), "m", methods="cam")]

    if mode == "sync":
        with cx.ExplainClient(url, token_file=key_file, retry_policy=FAST_BUDGET) as client:
            _key_file(key_file, "new-key")
            answers = [client.explain(png_bytes(), "m", methods="cam") for _ in range(2)]
    else:

        async def run() -> list[cx.Explanation]:
            async with cx.AsyncExplainClient(url, token_file=key_file, retry_policy=FAST_BUDGET) as client:
                return await run_async(client)

        answers = asyncio.run(run())
    assert [a.request_id for a in answers] == ["req-1", "req-1"]
    auth = [r.headers["Authorization"] for r in state.requests]
    assert auth == ["Bearer old-key", "Bearer new-key", "Bearer new-key"]  # re-read once, then kept
    ids = _request_ids(state)
    assert ids[0] == ids[1] != ids[2]  # the retry is the same request; the next call is another

    state.requests.clear()
    state.token = "newer-key"  # refused again, but the key file holds nothing newer: fail after one try
    with pytest.raises(cx.Unauthorized) as info:
        _explain(mode, url=url, token_file=key_file, retry_policy=FAST_BUDGET)
    assert info.value.status == 400 and len(state.requests) == 1


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_grpc_permission_denied_rereads_the_token_file_once(
    grpc_server: tuple[str, Inference, Management], tmp_path: Path, mode: str
) -> None:
    target, inference, _ = grpc_server
    key_file = _key_file(tmp_path / "key_file.json", "old-key")
    inference.token = "new-key"
    if mode == "sync":
        with cx.ExplainClient(grpc_target=target, token_file=key_file, retry_policy=FAST_BUDGET) as client:
            _key_file(key_file, "new-key")
            ex = client.explain(png_bytes(), "m", methods="cam", transport="grpc")
    else:

        async def run() -> cx.Explanation:
            async with cx.AsyncExplainClient(grpc_target=target, token_file=key_file, retry_policy=FAST_BUDGET) as c:
                _key_file(key_file, "new-key")
                return await c.explain(png_bytes(), "m", methods="cam", transport="grpc")

        ex = asyncio.run(run())
    assert ex.request_id == "req-1"
    assert [c[2]["authorization"] for c in inference.calls] == ["Bearer old-key", "Bearer new-key"]
    assert len({c[1].input["request_id"] for c in inference.calls}) == 1  # type: ignore[union-attr]
    inference.calls.clear()
    inference.token = "newer-key"
    with pytest.raises(cx.Unauthorized):
        _explain(mode, "grpc", grpc_target=target, token_file=key_file, retry_policy=FAST_BUDGET)
    assert len(inference.calls) == 1


# -------------------------------------------------------------------------------------------------- async
def test_async_client_rest_grpc_and_stream(
    http_server: tuple[str, HttpState], grpc_server: tuple[str, Inference, Management]
) -> None:
    url, state = http_server
    target, inference, _ = grpc_server
    inference.stream_parts = _stream_parts()
    inference.unavailable_first = 1
    state.script.append((503, {}, b""))

    async def run() -> tuple[cx.Explanation, cx.Explanation, list[cx.StreamPart]]:
        async with cx.AsyncExplainClient(url, target, retry_policy=FAST) as client:
            rest = await client.explain(png_bytes(), "m", methods=["cam"])
            over_grpc = await client.explain(png_bytes(), "m", methods=["cam"], transport="grpc")
            parts = [p async for p in client.stream_explain(png_bytes(), "m", methods=["cam"])]
            with pytest.raises(cx.InvalidInput):
                state.script.append((422, JSON, _handler_error(422, "unknown_label", "no label Z")))
                await client.explain(png_bytes(), "m", targets="Z")
        return rest, over_grpc, parts

    rest, over_grpc, parts = asyncio.run(run())
    assert rest.request_id == over_grpc.request_id == "req-1"
    assert len(state.requests) == 3  # 503, retry, the 422 call
    assert [c[0] for c in inference.calls] == ["Predictions", "Predictions", "StreamPredictions2"]
    assert parts[-1].last and parts[0].kind == "findings"
    assert inference.half_closed.wait(2.0)  # closed its side after the last part, not cancelled


# ---------------------------------------------------------------------------------------------------- CLI
def test_cli_explain_writes_files(http_server: tuple[str, HttpState], tmp_path: Path, capsys: Any) -> None:
    url, state = http_server
    image = tmp_path / "cxr.png"
    image.write_bytes(png_bytes())
    out = tmp_path / "out"
    code = cli_main(
        [
            "explain",
            str(image),
            "--model",
            "m",
            "--methods",
            "cam,rap",
            "--targets",
            "A",
            "--out",
            str(out),
            "--url",
            url,
            "--token",
            "tok",
        ]
    )
    assert code == 0
    fields = _header_options(state.requests[-1])
    assert fields["methods"] == "cam,rap" and fields["targets"] == "A"
    assert state.requests[-1].headers["Authorization"] == "Bearer tok"
    for name in ("A_cam.png", "A_rap.png", "B_cam.png", "A_latent_shift.gif", "summary.json"):
        assert (out / name).exists(), name
    with Image.open(out / "A_cam.png") as over:
        assert over.size == (30, 20)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["not_for_diagnostic_use"] is True and summary["targets"]["A"]["methods"] == ["cam", "rap"]
    printed = json.loads(capsys.readouterr().out)
    assert printed["request_id"] == "req-1" and len(printed["files"]) == 6


def test_cli_sends_every_option_from_its_flags(http_server: tuple[str, HttpState], tmp_path: Path) -> None:
    url, state = http_server
    image = tmp_path / "cxr.png"
    image.write_bytes(png_bytes())
    flags = ["--top-k", "2", "--heatmap-format", "png", "--heatmap-dtype", "float32", "--frames", "6",
             "--latent-shift-map", "minmax", "--direction", "sigmoid", "--gif", "--steps", "8",
             "--accept", "application/json", "--request-id", "study-7.a", "--value-range", "0.0,4095.0"]
    for method, options in EVERY_OPTION["method_options"].items():
        flags += [arg for name, value in options.items() for arg in ("--option", f"{method}.{name}={value}")]
    code = cli_main(["explain", str(image), "--model", "m", "--methods", ",".join(EVERY_METHOD), "--targets", "A",
                     "--out", str(tmp_path / "out"), "--url", url, *flags])
    assert code == 0
    sent = _header_options(state.requests[-1])
    # The CLI hands method option values over as typed text ("2", not 2.0): the server reads both alike.
    assert sent == {**EVERY_OPTION_ON_THE_WIRE, "lrp.alpha": "2", "lrp.beta": "1"}


def test_cli_refuses_a_bad_method_option_before_sending(
    http_server: tuple[str, HttpState], tmp_path: Path, capsys: Any
) -> None:
    url, state = http_server
    for option in ("gradcam.layr=x", "gradcam-layer"):
        code = cli_main(["explain", "any.png", "--model", "m", "--url", url, "--option", option])
        assert code == 2
        assert "gradcam" in capsys.readouterr().err
    assert state.requests == []


def test_cli_error_exit_codes(http_server: tuple[str, HttpState], tmp_path: Path, capsys: Any) -> None:
    url, state = http_server
    state.script.append((404, JSON, _ts_error(404, "ModelNotFoundException", "Model not found: nope")))
    code = cli_main(["describe", "nope", "--url", url, "--retries", "0"])
    assert code == 4 and "ModelNotFound" in capsys.readouterr().err


def test_cli_module_runs_as_subprocess(http_server: tuple[str, HttpState]) -> None:
    url, state = http_server
    env_path = str(ROOT / "client")
    proc = subprocess.run(
        [sys.executable, "-m", "cxrexplain_client.cli", "health", "--url", url],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": env_path, "CXREXPLAIN_TOKEN": "env-token", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"status": "Healthy"}
    assert state.requests[-1].headers["Authorization"] == "Bearer env-token"

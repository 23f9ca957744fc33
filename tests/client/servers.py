"""Real in-process servers for the client SDK's tests (http.server and grpc.server on free loopback ports), the
scripted answers they give, and the wire messages they are built from.

Nothing of the client is mocked: requests travel over sockets, servers record what arrived and answer with
scripted responses built from the wire schema. ``conftest.py`` makes the two servers fixtures.
"""

from __future__ import annotations

import contextlib
import io
import json
import queue
import socket
import struct
import threading
import time
import urllib.parse
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import json_format
from PIL import Image

import cxrexplain_client as cx
from cxrexplain_client import codec
from cxrexplain_client._proto import (
    explain_pb2,
    inference_pb2,
    inference_pb2_grpc,
    management_pb2,
    management_pb2_grpc,
)

FAST = cx.RetryPolicy(retries=3, initial_backoff=0.02, max_backoff=0.05)
H = W = 8


def wire_map(arr: np.ndarray, dtype: str) -> explain_pb2.Map:
    if dtype == "png":
        img = Image.fromarray(np.round(np.clip(arr, 0, 1) * 255).astype(np.uint8), mode="L")
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return explain_pb2.Map(height=arr.shape[0], width=arr.shape[1], dtype="png", data=buf.getvalue())
    data = np.asarray(arr, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
    return explain_pb2.Map(height=arr.shape[0], width=arr.shape[1], dtype=dtype, data=data)


def arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "cam": rng.normal(size=(H, W)).astype(np.float32),
        "rap": rng.normal(size=(H, W)).astype(np.float32),
        "frames": rng.uniform(size=(3, H, W)).astype(np.float32),
    }


def make_response(dtype: str = "float32", seed: int = 0) -> explain_pb2.ExplainResponse:
    """A full ExplainResponse: 2 findings, targets A and B with cam/rap, latent shift for A."""
    arrs = arrays(seed)
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
            msg.heatmaps.add(method=method, target=target, map=wire_map(arrs[method], dtype))
    ls = msg.latent_shifts.add(target="A", reconstruction_gap=0.01, map_kind="max", direction="logit")
    ls.lambdas.extend([-20.0, 0.0, 5.0])
    ls.frame_probabilities.extend([0.2, 0.8, 0.9])
    ls.frames.extend([wire_map(f, "float32" if dtype == "png" else dtype) for f in arrs["frames"]])
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


def request_handler(state: HttpState) -> type[BaseHTTPRequestHandler]:
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
    server = ThreadingHTTPServer(("127.0.0.1", 0), request_handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()


def header_options(rec: Recorded) -> dict[str, str]:
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
        if self.script:  # fail the call after its request, before any part (a dead or a missing worker)
            self._record("StreamPredictions2", next(request_iterator), context)
            context.abort(*self.script.pop(0))
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


def stream_parts() -> list[inference_pb2.PredictionResponse]:
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



def handler_error(code: int, kind: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message, "request_id": f"r-{code}", "type": kind}}).encode()


def ts_error(code: int, kind: str, message: str) -> bytes:
    return json.dumps({"code": code, "type": kind, "message": message}).encode()


JSON = {"Content-Type": "application/json"}


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

"""End to end against a real TorchServe (Java frontend): archives built by the exporter in the test, real REST and
gRPC calls, a metrics scrape, bad inputs followed by good requests, a killed worker, and a clean stop.

One server for the module (starting it and loading workers costs ~20 s); each test leaves it serving.
"""

from __future__ import annotations

import io
import os
import signal
import threading
import time
import urllib.parse
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from PIL import Image
from served import build_store, parse, png_bytes

from cxrexplain_client import codec
from cxrexplain_client._proto import explain_pb2, inference_pb2, inference_pb2_grpc
from cxrexplain_serving.options import OPTIONS_HEADER
from export.launcher import Ports, TorchServe

pytestmark = pytest.mark.serve

ALL_METHODS = ["cam", "gradcam", "lrp", "rap", "saliency", "guided_backprop", "integrated_gradients", "latent_shift"]


@pytest.fixture(scope="module")
def store(tmp_path_factory, phantom_classifier, phantom_autoencoder) -> Path:
    """Archives built by ``cxrexplain-export`` from weights saved the way users save theirs."""
    return build_store(tmp_path_factory.mktemp("export"), [
        {"name": "cxr", "kind": "classifier", "architecture": "densenet_small", "weights": "weights/clf.pt",
         "autoencoder": "cxr-ae", "batch_size": 4, "max_batch_delay_ms": 200, "version": "1.0",
         "caps": {"max_work_units": 400}, "stream": True},
        {"name": "cxr-noae", "kind": "classifier", "architecture": "densenet_small", "weights": "weights/clf.pt",
         "onnx": False, "batch_size": 1},
        {"name": "cxr-ae", "kind": "autoencoder", "architecture": "resnet_ae_small", "weights": "weights/ae.pt"},
    ], phantom_classifier, phantom_autoencoder)


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    with TorchServe(store, tmp_path_factory.mktemp("run"), ports=Ports.free()) as ts:
        yield ts


@pytest.fixture(scope="module")
def image(phantom_batch) -> bytes:
    sample = next(s for s in phantom_batch if s.labels.sum() > 0)
    return png_bytes(sample.image)


def post(server: TorchServe, path: str, files=None, data=None, content=None, headers=None, auth=True):
    hdrs = dict(server.headers() if auth else {})
    hdrs.update(headers or {})
    return httpx.post(f"{server.url}{path}", files=files, data=data, content=content, headers=hdrs, timeout=120)


def explain_rest(server, image, model="cxr", **options) -> httpx.Response:
    fields = {k: ",".join(v) if isinstance(v, list) else str(v) for k, v in options.items()}
    return post(server, f"/explanations/{model}", files={"data": ("x.png", image, "image/png")}, data=fields)


def as_array(m: explain_pb2.Map) -> np.ndarray:
    return np.frombuffer(m.data, dtype="<f2" if m.dtype == "float16" else "<f4").reshape(m.height, m.width)


# --- REST -----------------------------------------------------------------------------------------------------
def test_token_is_required(server, image):
    r = post(server, "/predictions/cxr", content=image, auth=False)
    # TorchServe 0.12 answers a missing or wrong key with 400 InvalidKeyException, not 401 (README, Errors).
    assert r.status_code == 400 and "InvalidKeyException" in r.text


def test_rest_predictions(server, image, phantom_classifier):
    r = post(server, "/predictions/cxr", content=image, headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    msg = parse(r)
    assert [f.label for f in msg.findings] == phantom_classifier.labels
    assert msg.not_for_diagnostic_use and msg.request_id and msg.model_name == "cxr"
    assert all(0.0 <= f.probability <= 1.0 for f in msg.findings)


def test_rest_explanations_every_method(server, image):
    r = explain_rest(server, image, methods=ALL_METHODS, targets="Cardiomegaly", frames=5)
    assert r.status_code == 200, r.text
    msg = parse(r)
    assert sorted(h.method for h in msg.heatmaps) == sorted(ALL_METHODS)
    for h in msg.heatmaps:
        arr = as_array(h.map)
        assert arr.shape == (64, 64) and np.isfinite(arr).all(), h.method
        assert h.target == "Cardiomegaly"
    (shift,) = msg.latent_shifts
    assert len(shift.frames) == 5 and len(shift.lambdas) == 5
    assert list(shift.lambdas) == sorted(shift.lambdas)


def test_options_header_through_the_frontend(server, image):
    """Raw body + the URL-encoded options header (the client SDK's form) through TorchServe's frontend: the same
    answer as multipart fields; an option given both ways is 422."""
    assert codec.OPTIONS_HEADER.lower() == OPTIONS_HEADER  # what the SDK sends is what the handler reads
    options = {"methods": "cam,rap", "targets": "Mass"}
    header = {"Content-Type": "image/png", codec.OPTIONS_HEADER: urllib.parse.urlencode(options)}
    by_header = post(server, "/predictions/cxr", content=image, headers=header)
    by_fields = explain_rest(server, image, **options)
    assert by_header.status_code == by_fields.status_code == 200, by_header.text
    a, b = parse(by_header), parse(by_fields)
    assert [(h.method, h.target) for h in a.heatmaps] == [(h.method, h.target) for h in b.heatmaps] == [
        ("cam", "Mass"), ("rap", "Mass")]
    for x, y in zip(a.heatmaps, b.heatmaps, strict=True):
        np.testing.assert_allclose(as_array(x.map), as_array(y.map), rtol=1e-3, atol=1e-4)
    both = post(server, "/explanations/cxr", files={"data": ("x.png", image, "image/png")},
                data={"methods": "cam"}, headers={OPTIONS_HEADER: "methods=lrp"})
    assert both.status_code == 422 and "given twice" in both.json()["error"]["message"]


def test_binary_protobuf_and_png_heatmaps(server, image):
    r = post(server, "/explanations/cxr", files={"data": ("x.png", image, "image/png")},
             data={"methods": "cam", "top_k": "2", "heatmap_format": "png"},
             headers={"Accept": "application/x-protobuf"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-protobuf")
    msg = parse(r)
    assert len(msg.targets) == 2 and len(msg.heatmaps) == 2
    png = Image.open(io.BytesIO(msg.heatmaps[0].map.data))
    assert png.size == (64, 64)


def test_describe_on_inference_port(server, image, phantom_classifier):
    r = explain_rest(server, image, describe="true")
    assert r.status_code == 200, r.text
    d = parse(r).description
    assert list(d.labels) == phantom_classifier.labels and d.has_autoencoder and "lrp" in d.methods


# --- bad input: each gets its 4xx, the worker keeps serving -------------------------------------------------
BAD = {
    "empty body": (b"", {}, 400),
    "random bytes": (os.urandom(2000), {}, None),
    "truncated png": (None, {}, 400),
    "unknown method": ("good", {"methods": "nope"}, 422),
    "unknown label": ("good", {"methods": "cam", "targets": "Fracture"}, 422),
    "unknown option": ("good", {"methods": "cam", "colour": "red"}, 422),
    "over the cost cap": ("good", {"methods": "integrated_gradients", "steps": "128", "targets": "0,1,2,3"}, 422),
    "unary asks to stream": ("good", {"methods": "cam", "stream": "true"}, 422),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_then_good(server, image, case):
    body, options, status = BAD[case]
    if body == "good":
        body = image
    elif body is None:
        body = image[: len(image) // 2]
    r = post(server, "/explanations/cxr", files={"data": ("x", body, "application/octet-stream")}, data=options)
    if status is None:
        assert r.status_code in (400, 415), r.text
    else:
        assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"] and error["request_id"] and error["code"] == r.status_code
    ok = post(server, "/predictions/cxr", content=image)
    assert ok.status_code == 200


def test_decompression_bomb_is_refused(server):
    buf = io.BytesIO()
    Image.new("L", (20000, 20000)).save(buf, format="PNG")  # a few KB on the wire, 400 M pixels decoded
    r = post(server, "/predictions/cxr", content=buf.getvalue())
    assert r.status_code == 400 and "pixel" in r.json()["error"]["message"].lower()


def test_latent_shift_without_autoencoder_is_422(server, image):
    r = explain_rest(server, image, model="cxr-noae", methods="latent_shift")
    assert r.status_code == 422 and "autoencoder" in r.json()["error"]["message"]


def test_unknown_model_is_404(server, image):
    assert post(server, "/predictions/nope", content=image).status_code == 404


# --- dynamic batching -----------------------------------------------------------------------------------------
def test_concurrent_requests_are_batched(server, image):
    results: list[httpx.Response] = []
    lock = threading.Lock()

    def call(i: int) -> None:
        r = explain_rest(server, image, methods="cam", targets=str(i % 5))
        with lock:
            results.append(r)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [200] * 8
    ids = {parse(r).request_id for r in results}
    assert len(ids) == 8
    log = (server.run_dir / "logs" / "model_log.log").read_text()
    assert any(f"batch={n}" in log for n in (2, 3, 4)), "no request was served in a batch of more than one"


# --- gRPC -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(server.grpc_target)
    yield inference_pb2_grpc.InferenceAPIsServiceStub(channel)
    channel.close()


def grpc_request(image: bytes, model="cxr", **options) -> inference_pb2.PredictionsRequest:
    inputs = {"data": image, **{k: str(v).encode() for k, v in options.items()}}
    return inference_pb2.PredictionsRequest(model_name=model, input=inputs)


def test_grpc_unary(server, stub, image):
    reply = stub.Predictions(grpc_request(image, methods="cam,rap", targets="Nodule"),
                             metadata=[("authorization", f"Bearer {server.key()}")], timeout=120)
    msg = explain_pb2.ExplainResponse.FromString(reply.prediction)
    assert sorted(h.method for h in msg.heatmaps) == ["cam", "rap"] and msg.not_for_diagnostic_use


def test_grpc_error_status(server, stub, image):
    """TorchServe 0.12's unary gRPC path drops per-request statuses: the payload's ``error`` carries it."""
    reply = stub.Predictions(grpc_request(image, methods="cam", targets="Fracture"),
                             metadata=[("authorization", f"Bearer {server.key()}")], timeout=120)
    msg = explain_pb2.ExplainResponse.FromString(reply.prediction)
    assert msg.error.code == 422 and "Fracture" in msg.error.message and msg.error.request_id
    assert not msg.heatmaps


def test_grpc_unary_stream_request_is_422_and_next_succeeds(server, stub, image):
    md = [("authorization", f"Bearer {server.key()}")]
    try:
        reply = stub.Predictions(grpc_request(image, methods="cam", stream="true"), metadata=md, timeout=60)
        assert explain_pb2.ExplainResponse.FromString(reply.prediction).error.code == 422
    except grpc.RpcError as err:
        assert "stream" in err.details().lower()
    reply = stub.Predictions(grpc_request(image, methods="cam"), metadata=md, timeout=60)
    assert explain_pb2.ExplainResponse.FromString(reply.prediction).heatmaps


# --- the client SDK over both transports ------------------------------------------------------------------------
def test_client_sdk_round_trip(server, image):
    from cxrexplain_client import ExplainClient

    with ExplainClient(url=server.url, grpc_target=server.grpc_target, token=server.key()) as client:
        for transport in ("rest", "grpc"):
            result = client.explain(image, "cxr", methods=["cam", "latent_shift"], targets=["Mass"], frames=4,
                                    transport=transport)
            first = result.results["Mass"]
            assert first.heatmaps["cam"].shape == (64, 64)
            assert first.latent_shift.frames.shape[0] == 4
            # describe sends options without an image (REST: an empty body and the options header)
            assert "Mass" in client.describe("cxr", transport=transport).labels


def test_grpc_stream_findings_then_heatmaps_then_latent_shift(server, image):
    """StreamPredictions2 on the streaming twin (cxr-stream): findings first, each heatmap, the latent shift,
    then the end; the assembled answer equals the unary one. A bad stream request is a typed error and the
    twin keeps serving (in 0.12 an error reply that is not a per-row status would lose its worker)."""
    import cxrexplain_client as cx

    request = dict(methods=["cam", "rap", "latent_shift"], targets=["Cardiomegaly"], frames=3)
    with cx.ExplainClient(url=server.url, grpc_target=server.grpc_target, token=server.key()) as client:
        parts = list(client.stream_explain(image, "cxr", **request))
        # the latent-shift 2D map is a heatmap part; its frames follow as the latent_shift part
        assert [p.kind for p in parts] == ["findings", "heatmap", "heatmap", "heatmap", "latent_shift", "end"]
        assert parts[0].findings and not parts[0].heatmaps
        assert [(t, m) for p in parts[1:4] for t, m, _ in p.heatmaps] == [
            ("Cardiomegaly", "cam"), ("Cardiomegaly", "rap"), ("Cardiomegaly", "latent_shift")]
        assert parts[4].latent_shifts[0].frames.shape[0] == 3 and parts[-1].last
        streamed = parts[-1].explanation.results["Cardiomegaly"]
        unary = client.explain(image, "cxr", transport="grpc", **request).results["Cardiomegaly"]
        for method in ("cam", "rap"):
            np.testing.assert_allclose(streamed.heatmaps[method], unary.heatmaps[method], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(streamed.latent_shift.lambdas, unary.latent_shift.lambdas, rtol=1e-5)
        with pytest.raises(cx.InvalidInput, match="Fracture"):
            list(client.stream_explain(image, "cxr", methods=["cam"], targets=["Fracture"]))
        again = list(client.stream_explain(image, "cxr-stream", methods=["cam"]))
        assert again[-1].last and again[-1].explanation.results


# --- metrics ----------------------------------------------------------------------------------------------------
def test_metrics_scrape(server, image):
    explain_rest(server, image, methods="latent_shift", frames=3)
    post(server, "/predictions/cxr", content=b"not an image at all")
    text = httpx.get(server.metrics_url, timeout=10).text
    for name in ("ts_inference_requests_total", "cxrexplain_method_latency_seconds_bucket",
                 "cxrexplain_requests_total", "cxrexplain_decode_errors_total", "cxrexplain_reconstruction_gap",
                 "cxrexplain_worker_starts_total"):
        assert name in text, f"{name} missing from /metrics"
    # the project's log4j2.xml: the frontend parses the worker's metric lines without logging each one, and
    # writes every line once; the worker's request line (request id, methods, timings, status) is in model_log
    logs = server.run_dir / "logs"
    ts_log = (logs / "ts_log.log").read_text().splitlines()
    assert not any("[METRICS]" in line for line in ts_log)
    assert not any(a == b for a, b in zip(ts_log, ts_log[1:], strict=False)), "duplicated ts_log lines"
    requests = [line for line in (logs / "model_log.log").read_text().splitlines() if "request_id=" in line]
    assert any("methods=latent_shift status=200" in line for line in requests)


def _worker_starts(server) -> float:
    text = httpx.get(server.metrics_url, timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("cxrexplain_worker_starts_total") and 'ModelName="cxr"' in line)


def _workers(server, model: str = "cxr") -> list[dict]:
    r = httpx.get(f"{server.management_url}/models/{model}", headers=server.headers("management"), timeout=10)
    return r.json()[0]["workers"]


def test_killed_worker_restarts_and_is_counted(server, image):
    before = _worker_starts(server)
    pid = int(_workers(server)[0]["pid"])
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # TorchServe starts a new worker process by itself
        workers = _workers(server)
        if workers and workers[0]["status"] == "READY" and int(workers[0]["pid"]) != pid:
            break
        time.sleep(1)
    assert int(_workers(server)[0]["pid"]) != pid
    assert post(server, "/predictions/cxr", content=image).status_code == 200
    assert _worker_starts(server) == before + 1


# --- the autoencoder archive ------------------------------------------------------------------------------------
def test_autoencoder_archive_reconstructs(server, image):
    r = post(server, "/predictions/cxr-ae", content=image)
    assert r.status_code == 200, r.text
    msg = parse(r)
    assert msg.reconstruction.height == 64 and len(msg.reconstruction.data) > 0


def test_clean_stop(store, tmp_path):
    ts = TorchServe(store, tmp_path / "run", ports=Ports.free(), models="cxr-noae.mar").start()
    pgid = ts.process.pid
    ts.stop()
    assert ts.process.poll() is not None
    with pytest.raises(ProcessLookupError):  # the frontend and its workers are all gone
        os.killpg(pgid, 0)

"""The TorchServe handler in-process, through TorchServe's own Python worker code (no Java).

An archive-shaped model directory is loaded with ``ts.model_loader.TsModelLoader`` (which imports the handler by
its bare module name, as a worker does); batches are encoded in the frontend's binary protocol, read back with
``ts.protocol.otf_message_handler.retrieve_msg`` and answered by ``ts.service.Service.predict``, whose reply is
decoded as the frontend would. Metric lines are parsed with the frontend's own pattern.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import ts  # noqa: E402,F401
import yaml
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl  # noqa: E402
from ts.model_loader import TsModelLoader  # noqa: E402
from ts.protocol.otf_message_handler import retrieve_msg  # noqa: E402

from cxrexplain.autoencoder import build_autoencoder
from cxrexplain.bundle import AutoencoderBundle, ClassifierBundle
from cxrexplain.models import build_classifier, save_autoencoder, save_classifier
from cxrexplain.spec import unit_spec
from cxrexplain_serving.responses import decode
from cxrexplain_serving.telemetry import ALL_METRICS, metrics_yaml_section

ROOT = Path(__file__).resolve().parents[2]
METRICS_YAML = ROOT / "model_store" / "metrics.yaml"
LABELS = ["Cardiomegaly", "Nodule", "Mass", "Effusion", "Pneumothorax"]
SIZE = 64
# WorkerLifeCycle / Metric.java of TorchServe 0.12: how the frontend parses a "[METRICS]" line.
FRONTEND_METRIC = re.compile(
    r"\s*([\w\s]+)\.([\w\s]+):([0-9\-,.e]+)\|#([^|]*)(\|#type:([^|,]+))?\|#hostname:([^,]+),([^,]+)(,(.*))?")


def png(seed: int = 0, height: int = 72, width: int = 90) -> bytes:
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def make_model_dir(path: Path, with_autoencoder: bool) -> Path:
    """What an archive unpacks to: weights + sidecars, serve.json, MAR-INF/MANIFEST.json."""
    torch.manual_seed(0)
    bundle = ClassifierBundle(build_classifier("densenet_small", len(LABELS), 1), labels=list(LABELS),
                              input_spec=unit_spec(1, SIZE), architecture="densenet_small",
                              op_thresholds=[0.4, 0.5, 0.5, 0.6, 0.5])
    save_classifier(bundle, path / "classifier.pt")
    if with_autoencoder:
        torch.manual_seed(1)
        save_autoencoder(AutoencoderBundle(build_autoencoder("resnet_ae_small"), input_spec=unit_spec(1, SIZE),
                                           architecture="resnet_ae_small"), path / "autoencoder.pt")
    (path / "serve.json").write_text(json.dumps({"caps": {"max_targets": 3}, "torch_threads": 1}))
    (path / "MAR-INF").mkdir()
    (path / "MAR-INF" / "MANIFEST.json").write_text(json.dumps({"model": {
        "modelName": "cxr-test", "modelVersion": "1.0", "handler": "cxrexplain_handler.py"}}))
    return path


def metrics_cache() -> MetricsCacheYamlImpl:
    cache = MetricsCacheYamlImpl(config_file_path=str(METRICS_YAML))
    cache.initialize_cache()
    cache.model_name = "cxr-test"
    return cache


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    """A loaded model, as a TorchServe worker holds it (with an autoencoder)."""
    threads = torch.get_num_threads()
    mp = pytest.MonkeyPatch()
    mp.syspath_prepend(str(ROOT / "handlers"))
    model_dir = make_model_dir(tmp_path_factory.mktemp("archive"), with_autoencoder=True)
    service = TsModelLoader().load("cxr-test", str(model_dir), "cxrexplain_handler.py", None, 4, None, True,
                                   metrics_cache())
    yield service
    mp.undo()
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------- the wire


def frontend_batch(requests: list[tuple[str, dict[str, str], list[tuple[str, str, bytes]]]]) -> list[dict]:
    """Encode like the frontend's ModelRequestEncoder, decode with the worker's own retrieve_msg."""
    def field(value: bytes) -> bytes:
        return struct.pack("!i", len(value)) + value

    msg = b"I"
    for request_id, headers, parameters in requests:
        msg += field(request_id.encode())
        for key, value in headers.items():
            msg += field(key.encode()) + field(value.encode())
        msg += struct.pack("!i", -1)
        for name, content_type, value in parameters:
            msg += field(name.encode()) + field(content_type.encode()) + field(value)
        msg += struct.pack("!i", -1)
    msg += struct.pack("!i", -1)
    a, b = socket.socketpair()
    with a, b:
        a.sendall(msg)
        cmd, batch = retrieve_msg(b)
    assert cmd == b"I"
    return batch


def parse_reply(data: bytes) -> tuple[int, list[dict]]:
    """Decode a worker reply (create_predict_response) as the frontend does."""
    pos = 0

    def i32() -> int:
        nonlocal pos
        (value,) = struct.unpack_from("!i", data, pos)
        pos += 4
        return value

    def text() -> bytes:
        nonlocal pos
        n = i32()
        value = data[pos : pos + n]
        pos += n
        return value

    code = i32()
    text()  # message
    rows = []
    while True:
        n = i32()
        if n == -1:
            break
        request_id = data[pos : pos + n].decode()
        pos += n
        content_type = text().decode()
        status = i32()
        phrase = text().decode()
        headers = {text().decode(): text().decode() for _ in range(i32())}
        rows.append({"request_id": request_id, "content_type": content_type, "status": status, "phrase": phrase,
                     "headers": headers, "body": text()})
    assert pos == len(data)
    return code, rows


class Wire:
    """The worker's socket to the frontend: collects what the handler sends before its final reply."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.sent.append(bytes(data))


def run(service, requests) -> tuple[list[dict], list[dict]]:
    wire = Wire()
    service.set_cl_socket(wire)
    code, rows = parse_reply(bytes(service.predict(frontend_batch(requests))))
    assert code == 200
    intermediate = [r for sent in wire.sent for r in parse_reply(sent)[1]]
    return rows, intermediate


REST = {"explain": "False", "Host": "127.0.0.1:8080", "Accept": "*/*"}


def message(row: dict):
    return decode(row["body"], row["content_type"])


# --------------------------------------------------------------------------------------------- tests


def test_loads_by_bare_module_name_and_counts_the_worker_start(tmp_path, monkeypatch, caplog):
    monkeypatch.syspath_prepend(str(ROOT / "handlers"))
    model_dir = make_model_dir(tmp_path, with_autoencoder=False)
    threads = torch.get_num_threads()
    with caplog.at_level(logging.INFO):
        service = TsModelLoader().load("cxr-test", str(model_dir), "cxrexplain_handler.py", None, 4, None, True,
                                       metrics_cache())
    worker_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    assert worker_threads == 1  # serve.json's torch_threads (the recipe field), applied at initialize
    lines = [r.getMessage()[len("[METRICS]"):] for r in caplog.records if r.getMessage().startswith("[METRICS]")]
    starts = [FRONTEND_METRIC.match(line) for line in lines if line.startswith("cxrexplain_worker_starts_total")]
    assert len(starts) == 1 and starts[0] is not None
    assert starts[0].group(3) == "1.0" and starts[0].group(4) == "ModelName:cxr-test,Device:cpu"
    assert starts[0].group(6) == "COUNTER"
    # started warm: one request of every kind answered before the worker was ready, none of them counted as traffic
    (warm,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("warm-up:")]
    (loaded,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("model cxr-test loaded")]
    methods = loaded.rsplit("methods ", 1)[1].split(",")
    assert len(methods) == 7 and warm.split(", ", 1)[1].split() == [f"{k}=200" for k in ("predict", *methods)]
    assert not [line for line in lines if line.startswith("cxrexplain_requests_total")]
    (row,), _ = run(service, [("d", REST, [("describe", "text/plain", b"true")])])
    description = message(row).description
    assert list(description.labels) == LABELS and list(description.operating_points) == pytest.approx(
        [0.4, 0.5, 0.5, 0.6, 0.5])
    assert not description.has_autoencoder and "latent_shift" not in description.methods


def test_a_broken_autoencoder_file_degrades_to_the_other_methods(tmp_path, monkeypatch, caplog):
    """A worker whose autoencoder cannot be loaded still starts: every other method serves, latent_shift
    answers 503 naming the file, and the next request is served."""
    monkeypatch.syspath_prepend(str(ROOT / "handlers"))
    model_dir = make_model_dir(tmp_path, with_autoencoder=True)
    (model_dir / "autoencoder.pt").write_bytes(b"not a weights file")
    threads = torch.get_num_threads()
    with caplog.at_level(logging.ERROR):
        service = TsModelLoader().load("cxr-test", str(model_dir), "cxrexplain_handler.py", None, 4, None, True,
                                       metrics_cache())
    torch.set_num_threads(threads)
    assert any("autoencoder.pt could not be loaded" in r.getMessage() for r in caplog.records)
    rows, _ = run(service, [
        ("cam", REST, [("data", "image/png", png()), ("methods", "text/plain", b"cam")]),
        ("ls", REST, [("data", "image/png", png()), ("methods", "text/plain", b"cam,latent_shift")]),
        ("describe", REST, [("describe", "text/plain", b"true")]),
    ])
    by_id = {r["request_id"]: r for r in rows}
    assert by_id["cam"]["status"] == 200 and [h.method for h in message(by_id["cam"]).heatmaps] == ["cam"]
    refused = json.loads(by_id["ls"]["body"])["error"]
    assert (by_id["ls"]["status"], refused["type"]) == (503, "autoencoder_unavailable")
    assert "autoencoder.pt" in refused["message"] and "cam" in refused["message"]
    description = message(by_id["describe"]).description
    assert not description.has_autoencoder and "latent_shift" not in description.methods
    (again,), _ = run(service, [("again", REST, [("data", "image/png", png(3))])])
    assert again["status"] == 200


def test_mixed_rest_batch_gets_per_row_status_type_and_request_id(worker):
    rows, intermediate = run(worker, [
        ("id-predict", REST, [("body", "image/png", png())]),
        ("id-explain", {**REST, "X-Request-Id": "client-42"},
         [("data", "image/png", png(1)), ("methods", "text/plain", b"cam,saliency"),
          ("targets", "text/plain", b"Mass")]),
        ("id-corrupt", REST, [("body", "image/png", png()[:50])]),
        ("id-flag", {**REST, "explain": "True", "Accept": "application/x-protobuf"},
         [("body", "image/png", png(2))]),
        ("id-unknown", REST, [("data", "image/png", png()), ("colour", "text/plain", b"red")]),
    ])
    assert not intermediate
    by_id = {r["request_id"]: r for r in rows}
    assert [by_id[k]["status"] for k in ("id-predict", "id-explain", "id-corrupt", "id-flag", "id-unknown")] == [
        200, 200, 400, 200, 422]
    assert by_id["id-corrupt"]["phrase"] == "Bad Request"
    assert by_id["id-flag"]["content_type"] == "application/x-protobuf"
    assert by_id["id-predict"]["content_type"] == "application/json"
    # TorchServe's own request id when the client sends none; the client's x-request-id otherwise.
    assert by_id["id-predict"]["headers"]["x-request-id"] == "id-predict"
    assert by_id["id-explain"]["headers"]["x-request-id"] == "client-42"
    explained = message(by_id["id-explain"])
    assert explained.request_id == "client-42" and list(explained.targets) == ["Mass"]
    assert [h.method for h in explained.heatmaps] == ["cam", "saliency"]
    flagged = message(by_id["id-flag"])
    assert [h.method for h in flagged.heatmaps] == ["cam"]  # the explain endpoint's default method
    assert not message(by_id["id-predict"]).heatmaps
    unknown = json.loads(by_id["id-unknown"]["body"])
    assert unknown["error"]["code"] == 422 and "colour" in unknown["error"]["message"]


def test_grpc_rows_default_to_binary_and_unary_stream_is_refused_without_wedging(worker):
    rows, intermediate = run(worker, [
        ("g1", {}, [("data", "", png()), ("methods", "", b"cam"), ("stream", "", b"true")]),
        ("g2", {}, [("data", "", png(3)), ("methods", "", b"cam"), ("top_k", "", b"2")]),
    ])
    assert not intermediate  # nothing streamed on a unary call
    refused, ok = rows
    assert refused["status"] == 422 and refused["content_type"] == "application/x-protobuf"
    error = message(refused).error
    assert error.code == 422 and "StreamPredictions2" in error.message
    answer = message(ok)
    assert ok["status"] == 200 and len(answer.targets) == 2 and len(answer.heatmaps) == 2
    # The next request is served normally.
    (after,), _ = run(worker, [("g3", {}, [("data", "", png(4))])])
    assert after["status"] == 200 and len(message(after).findings) == len(LABELS)


def test_two_images_in_one_request_are_refused_not_half_read(worker):
    """'data' and 'body' both hold an image (a multipart request with both fields, a gRPC map with both keys):
    400 naming the fault, where the second image used to be dropped silently."""
    rows, _ = run(worker, [
        ("two-rest", REST, [("data", "image/png", png()), ("body", "image/png", png(1))]),
        ("two-grpc", {}, [("data", "", png()), ("body", "", png(1))]),
        ("one", REST, [("data", "image/png", png())]),
    ])
    for row in rows[:2]:
        error = message(row).error
        assert row["status"] == error.code == 400 and error.type == "invalid_input", error.message
        assert "two images" in error.message
    assert rows[2]["status"] == 200


def test_stream_predictions2_sends_parts_then_the_last_one(worker):
    sequence = {"ts_request_sequence_id": "seq-1", "ts_request_sequence_end": "true"}
    rows, intermediate = run(worker, [
        ("s1", sequence, [("data", "", png()), ("methods", "", b"cam,latent_shift"), ("targets", "", b"0"),
                          ("frames", "", b"3"), ("stream", "", b"true")]),
        ("u1", {}, [("data", "", png(5))]),
    ])
    assert [r["request_id"] for r in intermediate] == ["s1"] * 4
    assert all(r["headers"]["ts_stream_next"] == "true" for r in intermediate)
    parts = [message(r).part for r in intermediate]
    assert parts == ["findings", "heatmap", "heatmap", "latent_shift"]
    shift = message(intermediate[-1]).latent_shifts[0]
    assert len(shift.frames) == 3 and shift.target == LABELS[0]
    final = {r["request_id"]: r for r in rows}
    assert final["s1"]["headers"]["ts_stream_next"] == "false"
    end = message(final["s1"])
    assert end.part == "end" and end.last and final["s1"]["status"] == 200
    assert "ts_stream_next" not in final["u1"]["headers"] and message(final["u1"]).findings


def test_rest_on_a_sequence_batching_model_never_streams(worker):
    """On the streaming twin TorchServe gives REST requests a sequence id too: they still get one answer."""
    rest_sequence = {**REST, "explain": "True", "ts_request_sequence_id": "ts-seq-1",
                     "ts_request_sequence_start": "true"}
    (row,), intermediate = run(worker, [("r1", rest_sequence, [
        ("data", "image/png", png()), ("methods", "text/plain", b"cam"), ("stream", "text/plain", b"true")])])
    assert not intermediate
    assert row["status"] == 422 and "StreamPredictions2" in json.loads(row["body"])["error"]["message"]


def test_a_service_failure_still_answers_every_row(worker, monkeypatch):
    """An exception out of handle() would fail the batch (and lose the worker on a sequence-batching model):
    the handler answers each row with a 500 naming its request id instead, and the next batch is served."""
    handler = worker._entry_point.__self__

    def broken(rows, emit=None):
        raise RuntimeError("a bug")

    monkeypatch.setattr(handler.service, "handle_batch", broken)
    sequence = {"ts_request_sequence_id": "seq-2"}
    rows, _ = run(worker, [("b1", REST, [("data", "image/png", png())]),
                           ("b2", sequence, [("data", "", png()), ("stream", "", b"true")])])
    assert [r["status"] for r in rows] == [500, 500]
    rest_error = json.loads(rows[0]["body"])["error"]
    assert rest_error["type"] == "internal_error" and "b1" in rest_error["message"]
    end = message(rows[1])
    assert end.error.code == 500 and end.last and "b2" in end.error.message
    monkeypatch.undo()
    (after,), _ = run(worker, [("b3", REST, [("data", "image/png", png())])])
    assert after["status"] == 200


def test_cost_cap_from_serve_json(worker):
    (row,), _ = run(worker, [("c", REST, [("data", "image/png", png()), ("methods", "text/plain", b"cam"),
                                          ("top_k", "text/plain", b"4")])])
    error = json.loads(row["body"])["error"]
    assert row["status"] == 422 and error["type"] == "cost_cap_exceeded" and "cap of 3" in error["message"]


def test_metric_lines_parse_and_are_declared(worker, caplog):
    with caplog.at_level(logging.INFO):
        run(worker, [("m1", REST, [("data", "image/png", png()), ("methods", "text/plain", b"cam")]),
                     ("m2", REST, [("body", "image/png", b"\x89PNG\r\n\x1a\n" + bytes(10))])])
    model_metrics = yaml.safe_load(METRICS_YAML.read_text())["model_metrics"]
    declared = {m["name"]: m["dimensions"] for kind in model_metrics.values() for m in kind}
    seen = set()
    for record in caplog.records:
        text = record.getMessage()
        if not text.startswith("[METRICS]cxrexplain"):
            continue
        match = FRONTEND_METRIC.match(text[len("[METRICS]"):])
        assert match is not None, text
        name = match.group(1)
        names = [pair.split(":", 1)[0] for pair in match.group(4).split(",")]
        assert names == declared[name], text
        seen.add(name)
    assert {"cxrexplain_requests_total", "cxrexplain_decode_errors_total",
            "cxrexplain_method_latency_seconds"} <= seen
    # No image content in the logs: no pixel arrays, no base64 of the body.
    assert not any("iVBOR" in r.getMessage() for r in caplog.records)


def test_metrics_yaml_declares_what_telemetry_emits():
    model_metrics = yaml.safe_load(METRICS_YAML.read_text())["model_metrics"]
    for kind, specs in metrics_yaml_section().items():
        declared = {m["name"]: m for m in model_metrics.get(kind, [])}
        for spec in specs:
            assert declared[spec["name"]]["dimensions"] == spec["dimensions"]
            assert declared[spec["name"]]["unit"] == spec["unit"]
    assert all("Hostname" not in spec.dimensions for spec in ALL_METRICS)  # the frontend adds it

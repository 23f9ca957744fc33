"""Faults against a real TorchServe (issue #10): a classifier whose autoencoder file is missing, a worker
SIGKILLed under 4 SDK clients, the frontend restarted under 4 SDK clients. No call may be lost.

One server for the module, serving ``cxr`` (the phantom classifier, batch size 1 so a request is always in
flight, with its autoencoder) and ``cxr-lost-ae`` (the same archive with ``autoencoder.pt`` deleted from it).
The tests run in file order; each leaves the server serving.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from served import build_store, png_bytes

import cxrexplain_client as cx
from benchmarks.load import sdk_retries
from export.launcher import Ports, TorchServe

pytestmark = pytest.mark.serve


@pytest.fixture
def retries() -> Iterator[list[str]]:
    """The SDK's retry decisions during the test."""
    with sdk_retries() as messages:
        yield messages


def _without_autoencoder(mar: Path, name: str) -> None:
    """``mar`` copied as model ``name`` without its autoencoder files, as a botched copy or a partial upload
    leaves it (``serve.json`` still names the autoencoder)."""
    with zipfile.ZipFile(mar) as src, zipfile.ZipFile(mar.with_name(f"{name}.mar"), "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "MAR-INF/MANIFEST.json":  # TorchServe registers the model under this name
                manifest = json.loads(data)
                manifest["model"]["modelName"] = name
                data = json.dumps(manifest).encode()
            if not item.filename.startswith("autoencoder."):
                dst.writestr(item, data)


@pytest.fixture(scope="module")
def server(tmp_path_factory, phantom_classifier, phantom_autoencoder) -> Iterator[TorchServe]:
    root = tmp_path_factory.mktemp("faults")
    store = build_store(root, [
        {"name": "cxr", "kind": "classifier", "architecture": "densenet_small", "weights": "weights/clf.pt",
         "autoencoder": "cxr-ae", "onnx": False, "batch_size": 1},
        {"name": "cxr-ae", "kind": "autoencoder", "architecture": "resnet_ae_small", "weights": "weights/ae.pt"},
    ], phantom_classifier, phantom_autoencoder)
    _without_autoencoder(store / "cxr.mar", "cxr-lost-ae")
    (store / "cxr-ae.mar").unlink()  # not needed here: one worker fewer on a 2-core machine
    shutil.rmtree(root / "weights")
    with TorchServe(store, root / "run", ports=Ports.free()) as ts:
        yield ts


@pytest.fixture(scope="module")
def image(phantom_batch) -> bytes:
    return png_bytes(phantom_batch[0].image)


def _worker(ts: TorchServe, model: str = "cxr") -> dict:
    r = httpx.get(f"{ts.management_url}/models/{model}", headers=ts.headers("management"), timeout=10)
    return r.json()[0]["workers"][0]


class _Load:
    """Two REST and two gRPC SDK clients calling ``explain`` in a loop until stopped; every failure is kept."""

    def __init__(self, ts: TorchServe, image: bytes) -> None:
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.done: list[tuple[float, str]] = []  # (end time, transport) of each successful call
        self.failed: list[str] = []
        self.threads = [threading.Thread(target=self._loop, args=(ts, image, t))
                        for t in ("rest", "rest", "grpc", "grpc")]

    def _loop(self, ts: TorchServe, image: bytes, transport: str) -> None:
        with cx.ExplainClient(ts.url, ts.grpc_target, token_file=ts.run_dir / "key_file.json",
                              transport=transport, timeout=120) as client:
            while not self.stop.is_set():
                try:
                    assert client.explain(image, "cxr", methods=["cam"], targets="positive").findings
                except cx.CxrExplainClientError as exc:
                    with self.lock:
                        self.failed.append(f"{transport}: {type(exc).__name__} {exc} status={exc.status} "
                                           f"grpc={exc.grpc_code} type={exc.error_type} cause={exc.__cause__!r}")
                else:
                    with self.lock:
                        self.done.append((time.monotonic(), transport))

    def __enter__(self) -> _Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=120)

    def served_after(self, moment: float) -> list[tuple[float, str]]:
        return sorted(d for d in self.done if d[0] > moment)


def test_a_missing_autoencoder_file_leaves_every_other_method_serving(server, image, retries):
    with cx.ExplainClient(server.url, server.grpc_target, token_file=server.run_dir / "key_file.json") as client:
        for transport in ("rest", "grpc"):
            ex = client.explain(image, "cxr-lost-ae", methods=["cam", "lrp"], transport=transport)
            assert set(ex.results[ex.targets[0]].heatmaps) == {"cam", "lrp"}
            with pytest.raises(cx.ServerUnavailable) as info:
                client.explain(image, "cxr-lost-ae", methods=["latent_shift"], transport=transport)
            assert info.value.error_type == "autoencoder_unavailable"
            assert "autoencoder.pt" in str(info.value) and "cam" in str(info.value)  # the cause, what still serves
        description = client.describe("cxr-lost-ae")
        assert not description.has_autoencoder and "latent_shift" not in description.methods
        assert client.explain(image, "cxr", methods=["latent_shift"], frames=3).targets  # the intact twin
    assert retries == []  # a missing file is not retried: it stays missing
    assert _worker(server, "cxr-lost-ae")["status"] == "READY"


def test_a_worker_killed_under_load_loses_no_call(server, image, retries):
    """TorchServe answers the request the worker held with HTTP 507 / gRPC RESOURCE_EXHAUSTED "Worker died."
    and starts a new worker; the SDK retries that request once with its request id, the queued ones wait or
    are retried as unavailable."""
    with _Load(server, image) as load:
        time.sleep(2.0)
        pid = int(_worker(server)["pid"])
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        ready = None
        while ready is None and time.monotonic() - killed < 60:
            worker = _worker(server)
            if worker["status"] == "READY" and int(worker["pid"]) != pid:
                ready = time.monotonic() - killed
            time.sleep(0.2)
        time.sleep(3.0)  # the clients go on against the new worker
    after = load.served_after(killed)
    print(f"\nworker killed under 4 SDK clients: {len(load.failed)} failed calls, {len(load.done)} succeeded; first "
          f"answer {after[0][0] - killed if after else float('nan'):.1f} s after the kill, new worker READY after "
          f"{ready} s; {len(retries)} retries: {retries}; failures: {load.failed}")
    assert load.failed == []
    assert ready is not None and after  # a new worker came, and served the clients
    assert any("Worker died" in m for m in retries)  # the kill hit a request in flight, retried
    assert {transport for _, transport in after} == {"rest", "grpc"}


def test_a_frontend_restarted_under_load_loses_no_call(server, image, retries):
    """The whole server (Java frontend and workers) is stopped and started again on the same ports, with new
    keys in ``key_file.json``: the SDK retries refused and reset connections, then re-reads the key file when
    the restarted server refuses the old key."""
    old_key = server.key()
    with _Load(server, image) as load:
        time.sleep(2.0)
        stopped = time.monotonic()
        server.stop()
        server.start()
        restarted = time.monotonic() - stopped
        time.sleep(3.0)
    after = load.served_after(stopped)
    print(f"\nfrontend restarted under 4 SDK clients: {len(load.failed)} failed calls, {len(load.done)} succeeded; "
          f"server back after {restarted:.1f} s, first answer {after[0][0] - stopped if after else float('nan'):.1f} s "
          f"after the stop; {len(retries)} retries; failures: {load.failed}")
    assert server.key() != old_key  # the restart wrote new keys: the clients had to re-read them
    assert load.failed == []
    assert {transport for _, transport in after} == {"rest", "grpc"}

"""A worker SIGKILLed under load from 4 SDK clients costs them no call (issue #10).

A real TorchServe serves one phantom classifier on one worker (batch size 1, so a request is always in flight);
two REST and two gRPC clients call ``explain`` in a loop while the worker process is killed. TorchServe answers
the request the worker held with HTTP 507 / gRPC RESOURCE_EXHAUSTED "Worker died." and starts a new worker; the
SDK retries that request once with the same request id, and the queued ones wait or are retried as unavailable.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from served import build_store, png_bytes

import cxrexplain_client as cx
from export.launcher import Ports, TorchServe

pytestmark = pytest.mark.serve


class _Retries(logging.Handler):
    """Counts the SDK's retry decisions (its INFO log lines)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "retrying in" in record.getMessage():
            self.messages.append(record.getMessage())


def _workers(ts: TorchServe) -> list[dict]:
    r = httpx.get(f"{ts.management_url}/models/cxr", headers=ts.headers("management"), timeout=10)
    return r.json()[0]["workers"]


def test_killed_worker_loses_no_call(tmp_path: Path, phantom_classifier, phantom_batch) -> None:
    store = build_store(tmp_path, [{"name": "cxr", "kind": "classifier", "architecture": "densenet_small",
                                     "weights": "weights/clf.pt", "onnx": False, "batch_size": 1}],
                        phantom_classifier)
    image = png_bytes(phantom_batch[0].image)
    retries = _Retries()
    sdk_log = logging.getLogger("cxrexplain_client")
    sdk_log.addHandler(retries)
    level = sdk_log.level
    sdk_log.setLevel(logging.INFO)

    with TorchServe(store, tmp_path / "run", ports=Ports.free()) as ts:
        stop = threading.Event()
        lock = threading.Lock()
        done: list[tuple[float, str]] = []  # (end time, transport) of each successful call
        failed: list[str] = []

        def client_loop(transport: str) -> None:
            with cx.ExplainClient(ts.url, ts.grpc_target, token_file=ts.run_dir / "key_file.json",
                                  transport=transport, timeout=60) as client:
                while not stop.is_set():
                    try:
                        ex = client.explain(image, "cxr", methods=["cam"], targets="positive")
                        assert ex.findings
                    except cx.CxrExplainClientError as exc:  # every failure is counted, none expected
                        with lock:
                            failed.append(f"{transport}: {type(exc).__name__} {exc} status={exc.status} "
                                          f"grpc={exc.grpc_code} type={exc.error_type} cause={exc.__cause__!r}")
                    else:
                        with lock:
                            done.append((time.monotonic(), transport))

        threads = [threading.Thread(target=client_loop, args=(t,)) for t in ("rest", "rest", "grpc", "grpc")]
        for t in threads:
            t.start()
        try:
            time.sleep(2.0)  # under load
            pid = int(_workers(ts)[0]["pid"])
            killed = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            ready = None
            while time.monotonic() - killed < 40:
                workers = _workers(ts)
                if workers and workers[0]["status"] == "READY" and int(workers[0]["pid"]) != pid:
                    ready = time.monotonic() - killed
                    break
                time.sleep(0.2)
            time.sleep(3.0)  # the clients go on against the new worker
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=90)
            sdk_log.removeHandler(retries)
            sdk_log.setLevel(level)

    after = sorted(end for end, _ in done if end > killed)
    recovery = after[0] - killed if after else float("nan")
    print(f"\nworker killed under 4 SDK clients: {len(failed)} failed calls, {len(done)} succeeded; "
          f"first answer {recovery:.1f} s after the kill, new worker READY after {ready} s; "
          f"{len(retries.messages)} retries: {retries.messages}; failures: {failed}")
    assert failed == []
    assert ready is not None and after  # a new worker came, and served the clients
    assert any("Worker died" in m for m in retries.messages)  # the kill hit a request in flight, retried
    assert {tr for end, tr in done if end > killed} == {"rest", "grpc"}

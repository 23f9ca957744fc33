"""Send a :mod:`cxrexplain_lab.hostile` case to a running TorchServe over REST or gRPC, read its answer the way a
client sees it, and measure what it cost the worker.

Memory: before a case the worker's peak-RSS mark is reset (``5`` to ``/proc/<pid>/clear_refs``, Linux >= 4.0), and
after it the growth of ``VmHWM`` over the ``VmRSS`` before is the case's peak cost. The worker's pid comes from
the management API (``GET /models/<name>`` -> ``workers[].pid``). Start the server with
``MALLOC_MMAP_THRESHOLD_=65536`` in its environment (:data:`MEASURING_ENV`) so freed memory goes back to the
kernel: otherwise memory an earlier case freed stays resident and hides the next case's peak.

Used by ``tests/reliability/test_hostile.py`` (asserts :func:`problems` is empty) and
``benchmarks/bench_refusals.py`` (times the cases).
"""

from __future__ import annotations

import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc
import httpx

from cxrexplain_client._proto import explain_pb2, inference_pb2, inference_pb2_grpc

from .hostile import Case, Expect, Transport, phantom_png

OPTIONS_HEADER = "x-cxrexplain-options"
MEASURING_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}
_MAX_MESSAGE = 80 * 2**20  # above the 64 MiB max_request_size, so the frontend, not this client, refuses


class Server(Protocol):
    """What a probe needs of a server (``export.launcher.TorchServe`` has it)."""

    @property
    def url(self) -> str: ...

    @property
    def management_url(self) -> str: ...

    @property
    def grpc_target(self) -> str: ...

    def key(self, kind: str = "inference") -> str: ...


@dataclass
class Answer:
    """What the client saw. ``status``: the HTTP status over REST; over gRPC the reply's ``error.code`` (200
    without one), ``None`` when the call failed with ``grpc_code``. ``error_type`` is the project's error type,
    or TorchServe's JSON ``type`` for its own refusals. ``growth_mb``: the worker's peak growth (MB), when
    measured; ``pid_after``: the worker's pid after the case."""

    status: int | None
    error_type: str | None
    message: str
    seconds: float
    empty_body: bool = False
    grpc_code: str | None = None
    growth_mb: float | None = None
    pid_before: int | None = None
    pid_after: int | None = None


def _proc_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


class Probe:
    """Sends cases to ``model`` on ``server``; one HTTP client and one gRPC channel, closed by :meth:`close`."""

    def __init__(self, server: Server, model: str):
        self.server = server
        self.model = model
        self.http = httpx.Client(timeout=300)
        self.channel = grpc.insecure_channel(server.grpc_target, options=[
            ("grpc.max_send_message_length", _MAX_MESSAGE), ("grpc.max_receive_message_length", _MAX_MESSAGE)])
        self.stub = inference_pb2_grpc.InferenceAPIsServiceStub(self.channel)

    def close(self) -> None:
        self.http.close()
        self.channel.close()

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the worker -------------------------------------------------------------------------------------------
    def worker_pid(self) -> int:
        r = self.http.get(f"{self.server.management_url}/models/{self.model}",
                          headers={"Authorization": f"Bearer {self.server.key('management')}"})
        r.raise_for_status()
        workers = [w for w in r.json()[0]["workers"] if w.get("status") == "READY"] or r.json()[0]["workers"]
        return int(workers[0]["pid"])

    # --- cases ------------------------------------------------------------------------------------------------
    def send(self, case: Case, transport: Transport, expect: Expect | None = None) -> Answer:
        """Send ``case`` over ``transport``; with ``expect.budget_mb`` set, measure the worker's peak growth."""
        measure = expect is not None and expect.budget_mb is not None
        pid = self.worker_pid()
        before = 0
        if measure:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
            before = _proc_kib(pid, "VmRSS")
        answer = self._rest(case) if transport == "rest" else self._grpc(case)
        answer.pid_before = pid
        if measure:
            answer.growth_mb = (_proc_kib(pid, "VmHWM") - before) * 1024 / 1e6
        answer.pid_after = self.worker_pid()
        return answer

    def good(self, transport: Transport) -> Answer:
        """A plain prediction of a small PNG: the worker still serves."""
        return self.send(Case("good", Expect("accepted"), Expect("accepted"), body=phantom_png), transport)

    def _model_path(self, case: Case) -> str:
        model = case.model.replace("{model}", self.model)
        return f"/predictions/{model}" + (f"/{case.version}" if case.version else "")

    def _token(self, case: Case) -> str | None:
        return {"inference": self.server.key("inference"), "management": self.server.key("management"),
                "wrong": "not-the-key", "none": None}[case.token]

    def _rest(self, case: Case) -> Answer:
        headers: dict[str, str] = {}
        token = self._token(case)
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if case.options:
            headers[OPTIONS_HEADER] = urllib.parse.urlencode(case.options)
        if case.content_type:
            headers["Content-Type"] = case.content_type
        headers.update(case.headers)
        kwargs: dict[str, Any] = {}
        if case.parts:
            kwargs["files"] = [(name, (name, value, "application/octet-stream")) for name, value in case.multipart()]
        else:
            kwargs["content"] = case.payload()
        start = time.perf_counter()
        r = self.http.post(f"{self.server.url}{self._model_path(case)}", headers=headers, **kwargs)
        seconds = time.perf_counter() - start
        try:
            body = r.json()
        except ValueError:
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):  # the project's error body
            return Answer(r.status_code, error.get("type"), str(error.get("message", "")), seconds)
        if isinstance(body, dict) and "code" in body and r.status_code != 200:  # TorchServe's own
            return Answer(r.status_code, body.get("type"), str(body.get("message", "")), seconds)
        return Answer(r.status_code, None, r.text[:200], seconds, empty_body=not r.content)

    def _grpc(self, case: Case) -> Answer:
        inputs: dict[str, bytes] = dict(case.multipart()) if case.parts else {"data": case.payload()}
        options = case.grpc_options if case.grpc_options is not None else {
            k: v.encode() for k, v in case.options.items()}
        inputs.update(options)
        token = self._token(case)
        metadata = [("authorization", f"Bearer {token}")] if token is not None else []
        request = inference_pb2.PredictionsRequest(model_name=case.model.replace("{model}", self.model),
                                                   model_version=case.version or "", input=inputs)
        start = time.perf_counter()
        try:
            reply = self.stub.Predictions(request, metadata=metadata, timeout=300)
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            return Answer(None, None, str(exc.details()), time.perf_counter() - start,  # type: ignore[attr-defined]
                          grpc_code=code.name if code is not None else None)
        seconds = time.perf_counter() - start
        message = explain_pb2.ExplainResponse.FromString(reply.prediction)
        if message.HasField("error"):
            return Answer(message.error.code, message.error.type, message.error.message, seconds, grpc_code="OK")
        return Answer(200, None, "", seconds, grpc_code="OK")


def problems(case: Case, transport: Transport, expect: Expect, answer: Answer) -> list[str]:
    """How ``answer`` differs from ``expect`` (empty: as expected), in words for an assertion message."""
    out: list[str] = []
    got = (f"got status={answer.status} type={answer.error_type} grpc={answer.grpc_code} "
           f"message={answer.message[:160]!r}")
    if expect.level == "frontend" and transport == "grpc":
        if answer.grpc_code not in expect.grpc_codes:
            out.append(f"expected gRPC {'/'.join(expect.grpc_codes)}; {got}")
    elif expect.level == "frontend":
        if answer.status != expect.status:
            out.append(f"expected TorchServe's {expect.status}; {got}")
        if expect.error_type is None and not answer.empty_body:
            out.append(f"expected TorchServe's empty body; {got}")
        if expect.error_type is not None and answer.error_type != expect.error_type:
            out.append(f"expected TorchServe's type {expect.error_type}; {got}")
    elif expect.level == "handler":
        if (answer.status, answer.error_type) != (expect.status, expect.error_type):
            out.append(f"expected {expect.status} {expect.error_type}; {got}")
        if transport == "grpc" and answer.grpc_code != "OK":
            out.append(f"expected the error in an OK reply's payload; {got}")
    elif expect.status == 0:  # accepted by the schema: 200, or a later 4xx that names the option
        if answer.status != 200 and not (answer.status and 400 <= answer.status < 500):
            out.append(f"expected 200 or a 4xx naming {expect.mention}; {got}")
    elif answer.status != 200:
        out.append(f"expected 200; {got}")
    naming = expect.mention is not None and (expect.level != "accepted" or answer.status != 200)
    if naming and expect.mention is not None and expect.mention.lower() not in answer.message.lower():
        out.append(f"expected the message to name {expect.mention!r}; {got}")
    if expect.budget_mb is not None and answer.growth_mb is not None and answer.growth_mb > expect.budget_mb:
        out.append(f"the worker's peak grew {answer.growth_mb:.0f} MB, above the {expect.budget_mb} MB budget")
    if answer.pid_before is not None and answer.pid_after != answer.pid_before:
        out.append(f"the worker died: pid {answer.pid_before} -> {answer.pid_after}")
    return out


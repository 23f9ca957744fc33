"""The hostile corpus (``cxrexplain_lab.hostile``) against a real TorchServe, every case over REST and gRPC.

Each case states its answer: a handler-level refusal is the project's error body (status and error type) and its
worker memory is measured (peak growth within 20 MB for option and header refusals, 300 MB for any decode); a
frontend-level refusal keeps TorchServe's shape (413 with an empty body, 404, 400 InvalidKeyException; the gRPC
status code). After each case (after each option's values for the generated option cases) a good request
succeeds on the same worker: no case kills it or loses another request. Times are recorded by
``benchmarks/bench_refusals.py``, not asserted here.

One server for the module; its worker runs with ``MALLOC_MMAP_THRESHOLD_`` set (``hostile_probe.MEASURING_ENV``)
so each case's peak is its own, not hidden by memory an earlier case freed.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from served import build_store

from cxrexplain_lab import hostile
from cxrexplain_lab.hostile_probe import MEASURING_ENV, Probe, problems
from export.launcher import Ports, TorchServe

pytestmark = pytest.mark.serve

MODEL = "cxr"
FIXED = hostile.body_cases() + hostile.request_cases() + hostile.frontend_cases()
OPTIONS = hostile.option_cases()
GROUPS = list(dict.fromkeys(case.group for case in OPTIONS))


@pytest.fixture(scope="module")
def server(tmp_path_factory, phantom_classifier, phantom_autoencoder) -> Iterator[TorchServe]:
    store = build_store(tmp_path_factory.mktemp("export"), [
        # batching on (as served), with a short delay: the corpus is sent one request at a time
        {"name": MODEL, "kind": "classifier", "architecture": "densenet_small", "weights": "weights/clf.pt",
         "autoencoder": "cxr-ae", "batch_size": 4, "max_batch_delay_ms": 5, "version": "1.0",
         "caps": {"max_work_units": 400}},
        {"name": "cxr-ae", "kind": "autoencoder", "architecture": "resnet_ae_small", "weights": "weights/ae.pt"},
    ], phantom_classifier, phantom_autoencoder)
    with pytest.MonkeyPatch.context() as mp:
        for name, value in MEASURING_ENV.items():
            mp.setenv(name, value)
        ts = TorchServe(store, tmp_path_factory.mktemp("run"), ports=Ports.free(), models=f"{MODEL}.mar").start()
    try:
        yield ts
    finally:
        ts.stop()


@pytest.fixture(scope="module")
def probe(server) -> Iterator[Probe]:
    with Probe(server, MODEL) as p:
        yield p


def _ids(cases: list[hostile.Case]) -> list[str]:
    return [case.name for case in cases]


def _params(transport: hostile.Transport) -> list:
    return [pytest.param(case, expect, id=case.name) for case, expect in hostile.walk(FIXED, transport)]


def _still_serves(probe: Probe, transport: hostile.Transport, pid: int) -> None:
    good = probe.good(transport)
    assert good.status == 200, f"the good request after the case failed: {good}"
    assert good.pid_after == pid, "the worker was replaced"


def test_the_corpus_is_large_and_covers_both_transports():
    """At least 40 cases on each transport; a case missing from gRPC says why."""
    every = FIXED + OPTIONS
    for transport in hostile.TRANSPORTS:
        assert len(list(hostile.walk(every, transport))) >= 40
    assert all(case.note for case in every if case.grpc is None)
    assert len(set(_ids(every))) == len(every), "case names must be unique"


@pytest.mark.parametrize(("case", "expect"), _params("rest"))
def test_rest(probe, case, expect):
    answer = probe.send(case, "rest", expect)
    assert not problems(case, "rest", expect, answer), problems(case, "rest", expect, answer)
    _still_serves(probe, "rest", answer.pid_before or 0)


@pytest.mark.parametrize(("case", "expect"), _params("grpc"))
def test_grpc(probe, case, expect):
    answer = probe.send(case, "grpc", expect)
    assert not problems(case, "grpc", expect, answer), problems(case, "grpc", expect, answer)
    _still_serves(probe, "grpc", answer.pid_before or 0)


@pytest.mark.parametrize("transport", hostile.TRANSPORTS)
@pytest.mark.parametrize("group", GROUPS)
def test_every_option_with_hostile_values(probe, group, transport):
    """Generated from the options schema: every value of one option answers as the schema's parser says (422 naming
    the option) or, when it accepts the value, 200 or a 4xx naming the option; never a 5xx."""
    found = []
    pid = probe.worker_pid()
    for case, expect in hostile.walk([c for c in OPTIONS if c.group == group], transport):
        found += [f"{case.name}: {p}" for p in problems(case, transport, expect, probe.send(case, transport, expect))]
    assert not found, "\n".join(found)
    _still_serves(probe, transport, pid)

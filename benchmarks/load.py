"""Load on a running cxrexplain TorchServe: concurrent SDK clients mixing predictions and explanations, latency
percentiles per request kind, failed or invalid answers, and the workers' resident memory.

One generator for the short load tests (``tests/reliability/test_load.py``, ``test_slow_clients.py``) and the
soak (``python -m benchmarks.soak``, ``make soak``), so the test and the soak measure the same thing.

The clients are :class:`cxrexplain_client.AsyncExplainClient` coroutines on one event loop: 16 of them cost a
2-core machine one thread, not 16, and leave the cores to the server being measured. Each client is closed-loop
(its next call starts when its last one ended), half over REST and half over gRPC; it calls every kind of the
mix once, then picks each call's kind at random by weight with its own seeded generator.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import statistics
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from cxrexplain_client import AsyncExplainClient, Explanation

log = logging.getLogger("benchmarks.load")


@dataclass(frozen=True)
class Kind:
    """One kind of call: ``predict`` when ``methods`` is empty, else ``explain`` with these methods."""

    name: str
    methods: tuple[str, ...] = ()
    weight: float = 1.0
    options: Mapping[str, Any] = field(default_factory=dict)


# Predictions and cheap maps most, a heavier map (LRP: a backward pass with rules), and now and then a latent
# shift with few frames (an encode, a gradient and one decode per frame: the costliest call of the mix).
DEFAULT_MIX: tuple[Kind, ...] = (
    Kind("predict", weight=3.0),
    Kind("cam", ("cam",), 3.0),
    Kind("gradcam", ("gradcam",), 2.0),
    Kind("lrp", ("lrp",), 2.0),
    Kind("latent_shift", ("latent_shift",), 0.5, {"frames": 3}),
)


@dataclass(frozen=True)
class Server:
    """Where the clients go: the inference addresses, the key file, the model, and its first label's index."""

    url: str
    grpc_target: str
    token_file: Path
    model: str
    target: int = 0


@dataclass(frozen=True)
class Sample:
    kind: str
    transport: str
    seconds: float
    started: float  # time.monotonic() at the call's start


@dataclass
class LoadResult:
    """Every successful call's latency, every failure's description, and the SDK's retries, for one run."""

    clients: int
    seconds: float
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    retries: list[str] = field(default_factory=list)

    def latencies(self, kind: str | None = None, transport: str | None = None) -> list[float]:
        return [s.seconds for s in self.samples
                if (kind is None or s.kind == kind) and (transport is None or s.transport == transport)]

    @property
    def requests_per_s(self) -> float:
        return len(self.samples) / self.seconds if self.seconds else 0.0

    def rows(self) -> list[list[Any]]:
        """Table rows: each kind, each transport, then all calls: n, p50, p95, p99 (ms)."""
        groups: list[tuple[str, str | None, str | None]] = [
            (k, k, None) for k in dict.fromkeys(s.kind for s in self.samples)]
        groups += [(f"all {t}", None, t) for t in ("rest", "grpc")] + [("all", None, None)]
        rows: list[list[Any]] = []
        for label, kind, transport in groups:
            values = self.latencies(kind, transport)
            if values:
                rows.append([label, len(values), *(1000 * p for p in percentiles(values))])
        return rows


def percentiles(values: Sequence[float]) -> tuple[float, float, float]:
    """p50, p95, p99 (linear interpolation between samples; the one value when there is one)."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49], cuts[94], cuts[98]


def check(kind: Kind, ex: Explanation) -> str | None:
    """What is wrong with an answer to ``kind``, or None: findings with probabilities in [0, 1], and for an
    explanation one target with a finite map per method (``latent_shift``: the frames asked for)."""
    if not ex.findings or not all(0.0 <= f.probability <= 1.0 for f in ex.findings):
        return f"findings missing or out of range: {ex.findings!r}"
    if not kind.methods:
        return None if not ex.results else f"a prediction carried results: {sorted(ex.results)}"
    if len(ex.results) != 1:
        return f"expected one target, got {sorted(ex.results)}"
    result = next(iter(ex.results.values()))
    for method in kind.methods:
        if method == "latent_shift":
            frames = kind.options.get("frames", 10)
            shift = result.latent_shift
            if shift is None or shift.frames.shape[0] != frames or not np.isfinite(shift.frames).all():
                return f"latent_shift: expected {frames} finite frames, got {shift!r}"
        elif method not in result.heatmaps or not np.isfinite(result.heatmaps[method]).all():
            return f"{method}: no finite heatmap (have {sorted(result.heatmaps)})"
    return None


class _RetryLog(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.INFO)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        if "retrying in" in record.getMessage():
            self.into.append(record.getMessage())


@contextlib.contextmanager
def sdk_retries() -> Iterator[list[str]]:
    """The SDK's retry decisions while the block runs (its INFO lines "... retrying in ..."): a retried call
    succeeds, so only these show that the server refused or lost it once."""
    retries: list[str] = []
    sdk_log = logging.getLogger("cxrexplain_client")
    handler, level = _RetryLog(retries), sdk_log.level
    sdk_log.addHandler(handler)
    sdk_log.setLevel(logging.INFO)
    try:
        yield retries
    finally:
        sdk_log.removeHandler(handler)
        sdk_log.setLevel(level)


async def _client(index: int, server: Server, image: bytes, mix: Sequence[Kind], deadline: float,
                  result: LoadResult, timeout_s: float, seed: int) -> None:
    transport = ("rest", "grpc")[index % 2]
    rng = random.Random(seed * 1000 + index)
    weights = [k.weight for k in mix]
    # Every kind once first (rotated per client), then at random: each kind is measured even in a short run.
    first = [mix[(index + i) % len(mix)] for i in range(len(mix))]
    async with AsyncExplainClient(server.url, server.grpc_target, token_file=server.token_file,
                                  transport=transport, timeout=timeout_s) as client:
        while time.monotonic() < deadline:
            kind = first.pop(0) if first else rng.choices(mix, weights)[0]
            started = time.monotonic()
            try:
                if kind.methods:
                    ex = await client.explain(image, server.model, methods=list(kind.methods),
                                              targets=[server.target], **kind.options)
                else:
                    ex = await client.predict(image, server.model)
                problem = check(kind, ex)
            except Exception as exc:  # noqa: BLE001 - under load every failure is counted and described
                cause = f" (cause {exc.__cause__!r})" if exc.__cause__ is not None else ""
                problem = f"{type(exc).__name__}: {exc}{cause}"
            elapsed = time.monotonic() - started
            if problem is None:
                result.samples.append(Sample(kind.name, transport, elapsed, started))
            else:
                result.errors.append(f"{kind.name}/{transport} after {elapsed:.2f} s: {problem}")


async def load_async(server: Server, image: bytes, clients: int, seconds: float, mix: Sequence[Kind] = DEFAULT_MIX,
                     timeout_s: float = 120.0, seed: int = 0) -> LoadResult:
    """``clients`` concurrent SDK clients calling for ``seconds`` (each finishes the call it is in)."""
    result = LoadResult(clients, seconds)
    start = time.monotonic()
    with sdk_retries() as retries:
        await asyncio.gather(*(_client(i, server, image, mix, start + seconds, result, timeout_s, seed)
                               for i in range(clients)))
    result.retries.extend(retries)
    result.seconds = time.monotonic() - start
    return result


def load(server: Server, image: bytes, clients: int, seconds: float, mix: Sequence[Kind] = DEFAULT_MIX,
         timeout_s: float = 120.0, seed: int = 0) -> LoadResult:
    """:func:`load_async` on a fresh event loop, for callers without one."""
    return asyncio.run(load_async(server, image, clients, seconds, mix, timeout_s, seed))


# --- worker memory -------------------------------------------------------------------------------------------
def worker_pids(management_url: str, headers: Mapping[str, str]) -> dict[str, list[int]]:
    """Model name -> its workers' process ids, from the management API (``GET /models``, ``GET /models/<name>``)."""
    with httpx.Client(base_url=management_url, headers=dict(headers), timeout=30) as http:
        names = [m["modelName"] for m in http.get("/models").raise_for_status().json()["models"]]
        return {name: [int(w["pid"]) for desc in http.get(f"/models/{name}").raise_for_status().json()
                       for w in desc["workers"] if w.get("pid")] for name in names}


def rss_mb(pid: int) -> float:
    """A process's resident memory now (``VmRSS`` of ``/proc/<pid>/status``), MiB; NaN when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return math.nan


def worker_rss(management_url: str, headers: Mapping[str, str]) -> dict[tuple[str, int], float]:
    """(model, pid) -> RSS in MiB, for every worker of every model."""
    return {(model, pid): rss_mb(pid) for model, pids in worker_pids(management_url, headers).items()
            for pid in pids}

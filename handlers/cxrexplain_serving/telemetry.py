"""Metric names, request ids and request logs of the server, with no TorchServe import and no patient data.

The metrics are emitted through a *sink* the TorchServe handler supplies (TorchServe's metrics cache writes
one ``[METRICS]`` log line per update, which the frontend turns into Prometheus series). A metric reaches
Prometheus only if ``model_store/metrics.yaml`` declares it under ``model_metrics`` with exactly the
dimension names below (TorchServe appends ``Hostname`` itself); :func:`metrics_yaml_section` produces that
section, and a test checks the YAML against it. Latencies are in seconds, so they land in the frontend's fixed
histogram buckets (5 ms to 10 s).

Request logs carry the request id, model, kind, methods, status and timings: never pixel values, DICOM
attributes or anything read from the image.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MetricSpec:
    """One model metric as declared in the metrics YAML."""

    name: str
    kind: str  # counter | gauge | histogram (TorchServe's MetricTypes values)
    unit: str
    dimensions: tuple[str, ...]


METHOD_LATENCY = MetricSpec("cxrexplain_method_latency_seconds", "histogram", "Seconds", ("ModelName", "Method"))
REQUESTS = MetricSpec("cxrexplain_requests_total", "counter", "Count", ("ModelName", "Method", "Status"))
DECODE_ERRORS = MetricSpec("cxrexplain_decode_errors_total", "counter", "Count", ("ModelName", "Reason"))
RECONSTRUCTION_GAP = MetricSpec("cxrexplain_reconstruction_gap", "histogram", "Probability", ("ModelName",))
WORKER_STARTS = MetricSpec("cxrexplain_worker_starts_total", "counter", "Count", ("ModelName", "Device"))
ALL_METRICS = (METHOD_LATENCY, REQUESTS, DECODE_ERRORS, RECONSTRUCTION_GAP, WORKER_STARTS)

Sink = Callable[[MetricSpec, float, list[str], str], None]

# A dimension value goes into a "Name:value,Name:value" log field the frontend parses with a regex.
_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]")


def metrics_yaml_section() -> dict[str, list[dict[str, object]]]:
    """The ``model_metrics`` section TorchServe needs for :data:`ALL_METRICS` (grouped by kind)."""
    section: dict[str, list[dict[str, object]]] = {}
    for spec in ALL_METRICS:
        section.setdefault(spec.kind, []).append(
            {"name": spec.name, "unit": spec.unit, "dimensions": list(spec.dimensions)})
    return section


def new_request_id() -> str:
    """A fresh request id (uuid4), for requests that bring none."""
    return str(uuid.uuid4())


def _dimension(value: object) -> str:
    return _UNSAFE.sub("_", str(value))[:64] or "none"


class Telemetry:
    """Emit the service's metrics and request logs.

    Parameters
    ----------
    model_name
        The value of the ``ModelName`` dimension.
    sink
        ``sink(spec, value, dimension_values, request_id)``; ``None`` keeps only the logs (tests, notebooks).
    """

    def __init__(self, model_name: str, sink: Sink | None = None):
        self.model_name = model_name
        self.sink = sink

    def _emit(self, spec: MetricSpec, value: float, values: Iterable[object], request_id: str = "") -> None:
        if self.sink is None:
            return
        dims = [_dimension(self.model_name), *(_dimension(v) for v in values)]
        try:
            self.sink(spec, float(value), dims, request_id)
        except Exception:  # a metrics failure must never fail a request
            log.warning("could not emit metric %s", spec.name, exc_info=True)

    def method_latency(self, method: str, seconds: float, request_id: str = "") -> None:
        self._emit(METHOD_LATENCY, seconds, [method], request_id)

    def request(self, method: str, status: int, request_id: str = "") -> None:
        self._emit(REQUESTS, 1, [method, status], request_id)

    def decode_error(self, reason: str, request_id: str = "") -> None:
        self._emit(DECODE_ERRORS, 1, [reason], request_id)

    def reconstruction_gap(self, gap: float, request_id: str = "") -> None:
        """|f(x) - f(D(E(x)))| in probability: a histogram, so its buckets (0.005 .. 10) read as a gap size."""
        self._emit(RECONSTRUCTION_GAP, abs(gap), [], request_id)

    def worker_started(self, device: str) -> None:
        self._emit(WORKER_STARTS, 1, [device])
        log.info("worker started: model=%s device=%s", self.model_name, device)

    def log_request(self, request_id: str, kind: str, methods: Iterable[str], status: int,
                    timings_ms: Mapping[str, float], error_type: str | None = None) -> None:
        """One line per request; only ids, names, codes and timings."""
        timings = " ".join(f"{k}={v:.1f}" for k, v in sorted(timings_ms.items()))
        log.info("request_id=%s model=%s kind=%s methods=%s status=%d%s timings_ms[%s]", request_id,
                 self.model_name, kind, ",".join(methods) or "-", status,
                 f" error={error_type}" if error_type else "", timings)

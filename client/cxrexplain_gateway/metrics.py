"""The gateway's Prometheus metrics, named like the server's (``cxrexplain_<what>_total``, ``_seconds``).

Each gateway has its own registry (two gateways in one process, as in the tests, never share counters); the
exposition server is prometheus_client's, on the configured metrics host and port. Labels carry kinds and
reasons only, never UIDs or anything read from an image.
"""

from __future__ import annotations

from threading import Thread
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# Explaining one chest X-ray takes seconds (latent shift: tens of seconds on a CPU); retries add minutes.
_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)


class GatewayMetrics:
    """Counters, gauges and histograms of one gateway."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.received = Counter("cxrexplain_gateway_received", "Chest X-ray instances received by C-STORE "
                                "and written to disk", registry=r)
        self.refused = Counter("cxrexplain_gateway_refused", "Associations, presentation contexts and "
                               "C-STOREs refused", ["Reason"], registry=r)
        self.explained = Counter("cxrexplain_gateway_explained", "Instances explained and sent", registry=r)
        self.attempt_errors = Counter("cxrexplain_gateway_attempt_errors", "Failed attempts at an instance "
                                      "(after the SDK's own retries)", ["Error"], registry=r)
        self.failed = Counter("cxrexplain_gateway_failed", "Instances given up after the bounded retries "
                              "(left in storage/failed)", registry=r)
        self.sent = Counter("cxrexplain_gateway_sent", "DICOM objects sent to the destination", ["Output"],
                            registry=r)
        self.in_flight = Gauge("cxrexplain_gateway_in_flight", "Instances being explained or sent now",
                               registry=r)
        self.pending = Gauge("cxrexplain_gateway_pending", "Instances received and not yet done or failed",
                             registry=r)
        self.explain_seconds = Histogram("cxrexplain_gateway_explain_seconds",
                                         "Seconds of one SDK explain call", buckets=_BUCKETS, registry=r)
        self.send_seconds = Histogram("cxrexplain_gateway_send_seconds", "Seconds to send one instance's "
                                      "results", buckets=_BUCKETS, registry=r)
        self.instance_seconds = Histogram("cxrexplain_gateway_instance_seconds", "Seconds from receiving an "
                                          "instance to its results sent", buckets=_BUCKETS, registry=r)
        self._server: WSGIServer | None = None
        self._thread: Thread | None = None

    def serve(self, host: str, port: int) -> None:
        """Expose ``/metrics`` on ``host:port`` (a daemon thread)."""
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

"""One gateway: the DICOM node, the worker pool, the on-disk store, the SDK client and the metrics, started
and stopped together."""

from __future__ import annotations

import logging
from types import TracebackType

from cxrexplain_client import ExplainClient, RetryPolicy

from .config import GatewayConfig
from .metrics import GatewayMetrics
from .node import DicomNode
from .send import make_sender
from .store import InstanceStore
from .worker import Worker

log = logging.getLogger(__name__)


class Gateway:
    """``with Gateway(config): ...`` listens until the block ends; instances pending on disk are taken up
    first."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.metrics = GatewayMetrics()
        self.store = InstanceStore(config.storage)
        svc = config.service
        # The SDK retries lost answers within its budget and re-reads the token file (TorchServe rotates it at
        # each start); the worker's retries count whole instances after that.
        self.client = ExplainClient(url=svc.url, grpc_target=svc.grpc_target,
                                    token_file=svc.token_file, timeout=svc.timeout_s, transport=svc.transport,
                                    retry_policy=RetryPolicy(budget=svc.retry_budget_s))
        self.destination = make_sender(config.destination)
        self.worker = Worker(config, self.store, self.client, self.destination, self.metrics)
        self.node = DicomNode(config.listen, self.store, self.metrics, self.worker.submit)

    def start(self) -> Gateway:
        if self.config.metrics is not None:
            self.metrics.serve(self.config.metrics.host, self.config.metrics.port)
        self.worker.start()
        pending = self.store.pending()
        for record in pending:
            self.worker.submit(record.uid)
        if pending:
            log.info("took up %d instance(s) pending in %s", len(pending), self.store.incoming)
        self.node.start()
        log.info("results go to %s; outputs %s; model %s", self.destination.describe(),
                 ", ".join(self.config.outputs), self.config.service.model)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop listening, finish the instances in flight (up to ``timeout``), leave the rest pending on
        disk."""
        self.node.stop()
        self.worker.stop(timeout)
        self.client.close()
        self.metrics.close()
        log.info("gateway stopped")

    def __enter__(self) -> Gateway:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

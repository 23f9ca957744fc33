"""The bounded pool that explains received instances through the SDK and sends their DICOM results.

An instance is worked on by one thread at a time: read from disk, explained (the SDK retries lost answers and
re-reads the token itself), turned into DICOM objects (:func:`cxrexplain_dicom.dicom_results`), sent, and
marked done. A failed attempt is logged (request id, SOP Instance UID, error; no patient data), counted on
disk and tried again after a growing delay; after ``retries`` more attempts the instance is left in
``failed/``. Errors that another attempt cannot cure (the service refused the image, results that cannot be
built) fail at once. Nothing here stops the node: every error ends in the instance's state.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid

from cxrexplain_client import ExplainClient, InvalidInput, ModelDescription
from cxrexplain_client.results import Explanation
from cxrexplain_dicom import dicom_results

from .config import GatewayConfig
from .metrics import GatewayMetrics
from .send import Destination
from .store import InstanceStore

log = logging.getLogger(__name__)

_OUTPUT_OF = {"latent_shift_cines": "latent_shift_cine", "parametric_maps": "parametric_map",
              "secondary_captures": "secondary_capture", "sr": "sr"}


class Worker:
    """``concurrency`` threads over a queue of SOP Instance UIDs; :meth:`submit` is safe from any thread."""

    def __init__(self, config: GatewayConfig, store: InstanceStore, client: ExplainClient,
                 destination: Destination, metrics: GatewayMetrics) -> None:
        self.config, self.store, self.client = config, store, client
        self.destination, self.metrics = destination, metrics
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._lock = threading.Lock()
        self._queued: set[str] = set()  # queued, in flight or waiting for a retry: never twice at once
        self._timers: dict[str, threading.Timer] = {}
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._descriptions: dict[str, ModelDescription] = {}

    # ---------------------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        for n in range(self.config.processing.concurrency):
            thread = threading.Thread(target=self._run, name=f"cxrexplain-gateway-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the instances in flight (up to ``timeout``); the rest stay pending on disk for the next
        start."""
        self._stopping.set()
        with self._lock:
            for timer in self._timers.values():
                timer.cancel()
            self._timers.clear()
        for _ in self._threads:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        still = [t.name for t in self._threads if t.is_alive()]
        if still:
            log.warning("stopped with %d instance(s) in flight; they stay pending in %s", len(still),
                        self.store.incoming)

    def submit(self, uid: str) -> None:
        """Queue an instance (once: a UID already queued, in flight or waiting for a retry is not queued
        again)."""
        with self._lock:
            if uid in self._queued or self._stopping.is_set():
                return
            self._queued.add(uid)
        self.metrics.pending.inc()
        self._queue.put(uid)

    # ------------------------------------------------------------------------------------------- the work
    def _run(self) -> None:
        while True:
            uid = self._queue.get()
            if uid is None or self._stopping.is_set():
                return
            self.metrics.in_flight.inc()
            try:
                self._process(uid)
            except Exception:  # a bug must not kill the thread: the instance stays pending for the next start
                log.exception("unexpected error on SOP instance %s; it stays pending", uid)
                self._forget(uid)
            finally:
                self.metrics.in_flight.dec()

    def _process(self, uid: str) -> None:
        request_id = f"gw-{uuid.uuid4().hex}"  # sent with the request, so the server's logs name it too
        record = self.store.record(uid)
        try:
            source = self.store.load(uid)
            service = self.config.service
            started = time.monotonic()
            explanation = self.client.explain(
                source, service.model, list(service.methods),
                service.targets if isinstance(service.targets, str) else list(service.targets),
                request_id=request_id, heatmap_format="array",
            )
            self.metrics.explain_seconds.observe(time.monotonic() - started)
            objects = dicom_results(source, explanation, self._describe(explanation), self.config.outputs)
            started = time.monotonic()
            datasets = list(objects)
            self.destination.send(datasets)
            self.metrics.send_seconds.observe(time.monotonic() - started)
        except Exception as exc:
            self._attempt_failed(uid, exc, getattr(exc, "request_id", None) or request_id)
            return
        for name, output in _OUTPUT_OF.items():
            self.metrics.sent.labels(output).inc(len(getattr(objects, name)))
        self.store.mark_done(uid, [str(ds.SOPInstanceUID) for ds in datasets], explanation.request_id)
        self.metrics.explained.inc()
        if record is not None:
            self.metrics.instance_seconds.observe(max(0.0, time.time() - record.received_at))
        self._forget(uid)
        log.info("SOP instance %s explained (request %s): %d objects sent to %s", uid, explanation.request_id,
                 len(datasets), self.destination.describe())

    def _describe(self, explanation: Explanation) -> ModelDescription:
        """The model's description (weights sha256 for the algorithm's identification), once per version."""
        key = f"{explanation.model_name}/{explanation.model_version}"
        if key not in self._descriptions:
            self._descriptions[key] = self.client.describe(explanation.model_name,
                                                           version=explanation.model_version or None)
        return self._descriptions[key]

    def _attempt_failed(self, uid: str, exc: Exception, request_id: str) -> None:
        error = f"{type(exc).__name__}: {exc}"
        record = self.store.attempt_failed(uid, error, request_id)
        self.metrics.attempt_errors.labels(type(exc).__name__).inc()
        # The service refused the image, or the results cannot be built from it: no retry would change that.
        permanent = isinstance(exc, InvalidInput | ValueError)
        if self._stopping.is_set() and not permanent:
            log.warning("SOP instance %s attempt %d failed while stopping (request %s): %s; it stays pending",
                        uid, record.attempts, request_id, error)
            self._forget(uid)
            return
        if permanent or record.attempts > self.config.processing.retries:
            self.store.mark_failed(uid)
            self.metrics.failed.inc()
            self._forget(uid)
            log.error("SOP instance %s FAILED after %d attempt(s) (request %s): %s; left in %s", uid,
                      record.attempts, request_id, error, self.store.failed)
            return
        delay = self.config.processing.retry_delay_s * 2 ** (record.attempts - 1)
        log.warning("SOP instance %s attempt %d of %d failed (request %s): %s; trying again in %.1f s", uid,
                    record.attempts, self.config.processing.retries + 1, request_id, error, delay)
        timer = threading.Timer(delay, self._requeue, args=(uid,))
        timer.daemon = True
        with self._lock:
            self._timers[uid] = timer
        timer.start()

    def _requeue(self, uid: str) -> None:
        with self._lock:
            self._timers.pop(uid, None)
        if not self._stopping.is_set():
            self._queue.put(uid)

    def _forget(self, uid: str) -> None:
        with self._lock:
            self._queued.discard(uid)
        self.metrics.pending.dec()

"""The DICOM node: a pynetdicom Application Entity that accepts chest X-rays by C-STORE.

It negotiates only the CR and DX (for presentation, for processing) storage SOP classes (and Verification, for
C-ECHO), uncompressed or in the JPEG, JPEG 2000, JPEG-LS and RLE syntaxes, so a sender offering anything
else has that presentation context refused at association. A C-STORE whose Modality is not CR or DX is
answered with a failure status (0xA900) and a log line. An accepted instance is on disk (fsynced) before the
success status goes back; then it is queued for the worker pool.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    UID,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, DEFAULT_TRANSFER_SYNTAXES, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from .config import Listen
from .metrics import GatewayMetrics
from .store import InstanceStore, valid_uid

log = logging.getLogger(__name__)

CHEST_XRAY_SOP_CLASSES = (ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation,
                          DigitalXRayImageStorageForProcessing)
CHEST_XRAY_MODALITIES = ("CR", "DX")
# PACS archives keep CR and DX compressed as often as not, and a sender finding none of its syntaxes accepted
# must transcode or give up: so, besides the uncompressed ones, every syntax the service decodes and pydicom
# reads here for the overlays (with the `gateway` extra's pylibjpeg and pyjpegls plugins).
TRANSFER_SYNTAXES = [*DEFAULT_TRANSFER_SYNTAXES, JPEGLosslessSV1, JPEGLossless, JPEGBaseline8Bit,
                     JPEGExtended12Bit, JPEG2000Lossless, JPEG2000, JPEGLSLossless, JPEGLSNearLossless,
                     RLELossless]
# PS3.4 Annex B status codes answered to the sender.
SUCCESS, DOES_NOT_MATCH_SOP_CLASS, OUT_OF_RESOURCES = 0x0000, 0xA900, 0xA700


class DicomNode:
    """The listening AE; ``on_received(uid)`` is called for each instance once it is safely on disk."""

    def __init__(self, listen: Listen, store: InstanceStore, metrics: GatewayMetrics,
                 on_received: Callable[[str], None]) -> None:
        self.listen, self.store, self.metrics, self.on_received = listen, store, metrics, on_received
        self.ae = AE(ae_title=listen.ae_title)
        # Answer only to our own AE title; accept the calling titles configured (an empty list accepts any).
        self.ae.require_called_aet = True
        self.ae.require_calling_aet = list(listen.accept_calling or [])
        for sop_class in CHEST_XRAY_SOP_CLASSES:
            self.ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
        self.ae.add_supported_context(Verification)
        self._server: ThreadedAssociationServer | None = None

    @property
    def port(self) -> int:
        """The port listened on (the configured one)."""
        assert self._server is not None, "start() the node first"
        return int(self._server.server_address[1])

    def start(self) -> None:
        handlers: list[Any] = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_ACCEPTED, self._on_accepted),
                    (evt.EVT_REJECTED, self._on_rejected)]
        self._server = self.ae.start_server((self.listen.host, self.listen.port), block=False,
                                            evt_handlers=handlers)
        log.info("DICOM node %s listening on %s:%d (calling AE titles accepted: %s)", self.listen.ae_title,
                 self.listen.host, self.port, ", ".join(self.listen.accept_calling or ["ANY"]))

    def stop(self) -> None:
        """Stop listening; associations in progress are ended."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self.ae.shutdown()

    # -------------------------------------------------------------------------------------------- events
    def _on_accepted(self, event: evt.Event) -> None:
        for cx in event.assoc.rejected_contexts:
            self.metrics.refused.labels("sop_class").inc()
            log.warning("refused a presentation context from %s: SOP class %s is not a chest X-ray "
                        "(CR or DX)", event.assoc.requestor.ae_title, UID(cx.abstract_syntax or "").name)

    def _on_rejected(self, event: evt.Event) -> None:
        self.metrics.refused.labels("association").inc()
        log.warning("rejected an association from %s (%s) calling %s: not an accepted calling AE title, "
                    "or not our AE title %s", event.assoc.requestor.ae_title, event.assoc.requestor.address,
                    event.assoc.acceptor.ae_title, self.listen.ae_title)

    def _on_store(self, event: evt.Event) -> int | Dataset:
        calling = event.assoc.requestor.ae_title
        ds = event.dataset
        ds.file_meta = event.file_meta
        uid = ds.get("SOPInstanceUID")
        if not valid_uid(uid):
            return self._refuse(calling, "invalid_uid", "the SOP Instance UID is not a valid UID", "-")
        modality = ds.get("Modality")
        if modality not in CHEST_XRAY_MODALITIES:
            return self._refuse(calling, "modality", f"Modality {modality or '(none)'} is not a chest X-ray "
                                "(CR or DX): this node explains chest radiographs only", uid)
        try:
            self.store.receive(ds)
        except OSError as exc:
            log.error("could not store SOP instance %s from %s: %s; answered 0xA700 (out of resources)", uid,
                      calling, exc.strerror)
            return OUT_OF_RESOURCES
        self.metrics.received.inc()
        log.info("received SOP instance %s from %s", uid, calling)
        self.on_received(uid)
        return SUCCESS

    def _refuse(self, calling: str, reason: str, why: str, uid: str) -> Dataset:
        self.metrics.refused.labels(reason).inc()
        log.warning("refused SOP instance %s from %s: %s", uid, calling, why)
        status = Dataset()
        status.Status = DOES_NOT_MATCH_SOP_CLASS
        status.ErrorComment = why[:64]  # LO: 64 characters at most
        return status

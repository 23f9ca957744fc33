"""Destinations: where an instance's results go, by DIMSE C-STORE or by DICOMweb STOW-RS."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import requests
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from .config import DimseDestination, StowDestination

# C-STORE statuses that mean "stored": success, and the warnings of PS3.4 B.2.3 (coerced, elements discarded,
# dataset does not match the SOP class: the receiver kept it).
_STORED = {0x0000, 0xB000, 0xB006, 0xB007}


class SendError(RuntimeError):
    """The destination did not take the results (the message says which and why)."""


class Destination(Protocol):
    def send(self, datasets: Sequence[Dataset]) -> None:
        """Send every dataset, or raise :class:`SendError`."""

    def describe(self) -> str:
        """Where results go, for logs."""


class DimseSender:
    """C-STORE over one association per instance's results."""

    def __init__(self, dest: DimseDestination, timeout_s: float = 60.0) -> None:
        self.dest = dest
        self.timeout_s = timeout_s

    def describe(self) -> str:
        return f"{self.dest.ae_title}@{self.dest.host}:{self.dest.port} (C-STORE)"

    def send(self, datasets: Sequence[Dataset]) -> None:
        ae = AE(ae_title=self.dest.calling_ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        # Explicit VR first: a Parametric Map's float pixels (OF) keep their VR on the wire.
        for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
            ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        assoc = ae.associate(self.dest.host, self.dest.port, ae_title=self.dest.ae_title)
        if not assoc.is_established:
            why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "no answer"
            raise SendError(f"could not open an association with {self.describe()}: {why}; check the "
                            "destination's AE title, host and port, and that it accepts our calling AE title "
                            f"{self.dest.calling_ae_title}")
        try:
            for ds in datasets:
                status = assoc.send_c_store(ds)
                code = status.get("Status") if status else None
                if code not in _STORED:
                    shown = f"0x{code:04X}" if isinstance(code, int) else "no response"
                    comment = status.get("ErrorComment", "") if status else ""
                    raise SendError(f"{self.describe()} refused a {ds.SOPClassUID.name}: "
                                    f"status {shown} {comment}".rstrip())
        finally:
            if assoc.is_established:
                assoc.release()


class StowSender:
    """STOW-RS of an instance's results in one request (HTTP basic auth when configured)."""

    def __init__(self, dest: StowDestination, timeout_s: float = 60.0) -> None:
        self.dest = dest
        self.timeout_s = timeout_s

    def describe(self) -> str:
        return f"{self.dest.url} (STOW-RS)"

    def send(self, datasets: Sequence[Dataset]) -> None:
        session = requests.Session()
        if self.dest.username and self.dest.password_file:
            # Read at each send: a rotated password is picked up without a restart.
            try:
                password = self.dest.password_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise SendError(f"cannot read the STOW-RS password file {self.dest.password_file}: "
                                f"{exc.strerror}") from exc
            session.auth = (self.dest.username, password)
        # dicomweb-client's own retries are off: whole instances are retried by the gateway, with its bounds.
        client = DICOMwebClient(url=self.dest.url, session=session, timeout=self.timeout_s)
        client.set_http_retry_params(retry=False)
        try:
            reply = client.store_instances(list(datasets))
        except requests.RequestException as exc:
            status = getattr(exc.response, "status_code", None)
            hint = "; check username and password_file" if status in (401, 403) else ""
            raise SendError(f"{self.describe()} did not store the results: {exc}{hint}") from exc
        finally:
            session.close()
        failed = reply.get("FailedSOPSequence") if reply is not None else None
        if failed:
            raise SendError(f"{self.describe()} refused {len(failed)} of {len(datasets)} objects "
                            f"(FailureReason {failed[0].get('FailureReason')})")


def make_sender(dest: DimseDestination | StowDestination, timeout_s: float = 60.0) -> Destination:
    return DimseSender(dest, timeout_s) if isinstance(dest, DimseDestination) else StowSender(dest, timeout_s)

"""The gateway's state on disk: received instances and what became of them, so a restart loses nothing.

Layout under ``storage`` (names are SOP Instance UIDs only, never patient data)::

    incoming/<uid>.dcm   received, not yet done: picked up again on start
    incoming/<uid>.json  its state: attempts so far, last error, last request id
    failed/<uid>.dcm     given up after the bounded retries (kept for an operator: move both files back to
    failed/<uid>.json    incoming/ and restart to try again)
    done/<uid>.json      explained and sent: the SOP Instance UIDs of the objects sent (the image is deleted)

Every write goes to ``tmp/`` first, is fsynced and then renamed into place (and the folder fsynced), so a file
in ``incoming/`` is always whole, and it is on disk before the C-STORE response says it was received.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

import pydicom
from pydicom.dataset import Dataset

State = Literal["received", "done", "failed"]
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def valid_uid(uid: object) -> bool:
    """A DICOM UID (digits and dots, 64 characters at most): safe as a file name."""
    return isinstance(uid, str) and len(uid) <= 64 and _UID.match(uid) is not None


@dataclass
class Record:
    """What the gateway knows about one received instance (no patient data)."""

    uid: str
    state: State = "received"
    attempts: int = 0
    last_error: str | None = None
    request_id: str | None = None
    received_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    results: list[str] = field(default_factory=list)


class InstanceStore:
    """Received instances and their state under one folder (safe to use from several threads)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.incoming, self.failed = self.root / "incoming", self.root / "failed"
        self.done, self.tmp = self.root / "done", self.root / "tmp"
        for folder in (self.incoming, self.failed, self.done, self.tmp):
            folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    # --------------------------------------------------------------------------------------------- writes
    def receive(self, ds: Dataset) -> Record:
        """Write a received instance (with its file meta) and a fresh state, durably, before answering it.

        A second copy of an instance already pending replaces the first (same SOP Instance UID, same image).
        """
        uid = str(ds.SOPInstanceUID)
        if not valid_uid(uid):
            raise ValueError("the SOP Instance UID is not a valid UID")
        record = Record(uid)
        with self._lock:
            self._write(self.incoming / f"{uid}.dcm", lambda f: ds.save_as(f, enforce_file_format=True))
            self._write_record(self.incoming, record)
            _fsync_dir(self.incoming)
        return record

    def attempt_failed(self, uid: str, error: str, request_id: str | None) -> Record:
        """Count a failed attempt on a pending instance and keep its last error."""
        with self._lock:
            record = self._read_record(self.incoming, uid)
            record.attempts += 1
            record.last_error, record.request_id, record.updated_at = error, request_id, time.time()
            self._write_record(self.incoming, record)
            return record

    def mark_failed(self, uid: str) -> Record:
        """Give up on a pending instance: move it and its state to ``failed/``."""
        with self._lock:
            record = self._read_record(self.incoming, uid)
            record.state, record.updated_at = "failed", time.time()
            self._write_record(self.failed, record)
            os.replace(self.incoming / f"{uid}.dcm", self.failed / f"{uid}.dcm")
            (self.incoming / f"{uid}.json").unlink(missing_ok=True)
            _fsync_dir(self.failed)
            _fsync_dir(self.incoming)
            return record

    def mark_done(self, uid: str, results: list[str], request_id: str | None) -> Record:
        """Record the objects sent for an instance and delete the received image (the PACS holds it)."""
        with self._lock:
            record = self._read_record(self.incoming, uid)
            record.state, record.results, record.request_id = "done", results, request_id
            record.updated_at = time.time()
            self._write_record(self.done, record)
            _fsync_dir(self.done)
            # The image first: an incoming state file without its image is ignored on start.
            (self.incoming / f"{uid}.dcm").unlink(missing_ok=True)
            (self.incoming / f"{uid}.json").unlink(missing_ok=True)
            _fsync_dir(self.incoming)
            return record

    # ---------------------------------------------------------------------------------------------- reads
    def load(self, uid: str) -> Dataset:
        """The received instance, as it arrived."""
        return pydicom.dcmread(self.incoming / f"{uid}.dcm")

    def pending(self) -> list[Record]:
        """Instances received and not done nor failed, oldest first: the work a (re)start picks up."""
        with self._lock:
            records = [self._read_record(self.incoming, p.stem) for p in self.incoming.glob("*.dcm")]
        return sorted(records, key=lambda r: r.received_at)

    def record(self, uid: str) -> Record | None:
        """The state of an instance wherever it is, or ``None`` if it was never received."""
        with self._lock:
            for folder in (self.incoming, self.failed, self.done):
                if (folder / f"{uid}.json").exists() or (folder / f"{uid}.dcm").exists():
                    return self._read_record(folder, uid)
        return None

    # -------------------------------------------------------------------------------------------- helpers
    def _read_record(self, folder: Path, uid: str) -> Record:
        path = folder / f"{uid}.json"
        try:
            return Record(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            # The image arrived and its state did not (a crash between the two writes): a fresh state.
            return Record(uid, received_at=(folder / f"{uid}.dcm").stat().st_mtime)

    def _write_record(self, folder: Path, record: Record) -> None:
        data = json.dumps(asdict(record), indent=1).encode()
        self._write(folder / f"{record.uid}.json", lambda f: f.write(data))

    def _write(self, path: Path, write: Callable[[BinaryIO], object]) -> None:
        tmp = self.tmp / f"{path.name}.{threading.get_ident()}.part"
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (the entry, not only the file's bytes)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""A real Orthanc (Debian ``orthanc`` with ``orthanc-dicomweb``) for the tests: loopback ports, a temporary
storage, one test user. A plain module beside ``conftest.py``: ``from orthanc import Orthanc``.

    with Orthanc(tmp_path, modalities={"gateway": ("CXREXPLAIN", "127.0.0.1", 11112)}) as pacs:
        pacs.get("/studies")
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from export.launcher import free_port, stop_process_group

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
USER, PASSWORD = "gateway", "stow-secret"


class Orthanc:
    """An Orthanc process with REST (``url``), DICOMweb (``dicomweb_url``) and DICOM (``aet``, ``dicom_port``)."""

    def __init__(self, root: Path, modalities: dict[str, tuple[str, str, int]] | None = None,
                 aet: str = "ORTHANC") -> None:
        self.root = Path(root)
        self.aet = aet
        self.http_port, self.dicom_port = free_port(), free_port()
        self.modalities = modalities or {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def start(self, timeout: float = 60.0) -> Orthanc:
        for tool, what in ((ORTHANC, "orthanc"), (DICOMWEB_PLUGIN, "orthanc-dicomweb")):
            assert Path(tool).exists() or shutil.which(tool), f"{tool} is missing: install Debian {what} " \
                "(`make system` as root does)"
        self.root.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "cxrexplain-test", "StorageDirectory": str(self.root / "db"),
            "IndexDirectory": str(self.root / "db"), "HttpPort": self.http_port, "DicomPort": self.dicom_port,
            "DicomAet": self.aet, "RemoteAccessAllowed": False, "AuthenticationEnabled": True,
            "RegisteredUsers": {USER: PASSWORD}, "DicomModalities": {k: list(v) for k, v in self.modalities.items()},
            "DicomAlwaysAllowStore": True, "DicomCheckCalledAet": True, "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}, "StableAge": 1, "SaveJobs": False,
        }
        path = self.root / "orthanc.json"
        path.write_text(json.dumps(config, indent=1))
        log = open(self.root / "orthanc.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen([ORTHANC, str(path)], cwd=self.root, stdout=log, stderr=log,
                                        start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}; see {self.root}/orthanc.log")
            try:
                if httpx.get(f"{self.url}/system", auth=(USER, PASSWORD), timeout=2).is_success:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"Orthanc not answering after {timeout:.0f} s; see {self.root}/orthanc.log")

    def stop(self) -> None:
        stop_process_group(self.process.pid, 20.0, self.process)

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --------------------------------------------------------------------------------------------- REST
    def get(self, path: str) -> Any:
        reply = httpx.get(f"{self.url}{path}", auth=(USER, PASSWORD), timeout=30)
        reply.raise_for_status()
        return reply.json() if reply.headers.get("content-type", "").startswith("application/json") \
            else reply.content

    def study_instances(self, study_uid: str) -> list[dict[str, Any]]:
        """The simplified tags of every instance Orthanc holds in the study with this StudyInstanceUID."""
        found = httpx.post(f"{self.url}/tools/lookup", content=study_uid, auth=(USER, PASSWORD), timeout=30).json()
        studies = [f["ID"] for f in found if f["Type"] == "Study"]
        out = []
        for study in studies:
            for instance in self.get(f"/studies/{study}/instances"):
                tags = self.get(f"/instances/{instance['ID']}/tags?simplify")
                tags["_orthanc_id"] = instance["ID"]
                out.append(tags)
        return out

    def file(self, orthanc_id: str) -> bytes:
        return bytes(self.get(f"/instances/{orthanc_id}/file"))

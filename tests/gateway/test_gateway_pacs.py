"""The PACS gateway against a real Orthanc and a real TorchServe: chest X-rays in by C-STORE (``storescu`` and
pynetdicom), results back by C-STORE and by STOW-RS, read back through Orthanc's REST API; refusals at
association and at C-STORE; the service stopped mid-run; a gateway restart that takes up a pending instance.

One Orthanc and one TorchServe for the module (TorchServe is stopped and started once, in the failure test,
which therefore runs last); gateways are cheap and made per test, in process, except the restart test's, which
runs the real command line and stops it with SIGTERM.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
import yaml
from dicom_samples import dciodvfy_report, make_dicom
from orthanc import PASSWORD, USER, Orthanc
from pydicom.dataset import Dataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE
from served import build_store

from cxrexplain_gateway import Gateway, load_config
from export.launcher import Ports, TorchServe, free_port

pytestmark = pytest.mark.serve

REPO = Path(__file__).resolve().parents[2]
GATEWAY_AET = "CXREXPLAIN"
PATIENT_NAME, PATIENT_ID = "Doe^Jane", "PID-0001"  # make_dicom's: must appear in no log line and no file name
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
PM_CLASS = "1.2.840.10008.5.1.4.1.1.30"  # Parametric Map
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture (the overlays)
CINE_CLASS = "1.2.840.10008.5.1.4.1.1.7.2"  # Multi-frame Grayscale Byte SC (the latent-shift frames)


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def server(tmp_path_factory, phantom_classifier, phantom_autoencoder) -> Iterator[TorchServe]:
    """The classifier with its autoencoder (latent shift), built by the exporter; stopped by one test."""
    store = build_store(tmp_path_factory.mktemp("export"), [
        {"name": "cxr", "kind": "classifier", "architecture": "densenet_small", "weights": "weights/clf.pt",
         "autoencoder": "cxr-ae", "version": "1.0", "onnx": False},
        {"name": "cxr-ae", "kind": "autoencoder", "architecture": "resnet_ae_small", "weights": "weights/ae.pt"},
    ], phantom_classifier, phantom_autoencoder)
    ts = TorchServe(store, tmp_path_factory.mktemp("run"), ports=Ports.free()).start()
    yield ts
    if ts.process.poll() is None:
        ts.stop()


@pytest.fixture(scope="module")
def pacs(tmp_path_factory) -> Iterator[Orthanc]:
    with Orthanc(tmp_path_factory.mktemp("orthanc"), modalities={"gateway": (GATEWAY_AET, "127.0.0.1", 11112)}) \
            as orthanc:
        yield orthanc


@pytest.fixture(scope="module")
def image(phantom_batch) -> np.ndarray:
    """A phantom with cardiomegaly as 16-bit stored values, 3x upsampled and cut to a portrait 192 x 150."""
    sample = next(s for s in phantom_batch if s.labels[0] > 0)
    big = np.kron(sample.image, np.ones((3, 3)))[:, 21:171]
    return (1000 + big * 60000).round().astype(np.uint16)


def chest_xray(pixels: np.ndarray, kind: str, modality: str | None = None) -> Dataset:
    """A 16-bit CR (MONOCHROME2) or DX (MONOCHROME1: inverted values, the same picture) of the phantom."""
    if kind == "CR":
        ds = make_dicom(pixels, modality=modality or "CR", sop_class=ComputedRadiographyImageStorage, bits_stored=16)
    else:
        ds = make_dicom(65535 - pixels, photometric="MONOCHROME1", modality=modality or "DX",
                        sop_class=DigitalXRayImageStorageForPresentation, bits_stored=16,
                        extra={"ImagerPixelSpacing": [0.2, 0.2], "FrameOfReferenceUID": generate_uid()})
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientSex, ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "F", "20240102", "101500", "ACC-77"
    ds.ReferringPhysicianName, ds.StudyID, ds.BodyPartExamined = "Who^Doctor", "S-1", "CHEST"
    return ds


def write_config(folder: Path, server: TorchServe, destination: dict[str, Any], **overrides: Any) -> Path:
    """A gateway.yaml as a hospital writes it (relative storage and token paths, from the file's folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "listen": {"ae_title": GATEWAY_AET, "host": "127.0.0.1", "port": free_port(), "accept_calling": ["ANY"]},
        "service": {"url": server.url, "grpc_target": server.grpc_target,
                    "token_file": os.path.relpath(server.run_dir / "key_file.json", folder), "model": "cxr",
                    "methods": ["cam", "rap", "latent_shift"], "targets": ["Cardiomegaly"]},
        "destination": destination,
        "outputs": ["sr", "parametric_map", "secondary_capture", "latent_shift_cine"],
        "storage": "var/gateway",
        "metrics": {"host": "127.0.0.1", "port": free_port()},
    }
    for key, value in overrides.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    path = folder / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture
def dimse(pacs: Orthanc) -> dict[str, Any]:
    return {"kind": "dimse", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}


@pytest.fixture
def gateway(tmp_path: Path, server: TorchServe, dimse: dict[str, Any]) -> Iterator[Callable[..., Gateway]]:
    """Start gateways from written configurations; each is stopped after the test."""
    started: list[Gateway] = []

    def start(destination: dict[str, Any] | None = None, name: str = "gw", **overrides: Any) -> Gateway:
        config = load_config(write_config(tmp_path / name, server, destination or dimse, **overrides))
        started.append(Gateway(config).start())
        return started[-1]

    yield start
    for gw in started:
        gw.stop()


# -------------------------------------------------------------------------------------------------- helpers
def storescu(ds: Dataset, port: int, folder: Path, calling: str = "STORESCU") -> None:
    """Send with dcmtk's storescu, as a modality or a PACS would."""
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    run = subprocess.run(["storescu", "-aet", calling, "-aec", GATEWAY_AET, "127.0.0.1", str(port), str(path)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


def c_store(ds: Dataset, port: int, calling: str = "TESTSCU") -> Any:
    """Send with pynetdicom; the association (refused or not) and the C-STORE status (``None`` when none)."""
    ae = AE(ae_title=calling)
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is not None and syntax.is_compressed:  # offered as stored: a compressed instance is not transcoded
        ae.add_requested_context(ds.SOPClassUID, syntax)
    else:
        ae.add_requested_context(ds.SOPClassUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=GATEWAY_AET)
    status = None
    if assoc.is_established:
        if assoc.accepted_contexts:
            status = assoc.send_c_store(ds)
        assoc.release()
    return assoc, status


def results_in(pacs: Orthanc, source: Dataset, timeout: float = 240.0) -> dict[str, list[dict[str, Any]]]:
    """The gateway's objects in the source's study in Orthanc, by SOP class, once the SR (sent last) is there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found: dict[str, list[dict[str, Any]]] = {}
        for tags in pacs.study_instances(source.StudyInstanceUID):
            if tags["SOPInstanceUID"] != source.SOPInstanceUID:
                found.setdefault(tags["SOPClassUID"], []).append(tags)
        if SR_CLASS in found:
            return found
        time.sleep(1.0)
    raise AssertionError(f"no SR in Orthanc for the study after {timeout:.0f} s")


def referenced_uids(tags: Any) -> set[str]:
    """Every ReferencedSOPInstanceUID anywhere in Orthanc's simplified tags (sequences are lists of dicts)."""
    if isinstance(tags, dict):
        own = {tags["ReferencedSOPInstanceUID"]} if "ReferencedSOPInstanceUID" in tags else set()
        return own.union(*(referenced_uids(v) for v in tags.values()))
    if isinstance(tags, list):
        return set().union(*(referenced_uids(v) for v in tags))
    return set()


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def state(gw: Gateway, source: Dataset) -> str | None:
    record = gw.store.record(source.SOPInstanceUID)
    return record.state if record else None


def metric(gw: Gateway, name: str, labels: dict[str, str] | None = None) -> float:
    """A value from the gateway's /metrics endpoint, as Prometheus scrapes it."""
    assert gw.config.metrics is not None
    text = httpx.get(f"http://127.0.0.1:{gw.config.metrics.port}/metrics", timeout=10).text
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0


def assert_results(pacs: Orthanc, source: Dataset, tmp_path: Path) -> dict[str, list[dict[str, Any]]]:
    """The SR, the parametric maps and both kinds of Secondary Capture arrived in the source's study, each
    referencing the source instance, with the source's patient; every one passes dciodvfy as Orthanc holds it."""
    found = results_in(pacs, source)
    assert len(found[SR_CLASS]) == 1 and len(found[CINE_CLASS]) == 1
    assert len(found[PM_CLASS]) == len(found[SC_CLASS]) >= 2  # per method and target: cam, rap (+ latent shift)
    for sop_class, objects in found.items():
        for tags in objects:
            assert tags["StudyInstanceUID"] == source.StudyInstanceUID
            assert tags["PatientID"] == PATIENT_ID and tags["SeriesInstanceUID"] != source.SeriesInstanceUID
            if sop_class != CINE_CLASS:  # the cine is referenced by the SR, and references the source itself
                assert source.SOPInstanceUID in referenced_uids(tags), sop_class
            path = tmp_path / f"{tags['SOPInstanceUID']}.dcm"
            path.write_bytes(pacs.file(tags["_orthanc_id"]))
            errors, _ = dciodvfy_report(path)
            assert not errors, f"{pydicom.dcmread(path).SOPClassUID.name}: {errors}"
    assert source.SOPInstanceUID in referenced_uids(found[CINE_CLASS][0])
    return found


def assert_no_patient_data(text: str, storage: Path) -> None:
    for secret in (PATIENT_NAME, "Doe", PATIENT_ID):
        assert secret not in text
    for path in storage.rglob("*"):
        assert "Doe" not in path.name and PATIENT_ID not in path.name
        if path.suffix == ".json":
            assert "Doe" not in path.read_text() and PATIENT_ID not in path.read_text()


# ---------------------------------------------------------------------------------------------------- tests
def test_cr_by_storescu_results_by_c_store(gateway, pacs, image, tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO)
    gw = gateway()
    source = chest_xray(image, "CR")
    storescu(source, gw.node.port, tmp_path)
    found = assert_results(pacs, source, tmp_path)
    wait_for(lambda: state(gw, source) == "done", 30, "the done state")
    record = gw.store.record(source.SOPInstanceUID)
    assert record is not None and record.state == "done" and not gw.store.pending()
    assert set(record.results) == {t["SOPInstanceUID"] for objects in found.values() for t in objects}
    assert not list(gw.store.incoming.iterdir())  # the received image is deleted once the PACS has the results
    assert metric(gw, "cxrexplain_gateway_received_total") == 1
    assert metric(gw, "cxrexplain_gateway_explained_total") == 1
    assert metric(gw, "cxrexplain_gateway_sent_total", {"Output": "sr"}) == 1
    assert metric(gw, "cxrexplain_gateway_sent_total", {"Output": "parametric_map"}) == len(found[PM_CLASS])
    assert metric(gw, "cxrexplain_gateway_in_flight") == 0
    assert_no_patient_data(caplog.text, gw.store.root)


def test_monochrome1_dx_results_by_stow_rs(gateway, pacs, image, tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO)
    (tmp_path / "gw").mkdir()
    (tmp_path / "gw" / "pacs-password").write_text(PASSWORD + "\n")
    gw = gateway({"kind": "stow", "url": pacs.dicomweb_url, "username": USER, "password_file": "pacs-password"})
    source = chest_xray(image, "DX")
    assert source.PhotometricInterpretation == "MONOCHROME1"
    _, status = c_store(source, gw.node.port)
    assert status.Status == 0x0000
    assert_results(pacs, source, tmp_path)
    assert_no_patient_data(caplog.text, gw.store.root)


def test_compressed_chest_xrays_are_explained(gateway, pacs, image, tmp_path) -> None:
    """RLE and JPEG 2000 lossless, as PACS archives keep them: accepted, decoded by the service, overlaid here."""
    gw = gateway(outputs=["sr", "secondary_capture"], service={"methods": ["cam"]})
    sources = []
    for syntax in (RLELossless, JPEG2000Lossless):
        source = chest_xray(image, "CR")
        source.compress(syntax)
        assoc, status = c_store(source, gw.node.port)
        assert assoc.accepted_contexts[0].transfer_syntax[0] == syntax and status.Status == 0x0000
        sources.append(source)
    for source in sources:
        found = results_in(pacs, source)
        assert len(found[SC_CLASS]) == 1 and PM_CLASS not in found  # one method, one target; no parametric map
        for tags in found[SC_CLASS]:
            assert source.SOPInstanceUID in referenced_uids(tags)
            path = tmp_path / f"{tags['SOPInstanceUID']}.dcm"
            path.write_bytes(pacs.file(tags["_orthanc_id"]))
            assert not dciodvfy_report(path)[0]
            # the overlay is the source's picture: its grey levels follow the phantom's (dark lungs, bright heart)
            overlay = pydicom.dcmread(path).pixel_array.astype(float).mean(axis=-1)
            assert np.corrcoef(overlay.ravel(), image.astype(float).ravel())[0, 1] > 0.5


@pytest.mark.parametrize("modality", ["CT", "MG"])
def test_a_non_chest_xray_modality_is_refused_at_c_store(gateway, image, modality, caplog) -> None:
    gw = gateway()
    source = chest_xray(image, "CR", modality=modality)  # a CR object that says it is not a chest X-ray
    assoc, status = c_store(source, gw.node.port)
    assert status.Status == 0xA900 and modality in status.ErrorComment
    assert any(source.SOPInstanceUID in r.message and f"Modality {modality}" in r.message for r in caplog.records)
    assert gw.store.record(source.SOPInstanceUID) is None and not gw.store.pending()
    assert metric(gw, "cxrexplain_gateway_refused_total", {"Reason": "modality"}) == 1
    assert metric(gw, "cxrexplain_gateway_received_total") == 0


def test_unsupported_sop_class_and_unknown_calling_ae_are_refused_at_association(gateway, image) -> None:
    gw = gateway(listen={"accept_calling": ["PACS1", "STORESCU"]})
    ct = chest_xray(image, "CR")
    ct.SOPClassUID = ct.file_meta.MediaStorageSOPClassUID = CTImageStorage
    assoc, status = c_store(ct, gw.node.port, calling="PACS1")
    assert status is None and not assoc.accepted_contexts
    assert [cx.abstract_syntax for cx in assoc.rejected_contexts] == [CTImageStorage]
    assert metric(gw, "cxrexplain_gateway_refused_total", {"Reason": "sop_class"}) == 1

    assoc, status = c_store(chest_xray(image, "CR"), gw.node.port, calling="INTRUDER")
    assert assoc.is_rejected and status is None
    assert metric(gw, "cxrexplain_gateway_refused_total", {"Reason": "association"}) == 1
    assert not gw.store.pending()


def test_service_stopped_mid_run_then_restart(gateway, server, pacs, image, tmp_path, caplog) -> None:
    """TorchServe stops: an instance fails visibly after the bounded retries and the node goes on answering;
    an instance pending when the gateway (the real command, SIGTERM) stops is taken up by its next start."""
    caplog.set_level(logging.INFO)
    quick = {"retries": 1, "retry_delay_s": 0.2}
    gw = gateway(processing=quick, service={"retry_budget_s": 1.0, "timeout_s": 10})
    patient = {"retries": 3, "retry_delay_s": 600}  # its instance waits for the next start, not for a retry
    cli_config = write_config(tmp_path / "cli", server, {"kind": "dimse", "ae_title": pacs.aet,
                                                         "host": "127.0.0.1", "port": pacs.dicom_port},
                              processing=patient, service={"retry_budget_s": 1.0})
    server.stop()

    failing = chest_xray(image, "CR")
    _, status = c_store(failing, gw.node.port)
    assert status.Status == 0x0000  # on disk and answered, whatever the service's state
    wait_for(lambda: state(gw, failing) == "failed", 120, "the failed state")
    record = gw.store.record(failing.SOPInstanceUID)
    assert record is not None and record.attempts == 2 and "ServerUnavailable" in (record.last_error or "")
    assert (gw.store.failed / f"{failing.SOPInstanceUID}.dcm").exists() and not gw.store.pending()
    failed_lines = [r.message for r in caplog.records if "FAILED" in r.message]
    assert len(failed_lines) == 1 and failing.SOPInstanceUID in failed_lines[0]
    assert record.request_id and record.request_id in failed_lines[0] and "ServerUnavailable" in failed_lines[0]
    assert metric(gw, "cxrexplain_gateway_failed_total") == 1
    assert metric(gw, "cxrexplain_gateway_attempt_errors_total", {"Error": "ServerUnavailable"}) == 2

    cli = start_cli(cli_config, tmp_path / "cli.log")
    try:
        pending = chest_xray(image, "DX")
        storescu(pending, port_of(cli_config), tmp_path)
        cli_store = tmp_path / "cli" / "var" / "gateway"
        wait_for(lambda: "attempt 1 of 4 failed" in (tmp_path / "cli.log").read_text(), 60, "a first failure")
    finally:
        cli.send_signal(signal.SIGTERM)
        assert cli.wait(timeout=60) == 0, (tmp_path / "cli.log").read_text()
    assert (cli_store / "incoming" / f"{pending.SOPInstanceUID}.dcm").exists()  # left pending on disk

    server.start()
    cli = start_cli(cli_config, tmp_path / "cli.log")
    try:
        assert_results(pacs, pending, tmp_path)
        wait_for(lambda: (cli_store / "done" / f"{pending.SOPInstanceUID}.json").exists(), 30, "done")
        assert "took up 1 instance(s) pending" in (tmp_path / "cli.log").read_text()
        later = chest_xray(image, "CR")  # the in-process node that saw the failure still serves
        _, status = c_store(later, gw.node.port)
        assert status.Status == 0x0000
        assert_results(pacs, later, tmp_path)
    finally:
        cli.send_signal(signal.SIGTERM)
        assert cli.wait(timeout=60) == 0
    assert_no_patient_data(caplog.text + (tmp_path / "cli.log").read_text(), gw.store.root)
    assert_no_patient_data("", cli_store)


def start_cli(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """``cxrexplain-gateway --config`` as a hospital runs it, until its node answers a C-ECHO."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "client"), os.environ.get("PYTHONPATH", "")])}
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cxrexplain_gateway.cli", "--config", str(config)],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    ae = AE(ae_title="ECHOSCU")
    ae.add_requested_context("1.2.840.10008.1.1")

    def echoes() -> bool:
        assert proc.poll() is None, log.read_text()
        assoc = ae.associate("127.0.0.1", port_of(config), ae_title=GATEWAY_AET)
        ok = assoc.is_established and assoc.send_c_echo().Status == 0
        if assoc.is_established:
            assoc.release()
        return bool(ok)

    wait_for(echoes, 60, "the gateway command to answer C-ECHO")
    return proc


def port_of(config: Path) -> int:
    return int(yaml.safe_load(config.read_text())["listen"]["port"])

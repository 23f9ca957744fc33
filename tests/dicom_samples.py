"""Small DICOM chest X-rays made in memory for the tests (a plain module beside ``conftest.py``, like
``served.py``): ``from dicom_samples import dicom_bytes, make_dicom, ramp12``; and the dciodvfy check every
object the project writes passes (``dciodvfy_report``)."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid


def ramp12(h: int = 48, w: int = 40) -> np.ndarray:
    """12-bit stored values from 100 to 3000 (not the full range, to tell min-max from bit scaling)."""
    return np.linspace(100, 3000, h * w).reshape(h, w).round().astype(np.uint16)


def make_dicom(
    arr: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    modality: str = "DX",
    sop_class: str = DigitalXRayImageStorageForPresentation,
    bits_stored: int = 12,
    frames: int = 1,
    extra: dict[str, object] | None = None,
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "PID-0001"
    ds.PatientBirthDate = "19700101"
    ds.Modality = modality
    ds.PatientOrientation = ["L", "F"]
    ds.PixelSpacing = [0.2, 0.2]
    ds.Rows, ds.Columns = arr.shape[-2], arr.shape[-1]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16 if arr.dtype == np.uint16 else 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    for key, value in (extra or {}).items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(arr).tobytes()
    return ds


def dicom_bytes(ds: Dataset, preamble: bool = True) -> bytes:
    buf = io.BytesIO()
    if preamble:
        ds.save_as(buf, enforce_file_format=True)
    else:
        bare = Dataset()
        bare.update(ds)  # data set only: no preamble, no file meta
        bare.save_as(buf, implicit_vr=True, little_endian=True)
    return buf.getvalue()


def dciodvfy_report(path: str | Path) -> tuple[list[str], list[str]]:
    """Run dicom3tools' ``dciodvfy`` on a file: ``(errors, every line)``. Warnings are not errors (docs/dicom.md
    lists the ones that remain and why); the lines also name the IOD the file was checked against."""
    dciodvfy = shutil.which("dciodvfy")
    assert dciodvfy, "dciodvfy is missing: install Debian dicom3tools (`make system` as root does)"
    report = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=60)
    lines = (report.stdout + report.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    if report.returncode != 0 and not errors:
        errors = [f"dciodvfy exited with {report.returncode}"]
    return errors, lines

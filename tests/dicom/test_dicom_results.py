"""DICOM results (cxrexplain_dicom): every object written for a synthetic chest X-ray passes dciodvfy without
errors, and says what the SDK's results say.

Two sources: a 16-bit CR (MONOCHROME2, no Frame of Reference, Pixel Spacing) and a DX (MONOCHROME1, its own
Frame of Reference, Imager Pixel Spacing only). The SR is read back by walking its content tree here, not
through highdicom's reader (the writer's library would check its own output); the parametric maps are compared
with scipy's resampling, not the render package's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_samples import dciodvfy_report
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)
from scipy import ndimage

from cxrexplain_client.results import (
    Explanation,
    Finding,
    Geometry,
    LatentShiftResult,
    ModelDescription,
    TargetResult,
)
from cxrexplain_dicom import OUTPUTS, dicom_results, save
from cxrexplain_dicom.codes import SCHEME

RNG = np.random.default_rng(12)
PATIENT_NAME, PATIENT_ID = "Müller^Jäne", "PID-0001"  # Latin-1: every object must carry the character set
SHA = "5f" * 32
FRAMES = 5
SR, CINE = "Comprehensive 3D SR Storage", "Multi-frame Grayscale Byte Secondary Capture Image Storage"
IODS = {"Comprehensive3DSR", "ParametricMap", "SCImage", "MultiframeGrayscaleByteSCImage"}  # dciodvfy's names


@dataclass
class Case:
    """A source image, the SDK's answer for it, and where the model's square lies in it."""

    source: Dataset
    explanation: Explanation
    description: ModelDescription
    geometry: Geometry


def chest_xray(kind: str, rows: int, cols: int) -> Dataset:
    """A 16-bit chest radiograph with the patient and study attributes a real one has."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID = ComputedRadiographyImageStorage if kind == "CR" else DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = PATIENT_NAME, PATIENT_ID, "19700101", "F"
    ds.AccessionNumber, ds.StudyID, ds.StudyDate, ds.StudyTime = "ACC-77", "S-1", "20240102", "101500"
    ds.ReferringPhysicianName = "Who^Doctor"
    ds.Modality, ds.BodyPartExamined = kind, "CHEST"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 0
    if kind == "CR":
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelSpacing = [0.2, 0.2]
        ds.PatientOrientation = ["L", "F"]
    else:  # DX: MONOCHROME1, a Frame of Reference, the detector's spacing only
        ds.PhotometricInterpretation = "MONOCHROME1"
        ds.ImagerPixelSpacing = [0.15, 0.15]
        ds.FrameOfReferenceUID = generate_uid()
    ramp = np.linspace(1000, 60000, rows * cols).reshape(rows, cols) + RNG.normal(0, 300, (rows, cols))
    ds.PixelData = np.clip(ramp, 0, 65535).astype(np.uint16).tobytes()
    return ds


def make_case(kind: str) -> Case:
    if kind == "CR":  # portrait: the model's square is a full-width crop, 128 px maps upsampled x2
        source, geometry = chest_xray("CR", 300, 256), Geometry(300, 256, 22, 0, 256, 128)
    else:  # landscape: a full-height crop at column 30, 64 px maps upsampled x3.125
        source, geometry = chest_xray("DX", 200, 260), Geometry(200, 260, 0, 30, 200, 64)
    s = geometry.model_size
    shift = LatentShiftResult(
        target="Cardiomegaly",
        frames=RNG.uniform(0, 1, (FRAMES, s, s)).astype(np.float32),
        lambdas=np.linspace(-30.0, 5.0, FRAMES).astype(np.float32),
        frame_probabilities=np.linspace(0.12, 0.93, FRAMES).astype(np.float32),
        reconstruction_gap=0.0125,
    )
    results = {
        target: TargetResult(
            target=target,
            # RAP's raw relevances span far less than 1 (a VOI window narrower than 1 needs LINEAR_EXACT).
            heatmaps={m: RNG.normal(0, 2 if m == "cam" else 0.02, (s, s)).astype(np.float32)
                      for m in ("cam", "rap")},
            latent_shift=shift if target == "Cardiomegaly" else None,
            geometry=geometry,
        )
        for target in ("Cardiomegaly", "Enlarged Cardiomediastinum")
    }
    explanation = Explanation(
        request_id="req-1", model_name="cxr-densenet", model_version="2.1", not_for_diagnostic_use=True,
        findings=[Finding("Cardiomegaly", 0.8125, 0.5, True), Finding("Enlarged Cardiomediastinum", 0.25, 0.4, False)],
        targets=list(results), results=results, geometry=geometry,
    )
    description = ModelDescription(
        name="cxr-densenet", version="2.1", architecture="densenet121",
        labels=["Cardiomegaly", "Enlarged Cardiomediastinum"], operating_points=[0.5, 0.4], input_spec={},
        methods=["cam", "rap", "latent_shift"], has_autoencoder=True, intended_use="research", weights_sha256=SHA,
    )
    return Case(source, explanation, description, geometry)


@pytest.fixture(scope="module", params=["CR", "DX"])
def written(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Case, list[Path]]:
    """Every object of one explanation, written to disk (as the gateway would before sending)."""
    case = make_case(request.param)
    objects = dicom_results(case.source, case.explanation, case.description)
    return case, save(objects, tmp_path_factory.mktemp(f"out-{request.param}"))


def by_class(paths: list[Path]) -> dict[str, list[Dataset]]:
    out: dict[str, list[Dataset]] = {}
    for path in paths:
        ds = pydicom.dcmread(path)
        out.setdefault(ds.SOPClassUID.name, []).append(ds)
    return out


# --------------------------------------------------------------------------------------------- dciodvfy


def test_every_object_passes_dciodvfy(written: tuple[Case, list[Path]]) -> None:
    # Warnings are allowed (docs/dicom.md lists the ones that remain and why); errors are not.
    _, paths = written
    assert len(paths) == 4 + 4 + 1 + 1  # PM and SC per method and target, one cine, one SR
    iods = set()
    for path in paths:
        errors, lines = dciodvfy_report(path)
        assert not errors, f"{pydicom.dcmread(path).SOPClassUID.name}: {errors}"
        iods |= set(lines) & IODS
    assert iods == IODS  # each object was checked against its own IOD's modules


def test_file_names_hold_no_patient_data(written: tuple[Case, list[Path]]) -> None:
    _, paths = written
    for path in paths:
        assert path.name == f"{pydicom.dcmread(path).SOPInstanceUID}.dcm"
        for text in (PATIENT_NAME, PATIENT_ID, "Müller", "Jäne", "PID"):
            assert text not in str(path)


def test_writing_logs_no_patient_data(caplog: pytest.LogCaptureFixture) -> None:
    case = make_case("DX")
    with caplog.at_level(logging.DEBUG):
        dicom_results(case.source, case.explanation, case.description)
    for text in ("Müller", "Jäne", PATIENT_ID, "19700101", "ACC-77"):
        assert text not in caplog.text


# --------------------------------------------------------------------------------------------- identifiers


def test_identifiers_series_and_references(written: tuple[Case, list[Path]]) -> None:
    case, paths = written
    src = case.source
    objects = [pydicom.dcmread(p) for p in paths]
    assert len({o.SOPInstanceUID for o in objects}) == len(objects)
    for o in objects:
        assert o.StudyInstanceUID == src.StudyInstanceUID and o.SeriesInstanceUID != src.SeriesInstanceUID
        assert (str(o.PatientName), o.PatientID, o.SpecificCharacterSet) == (PATIENT_NAME, PATIENT_ID, "ISO_IR 100")
        for keyword in ("StudyDate", "StudyTime", "StudyID", "AccessionNumber"):  # the study, as the PACS has it
            assert o[keyword].value == src[keyword].value, (o.SOPClassUID.name, keyword)
        # Nothing else of the patient or the study: birth date, sex, the referring physician stay behind.
        for keyword in ("PatientBirthDate", "PatientSex", "ReferringPhysicianName"):
            assert not o.get(keyword), (o.SOPClassUID.name, keyword)
        equipment = o.ContributingEquipmentSequence[0]
        assert (equipment.ManufacturerModelName, equipment.SoftwareVersions) == ("cxr-densenet", "2.1")
        assert SHA in equipment.ContributionDescription
        assert equipment.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"  # Processing Equipment
        assert "NOT FOR DIAGNOSTIC USE" in o.SeriesDescription
        if o.SOPClassUID.name != SR:
            series_ref = o.ReferencedSeriesSequence[0]
            assert series_ref.SeriesInstanceUID == src.SeriesInstanceUID
            assert series_ref.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    kinds = by_class(paths)
    for datasets in kinds.values():  # each kind is one new series, instances numbered from 1
        assert len({d.SeriesInstanceUID for d in datasets}) == 1
        assert sorted(int(d.InstanceNumber) for d in datasets) == list(range(1, len(datasets) + 1))
    assert len({d[0].SeriesInstanceUID for d in kinds.values()}) == len(kinds) == len(OUTPUTS)


# --------------------------------------------------------------------------------------------- SR


def _code(item: Dataset, keyword: str = "ConceptNameCodeSequence") -> tuple[str, str]:
    code = item[keyword][0]
    return code.CodingSchemeDesignator, str(code.get("CodeValue") or code.get("LongCodeValue"))


def _groups(sr: Dataset) -> list[Dataset]:
    """The TID 1501 Measurement Groups (DCM 125007) under Imaging Measurements (DCM 126010)."""
    measurements = next(i for i in sr.ContentSequence if _code(i) == ("DCM", "126010"))
    return [g for g in measurements.ContentSequence if _code(g) == ("DCM", "125007")]


def _items(group: Dataset, concept: tuple[str, str]) -> list[Dataset]:
    return [i for i in group.ContentSequence if _code(i) == concept]


def _num(item: Dataset) -> float:
    return float(item.MeasuredValueSequence[0].NumericValue)


def test_sr_findings_and_algorithm(written: tuple[Case, list[Path]]) -> None:
    case, paths = written
    (sr,) = by_class(paths)[SR]
    assert (sr.VerificationFlag, sr.CompletionFlag) == ("UNVERIFIED", "COMPLETE")
    assert _code(sr) == ("DCM", "126000")  # Imaging Measurement Report: TID 1500
    assert any(s.CodingSchemeDesignator == SCHEME for s in sr.CodingSchemeIdentificationSequence)
    groups = {g.ContentSequence[0].TextValue: g for g in _groups(sr)}  # Tracking Identifier comes first
    for finding in case.explanation.findings:
        group = groups[f"finding {finding.label}"]
        (found,) = _items(group, ("DCM", "121071"))
        assert found.ConceptCodeSequence[0].CodeMeaning == finding.label
        (probability,) = _items(group, ("DCM", "122157"))
        (threshold,) = _items(group, (SCHEME, "OPERATING-POINT"))
        assert _num(probability) == pytest.approx(finding.probability, abs=1e-9)
        assert _num(threshold) == pytest.approx(finding.operating_point, abs=1e-9)
        (positive,) = _items(group, (SCHEME, "POSITIVE"))
        assert positive.ConceptCodeSequence[0].CodeValue == ("373066001" if finding.positive else "373067005")
        algorithm = {_code(i): i.TextValue for i in probability.ContentSequence if i.ValueType == "TEXT"}
        assert algorithm[("DCM", "111001")] == "cxr-densenet" and algorithm[("DCM", "111003")] == "2.1"
        assert algorithm[("DCM", "111002")] == f"weights_sha256={SHA}"  # TID 4019 Algorithm Parameters
        (image,) = _items(group, ("DCM", "121112"))  # Source of Measurement: the radiograph
        assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == case.source.SOPInstanceUID
    # A label with a SNOMED CT concept of its very meaning is coded in SCT, another in the private scheme.
    codes = {g.ContentSequence[0].TextValue: _code(_items(g, ("DCM", "121071"))[0], "ConceptCodeSequence")
             for g in groups.values()}
    assert codes["finding Cardiomegaly"] == ("SCT", "287272002")
    assert codes["finding Enlarged Cardiomediastinum"] == (SCHEME, "ENLARGED-CARDIOMEDIASTINUM")
    evidence = {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                for s in sr.CurrentRequestedProcedureEvidenceSequence for i in s.ReferencedSeriesSequence}
    assert case.source.SOPInstanceUID in evidence


def test_sr_latent_shift_entries_reference_cine_frames(written: tuple[Case, list[Path]]) -> None:
    case, paths = written
    kinds = by_class(paths)
    (sr,), (cine,) = kinds[SR], kinds[CINE]
    (group,) = [g for g in _groups(sr) if g.ContentSequence[0].TextValue == "latent shift Cardiomegaly"]
    shift = case.explanation.results["Cardiomegaly"].latent_shift
    assert shift is not None
    per_frame: dict[int, dict[str, float]] = {}
    for item in _items(group, (SCHEME, "LS-LAMBDA")) + _items(group, ("DCM", "122157")):
        (ref,) = [i for i in item.ContentSequence if i.ValueType == "IMAGE"]
        sop = ref.ReferencedSOPSequence[0]
        assert sop.ReferencedSOPInstanceUID == cine.SOPInstanceUID
        assert sop["ReferencedFrameNumber"].VM == 1  # one frame per entry
        per_frame.setdefault(int(sop.ReferencedFrameNumber), {})[_code(item)[1]] = _num(item)
    assert sorted(per_frame) == list(range(1, FRAMES + 1))
    for k in range(FRAMES):
        assert per_frame[k + 1]["LS-LAMBDA"] == pytest.approx(float(shift.lambdas[k]), abs=1e-5)
        assert per_frame[k + 1]["122157"] == pytest.approx(float(shift.frame_probabilities[k]), abs=1e-6)
    (gap,) = _items(group, (SCHEME, "LS-RECON-GAP"))
    assert _num(gap) == pytest.approx(shift.reconstruction_gap)
    evidence = {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                for s in sr.CurrentRequestedProcedureEvidenceSequence for i in s.ReferencedSeriesSequence}
    assert cine.SOPInstanceUID in evidence


# --------------------------------------------------------------------------------------------- maps and pictures


def test_parametric_maps_hold_the_resampled_raw_maps(written: tuple[Case, list[Path]]) -> None:
    case, paths = written
    pms = by_class(paths)["Parametric Map Storage"]
    g = case.geometry
    seen = set()
    for pm in pms:
        method, target = pm.ContentDescription.split(" heatmap, ")
        seen.add((method, target))
        raw = case.explanation.results[target].heatmaps[method]
        # Independent reference: scipy's pixel-centre bilinear zoom (edges clamped), pasted into a zero canvas.
        expected = np.zeros((g.original_height, g.original_width))
        zoomed = ndimage.zoom(raw.astype(np.float64), g.crop_size / g.model_size, order=1, grid_mode=True,
                              mode="nearest")
        expected[g.crop_top : g.crop_top + g.crop_size, g.crop_left : g.crop_left + g.crop_size] = zoomed
        assert pm.pixel_array.dtype == np.float32 and pm.pixel_array.shape == expected.shape
        np.testing.assert_allclose(pm.pixel_array, expected, atol=1e-5, rtol=0)
        assert pm.pixel_array.min() < 0 < pm.pixel_array.max()  # raw and signed, not display-normalized
        frame = pm.SharedFunctionalGroupsSequence[0]
        mapping = frame.RealWorldValueMappingSequence[0]
        assert (mapping.RealWorldValueSlope, mapping.RealWorldValueIntercept) == (1.0, 0.0)
        assert mapping.QuantityDefinitionSequence[0].ConceptCodeSequence[0].CodeValue == "130404"  # Saliency
        derivation = pm.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
        assert derivation.ReferencedSOPInstanceUID == case.source.SOPInstanceUID
    assert seen == {(m, t) for t in case.explanation.results for m in ("cam", "rap")}
    frames_of_reference = {pm.FrameOfReferenceUID for pm in pms}
    assert len(frames_of_reference) == 1  # one pixel grid, one frame of reference
    if "FrameOfReferenceUID" in case.source:  # DX: the source's own
        assert frames_of_reference == {case.source.FrameOfReferenceUID}
    else:  # CR has none: a new one, not any UID of the source
        assert frames_of_reference.isdisjoint({case.source.StudyInstanceUID, case.source.SeriesInstanceUID})


def test_overlay_secondary_captures_show_the_source_as_displayed(written: tuple[Case, list[Path]]) -> None:
    case, paths = written
    scs = by_class(paths)["Secondary Capture Image Storage"]
    assert len(scs) == 4 and all(sc.BurnedInAnnotation == "YES" for sc in scs)
    stored = np.frombuffer(case.source.PixelData, np.uint16).reshape(case.source.Rows, case.source.Columns)
    scaled = (stored.astype(np.float64) - stored.min()) / (stored.max() - stored.min())
    if case.source.PhotometricInterpretation == "MONOCHROME1":  # high values are dark
        scaled = 1.0 - scaled
    gray = np.rint(scaled * 255)
    g = case.geometry
    outside = np.ones(gray.shape, bool)  # the model never saw these pixels: no heat, the radiograph unchanged
    outside[g.crop_top : g.crop_top + g.crop_size, g.crop_left : g.crop_left + g.crop_size] = False
    outside[:40] = False  # the burned-in marking
    assert outside.sum() > 500
    for sc in scs:
        px = sc.pixel_array.astype(np.float64)
        assert px.shape == (*gray.shape, 3)
        np.testing.assert_allclose(px[outside], np.repeat(gray[outside][:, None], 3, axis=1), atol=1)


def test_latent_shift_cine(written: tuple[Case, list[Path]]) -> None:
    case, paths = written
    (cine,) = by_class(paths)[CINE]
    shift = case.explanation.results["Cardiomegaly"].latent_shift
    assert shift is not None
    assert int(cine.NumberOfFrames) == FRAMES and cine.FrameIncrementPointer == 0x00181063
    assert (float(cine.FrameTime), int(cine.CineRate)) == (120.0, 8)
    assert cine.SourceImageSequence[0].ReferencedSOPInstanceUID == case.source.SOPInstanceUID
    expected = np.rint(shift.frames * 255).astype(np.uint8)
    burned = cine.Columns >= 128
    assert cine.BurnedInAnnotation == ("YES" if burned else "NO")
    below = 24 if burned else 0  # under the marking the frames are unchanged
    np.testing.assert_array_equal(cine.pixel_array[:, below:], expected[:, below:])
    if burned:
        assert not np.array_equal(cine.pixel_array[:, :below], expected[:, :below])


# --------------------------------------------------------------------------------------------- refusals


def test_refusals_say_what_to_do() -> None:
    case = make_case("CR")
    other = make_case("DX")
    with pytest.raises(ValueError, match="pass the explanation of this image"):
        dicom_results(case.source, other.explanation, outputs=["parametric_map"])
    stale = ModelDescription(**{**case.description.__dict__, "version": "2.0"})
    with pytest.raises(ValueError, match="describe the version that answered"):
        dicom_results(case.source, case.explanation, stale)
    with pytest.raises(ValueError, match="unknown DICOM outputs"):
        dicom_results(case.source, case.explanation, outputs=["sr", "pdf"])
    case.explanation.results["Cardiomegaly"].normalized["cam"] = True
    with pytest.raises(ValueError, match="heatmap_format='array'"):
        dicom_results(case.source, case.explanation, outputs=["parametric_map"])
    del case.source.StudyInstanceUID
    with pytest.raises(ValueError, match="StudyInstanceUID"):
        dicom_results(case.source, other.explanation, outputs=["sr"])

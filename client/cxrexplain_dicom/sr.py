"""The findings as a Comprehensive 3D SR: a TID 1500 Measurement Report, one TID 1501 group per label, one per
latent-shift target with an entry per frame that references the frame in the cine Secondary Capture.

The tree (templates of PS3.16; codes in :mod:`cxrexplain_dicom.codes`, listed in docs/dicom.md)::

    TID 1500 Imaging Measurement Report (DCM 126000)
      TID 1001 observation context: device observer = the model (name, UID from name, version, weights)
      procedure reported: Imaging procedure (SCT 363679005)
      TID 1600 image library: the source radiograph
      Imaging Measurements
        TID 1501 per label:  Finding = the label (SCT, else 99CXREXPLAIN), source image = the radiograph,
                             TID 4019 algorithm (name, version, weights_sha256 parameter),
                             TID 300 Probability (DCM 122157), TID 300 Model operating point,
                             qualitative: Positive at the model operating point = Yes / No (SCT)
        TID 1501 per latent-shift target: Finding = the target, method = Latent shift counterfactual,
                             per frame k: TID 300 lambda and TID 300 Probability, each with the cine's
                             frame k as its source image; TID 300 reconstruction gap
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from cxrexplain_client.results import Explanation, Finding, LatentShiftResult

from . import codes
from .source import MANUFACTURER, NOT_FOR_DIAGNOSTIC_USE, Algorithm, SourceLink, mark_derived


def findings_sr(
    link: SourceLink,
    explanation: Explanation,
    algorithm: Algorithm,
    cines: Sequence[tuple[LatentShiftResult, Dataset]] = (),
    *,
    series_instance_uid: str | None = None,
    series_number: int = 9904,
    instance_number: int = 1,
) -> Dataset:
    """A Comprehensive 3D SR of an explanation's findings, and of each latent shift's frames.

    Parameters
    ----------
    link
        The source instance.
    explanation
        The SDK's answer for that image.
    algorithm
        The model that answered (:meth:`Algorithm.from_results`).
    cines
        Each latent shift with the cine written of it (:func:`~cxrexplain_dicom.latent_shift_cine`): its
        per-frame lambda and probability go in the report, referencing the cine's frames.
    series_instance_uid, series_number, instance_number
        A new series when None.

    Returns
    -------
    pydicom.Dataset
        A ``highdicom.sr.Comprehensive3DSR``: Verification Flag UNVERIFIED, Completion Flag COMPLETE,
        Preliminary Flag PRELIMINARY, "NOT FOR DIAGNOSTIC USE" in Series Description; the source (and the
        cines) in Current Requested Procedure Evidence Sequence.

    Raises
    ------
    ValueError
        A latent shift whose lambdas, probabilities and frames differ in count.
    """
    algorithm_id = hd.sr.AlgorithmIdentification(
        name=algorithm.name[:64], version=algorithm.version[:64], parameters=algorithm.parameters()
    )
    source_ref = hd.sr.SourceImageForMeasurementGroup(link.dataset.SOPClassUID, link.dataset.SOPInstanceUID)
    groups = [_finding_group(f, algorithm_id, source_ref) for f in explanation.findings]
    groups += [_latent_shift_group(ls, cine, algorithm_id, source_ref) for ls, cine in cines]
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=algorithm.device_uid, name=algorithm.name[:64], manufacturer_name=MANUFACTURER,
        model_name=algorithm.name[:64],
    )
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DEVICE,
            observer_identifying_attributes=device,
        )
    )
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=codes.IMAGING_PROCEDURE,
        imaging_measurements=groups,
        title=codes.IMAGING_MEASUREMENT_REPORT,
        referenced_images=[_library_entry(link)],
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[link.dataset, *(cine for _, cine in cines)],
        content=report[0],
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=f"cxrexplain findings - {NOT_FOR_DIAGNOSTIC_USE}",
        coding_schemes=[codes.CODING_SCHEME],
    )
    mark_derived(sr, link, algorithm, image=False)
    return sr


def _library_entry(link: SourceLink) -> Dataset:
    """The source as highdicom's TID 1600 Image Library entry.

    highdicom adds the projection descriptors of TID 1603 (patient orientation, imager pixel spacing) for a CR
    or DX and needs both attributes then; they are optional in TID 1603, so where the source lacks one the
    entry is described by its SOP class (TID 1602) alone.
    """
    entry = Dataset()
    entry.update(link.dataset)
    orientation = entry.get("PatientOrientation", None)
    if "ImagerPixelSpacing" not in entry or orientation is None or len(orientation) != 2:
        entry.Modality = "OT"  # read only to choose TID 1603; the entry's modality comes from the SOP class
    return entry


def _finding_group(
    finding: Finding,
    algorithm_id: hd.sr.AlgorithmIdentification,
    source_ref: hd.sr.SourceImageForMeasurementGroup,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    label, probability, threshold = finding.label, float(finding.probability), float(finding.operating_point)
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f"finding {label}"[:64]),
        finding_type=codes.finding(label),
        algorithm_id=algorithm_id,
        source_images=[source_ref],
        measurements=[
            hd.sr.Measurement(codes.PROBABILITY, probability, codes.NO_UNITS, algorithm_id=algorithm_id),
            hd.sr.Measurement(codes.OPERATING_POINT, threshold, codes.NO_UNITS, algorithm_id=algorithm_id),
        ],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(codes.POSITIVE, codes.YES if finding.positive else codes.NO),
        ],
    )


def _latent_shift_group(
    ls: LatentShiftResult,
    cine: Dataset,
    algorithm_id: hd.sr.AlgorithmIdentification,
    source_ref: hd.sr.SourceImageForMeasurementGroup,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    count = len(ls.frames)
    if not (len(ls.lambdas) == len(ls.frame_probabilities) == count == int(cine.NumberOfFrames)):
        raise ValueError(
            f"latent shift for {ls.target!r}: {len(ls.lambdas)} lambdas, {len(ls.frame_probabilities)} "
            f"probabilities, {count} frames, {cine.NumberOfFrames} cine frames; pass the cine of this result"
        )
    measurements = []
    for number, (lam, prob) in enumerate(zip(ls.lambdas, ls.frame_probabilities, strict=True), start=1):
        frame = [hd.sr.SourceImageForMeasurement(cine.SOPClassUID, cine.SOPInstanceUID, [number])]
        measurements += [
            hd.sr.Measurement(codes.LAMBDA, float(lam), codes.NO_UNITS, referenced_images=frame),
            hd.sr.Measurement(codes.PROBABILITY, float(prob), codes.NO_UNITS, referenced_images=frame),
        ]
    gap = float(ls.reconstruction_gap)
    measurements.append(hd.sr.Measurement(codes.RECONSTRUCTION_GAP, gap, codes.NO_UNITS))
    tracking = hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f"latent shift {ls.target}"[:64])
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        finding_type=codes.finding(ls.target),
        method=codes.LATENT_SHIFT,
        algorithm_id=algorithm_id,
        source_images=[source_ref],
        measurements=measurements,
    )

"""DICOM export of an explanation: a derived Secondary Capture overlay in the source image's study.

Needs the ``[dicom]`` extra (``pip install 'cxrexplain-client[dicom]'``); imported lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .results import TargetResult

NOT_FOR_DIAGNOSTIC_USE = "NOT FOR DIAGNOSTIC USE"


def _require() -> tuple[Any, Any]:
    try:
        import highdicom
        import pydicom
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "DICOM export needs the [dicom] extra: pip install 'cxrexplain-client[dicom]'"
        ) from exc
    return pydicom, highdicom


def to_dicom(
    result: TargetResult,
    source_dataset: Any,
    method: str,
    alpha: float = 0.6,
    series_number: int = 9901,
    instance_number: int = 1,
    manufacturer: str = "cxrexplain",
) -> Any:
    """Build a derived RGB Secondary Capture showing ``method``'s overlay on the source image.

    Parameters
    ----------
    result
        The target's result (heatmaps and geometry).
    source_dataset
        The pydicom Dataset the explanation was computed from; the new instance joins its study and
        references it (patient and study attributes are copied from it by highdicom).
    method
        Which heatmap to show.
    alpha, series_number, instance_number, manufacturer
        Overlay opacity and identifying attributes of the new series.

    Returns
    -------
    pydicom.Dataset
        A ``highdicom.sc.SCImage``: ImageType DERIVED\\SECONDARY, marked not for diagnostic use,
        referencing the source SOP instance.
    """
    pydicom, highdicom = _require()
    picture = result.overlay(method, source_dataset, alpha=alpha)
    pixels = np.asarray(picture, dtype=np.uint8)
    sc = highdicom.sc.SCImage.from_ref_dataset(
        ref_dataset=source_dataset,
        pixel_array=pixels,
        photometric_interpretation=highdicom.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=highdicom.CoordinateSystemNames.PATIENT,
        series_instance_uid=highdicom.UID(),
        series_number=series_number,
        sop_instance_uid=highdicom.UID(),
        instance_number=instance_number,
        manufacturer=manufacturer,
        patient_orientation=("L", "F"),
    )
    sc.ImageType = ["DERIVED", "SECONDARY", "EXPLANATION"]
    sc.SeriesDescription = f"{method} explanation for {result.target} ({NOT_FOR_DIAGNOSTIC_USE})"[:64]
    sc.ImageComments = (
        f"cxrexplain {method} heatmap for '{result.target}'. {NOT_FOR_DIAGNOSTIC_USE}: research display only."
    )
    sc.BurnedInAnnotation = "NO"
    ref = pydicom.Dataset()
    ref.ReferencedSOPClassUID = source_dataset.SOPClassUID
    ref.ReferencedSOPInstanceUID = source_dataset.SOPInstanceUID
    sc.SourceImageSequence = [ref]
    sc.DerivationDescription = f"Overlay of the {method} explanation heatmap on the source image"
    return sc


__all__ = ["NOT_FOR_DIAGNOSTIC_USE", "to_dicom"]

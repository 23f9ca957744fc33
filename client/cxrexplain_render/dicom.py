"""The one DICOM writer: an overlay as a derived RGB Secondary Capture in its source image's study.

pydicom and highdicom are optional (the client's ``dicom`` extra) and imported only when a Secondary Capture
is written. Nothing here logs; attributes of the source are used only to build the derived object.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .errors import RenderInputError

NOT_FOR_DIAGNOSTIC_USE = "NOT FOR DIAGNOSTIC USE"

# Keys of a plain source mapping (those of the server's decoded-image info) -> the source dataset's keywords.
_UIDS = {
    "study_instance_uid": "StudyInstanceUID",
    "series_instance_uid": "SeriesInstanceUID",
    "sop_instance_uid": "SOPInstanceUID",
    "sop_class_uid": "SOPClassUID",
}
_PATIENT_LINK = {"patient_id": "PatientID", "patient_name": "PatientName"}


def burn_in_marking(rgb: Any, text: str = NOT_FOR_DIAGNOSTIC_USE) -> np.ndarray:
    """Write ``text`` in white on a black band across the top-left of an image.

    Parameters
    ----------
    rgb
        (H, W, 3) uint8 image; not modified.
    text
        The marking.

    Returns
    -------
    np.ndarray
        A marked (H, W, 3) uint8 copy; the font size fits the text into the width.
    """
    im = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), mode="RGB")
    size = max(8, min(im.height // 32, im.width // (len(text) * 2 // 3 + 2)))
    font = ImageFont.load_default(size=size)
    draw = ImageDraw.Draw(im)
    box = draw.textbbox((size // 2, size // 2), text, font=font)
    draw.rectangle((0, 0, box[2] + size // 2, box[3] + size // 2), fill=(0, 0, 0))
    draw.text((size // 2, size // 2), text, fill=(255, 255, 255), font=font)
    return np.asarray(im)


def _read_dataset(ds: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """What the derived object needs of a source dataset: UIDs, grid, orientation; and the patient link."""
    info: dict[str, Any] = {key: str(ds.get(keyword, "") or "") for key, keyword in _UIDS.items()}
    info["rows"], info["columns"] = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    spacing = ds.get("PixelSpacing", None)
    if spacing is not None and len(spacing) == 2:
        info["pixel_spacing"] = [float(spacing[0]), float(spacing[1])]
    orientation = ds.get("PatientOrientation", None)
    if orientation:
        values = [orientation] if isinstance(orientation, str) else orientation
        info["patient_orientation"] = [str(v) for v in values]
    link = {key: str(ds.get(keyword)) for key, keyword in _PATIENT_LINK.items() if ds.get(keyword, None)}
    return info, link


def secondary_capture(
    source: Any,
    overlay_rgb: Any,
    series_description: str,
    *,
    patient: Mapping[str, str] | None = None,
    series_number: int = 9901,
    series_instance_uid: str | None = None,
    instance_number: int = 1,
    derivation_description: str | None = None,
    burn_in: bool = True,
    manufacturer: str = "cxrexplain",
    software_version: str = "0.1.0",
) -> Any:
    """A derived RGB Secondary Capture (highdicom ``SCImage``) of an overlay, linked to its source image.

    Parameters
    ----------
    source
        The source ``pydicom.Dataset``, or a mapping with the keys ``study_instance_uid``,
        ``series_instance_uid``, ``sop_instance_uid``, ``sop_class_uid`` and optionally ``rows``,
        ``columns``, ``pixel_spacing``, ``patient_orientation`` (the server's decoded-image DICOM info).
    overlay_rgb
        (H, W, 3) uint8 array or PIL RGB image, normally :func:`~cxrexplain_render.overlay` at the original
        geometry.
    series_description
        Series Description (e.g. "cxrexplain RAP Cardiomegaly"); truncated to 64 characters.
    patient
        Patient ID / Name (keys ``patient_id``, ``patient_name``) when ``source`` is a mapping. Taken from the
        dataset when ``source`` is one. Only these two are copied: a PACS files a derived object under its
        patient and study, which is the standard behaviour of derived objects; nothing else about the patient
        is written.
    series_number, instance_number
        Numbers of the new series and instance.
    series_instance_uid
        The series the overlay joins (the overlays of one explanation share one); a new series when None.
    derivation_description
        Derivation Description; a generic sentence when None.
    burn_in
        Burn "NOT FOR DIAGNOSTIC USE" into the pixels (Burned In Annotation = YES). Image Comments carries
        the same marking either way.
    manufacturer, software_version
        Equipment attributes of the new series.

    Returns
    -------
    pydicom.Dataset
        Same Study Instance UID as the source; new Series and SOP Instance UIDs; Source Image Sequence and
        Referenced Series Sequence point at the source instance.

    Raises
    ------
    ImportError
        pydicom or highdicom is missing (install the client's ``dicom`` extra).
    RenderInputError
        The source lacks a UID the references need, or the overlay is not (H, W, 3) uint8.
    """
    try:
        import highdicom as hd
        from pydicom.dataset import Dataset
        from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    except ImportError as exc:
        raise ImportError(
            "writing a DICOM Secondary Capture needs pydicom and highdicom: "
            "pip install 'cxrexplain-client[dicom]'"
        ) from exc

    if isinstance(source, Dataset):
        info, link = _read_dataset(source)
    else:
        info, link = dict(source), dict(patient or {})
    for key in _UIDS:
        if not info.get(key):
            raise RenderInputError(f"the source DICOM has no {key}: cannot link a derived object to it")
    rgb = np.asarray(overlay_rgb.convert("RGB") if isinstance(overlay_rgb, Image.Image) else overlay_rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise RenderInputError(f"overlay must be (H, W, 3) uint8, got {rgb.dtype} {rgb.shape}")
    if burn_in:
        rgb = burn_in_marking(rgb)
    spacing = info.get("pixel_spacing")
    same_grid = (rgb.shape[0], rgb.shape[1]) == (info.get("rows"), info.get("columns"))
    sc = hd.sc.SCImage(
        pixel_array=np.ascontiguousarray(rgb),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        study_instance_uid=info["study_instance_uid"],
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=int(series_number),
        sop_instance_uid=generate_uid(),
        instance_number=int(instance_number),
        manufacturer=manufacturer,
        manufacturer_model_name="cxrexplain explanation service",
        software_versions=software_version,
        series_description=series_description[:64],
        patient_id=link.get("patient_id"),
        patient_name=link.get("patient_name"),
        # highdicom demands an orientation for the PATIENT system; the source's (or none) is set below.
        patient_orientation=("L", "F"),
        # Pixel spacing holds only when the overlay is on the source's own pixel grid.
        pixel_spacing=tuple(spacing) if spacing and same_grid else None,
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    orientation = info.get("patient_orientation")
    # Patient Orientation is Type 2 in the General Image module: empty when the source does not say.
    sc["PatientOrientation"].value = list(orientation) if orientation and len(orientation) == 2 else None
    # A chest is unpaired: General Series Laterality (Type 2C) is then absent (dciodvfy reads the body part).
    sc.BodyPartExamined = "CHEST"
    sc.BurnedInAnnotation = "YES" if burn_in else "NO"
    sc.ImageComments = f"{NOT_FOR_DIAGNOSTIC_USE}. Machine-generated explanation heatmap overlay."
    sc.DerivationDescription = (
        derivation_description or "Explanation heatmap of an AI classifier overlaid on the source radiograph"
    )[:1024]
    ref = Dataset()
    ref.ReferencedSOPClassUID = info["sop_class_uid"]
    ref.ReferencedSOPInstanceUID = info["sop_instance_uid"]
    sc.SourceImageSequence = [ref]  # General Reference module
    series_ref = Dataset()
    series_ref.SeriesInstanceUID = info["series_instance_uid"]
    inst = Dataset()
    inst.ReferencedSOPClassUID = info["sop_class_uid"]
    inst.ReferencedSOPInstanceUID = info["sop_instance_uid"]
    series_ref.ReferencedInstanceSequence = [inst]
    sc.ReferencedSeriesSequence = [series_ref]  # Common Instance Reference module
    return sc

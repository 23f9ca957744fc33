"""The coded concepts of every DICOM result object, and the project's private coding scheme.

Standard codes come from pydicom's copy of DICOM PS3.16 (DCM, SCT, UCUM), so none is typed by hand. Where the
standard has no concept (a model's operating point, the latent-shift lambda, an explanation method), the code
is in the private scheme ``99CXREXPLAIN``, declared in every object that uses it (Coding Scheme Identification
Sequence). docs/dicom.md lists them all.
"""

from __future__ import annotations

import re

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes

SCHEME = "99CXREXPLAIN"

CODING_SCHEME = CodingSchemeIdentificationItem(
    designator=SCHEME,
    name="cxrexplain explanation service codes",
    responsible_organization="cxrexplain project",
)

# --- standard
IMAGING_MEASUREMENT_REPORT = CodedConcept.from_code(codes.DCM.ImagingMeasurementReport)  # TID 1500 title
IMAGING_PROCEDURE = CodedConcept.from_code(codes.SCT.ImagingProcedure)  # procedure reported
PROBABILITY = CodedConcept.from_code(codes.DCM.Probability)  # DCM 122157
SALIENCY = CodedConcept.from_code(codes.DCM.Saliency)  # DCM 130404, the parametric map's quantity
NO_UNITS = CodedConcept.from_code(codes.UCUM.NoUnits)  # UCUM "1"
YES = CodedConcept.from_code(codes.SCT.Yes)
NO = CodedConcept.from_code(codes.SCT.No)
DEVICE = CodedConcept.from_code(codes.DCM.Device)  # observer type
PROCESSING_EQUIPMENT = CodedConcept.from_code(codes.DCM.ProcessingEquipment)  # Contributing Equipment purpose

# --- private (99CXREXPLAIN)
POSITIVE = CodedConcept("POSITIVE", SCHEME, "Positive at the model operating point")
OPERATING_POINT = CodedConcept("OPERATING-POINT", SCHEME, "Model operating point")
LATENT_SHIFT = CodedConcept("LATENT-SHIFT", SCHEME, "Latent shift counterfactual")
LAMBDA = CodedConcept("LS-LAMBDA", SCHEME, "Latent shift lambda")
RECONSTRUCTION_GAP = CodedConcept("LS-RECON-GAP", SCHEME, "Autoencoder reconstruction gap")


def finding(label: str) -> CodedConcept:
    """The code of a model's label: SNOMED CT where pydicom has a concept of that meaning, else private.

    Parameters
    ----------
    label
        The label as the model names it ("Cardiomegaly", "Pleural effusion", "Nodule", ...).

    Returns
    -------
    highdicom.sr.CodedConcept
        ``(SCT, <id>, <label>)`` when the SNOMED CT concept's meaning equals the label (case aside);
        otherwise ``(99CXREXPLAIN, <LABEL>, <label>)``, its value the label in upper case (a Long Code Value
        past 16 characters).
    """
    keyword = "".join(word[:1].upper() + word[1:] for word in re.split(r"[\s_-]+", label.strip()))
    try:
        known = getattr(codes.SCT, keyword)
    except AttributeError:
        known = None
    if known is not None and known.meaning.lower() == label.strip().lower():
        return CodedConcept.from_code(known)
    return CodedConcept(_private_value(label), SCHEME, label[:64])


def method(name: str) -> CodedConcept:
    """The private code of an explanation method by its wire name (``cam``, ``rap``, ``lrp``, ...)."""
    return CodedConcept(f"M-{_private_value(name)}", SCHEME, f"{name} explanation heatmap"[:64])


def _private_value(text: str) -> str:
    return re.sub(r"[^A-Z0-9]+", "-", text.strip().upper()).strip("-") or "UNNAMED"

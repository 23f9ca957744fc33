"""AI results as DICOM objects a PACS and a viewer understand, following the IHE AI Results (AIR) profile.

From a source image (pydicom Dataset) and the SDK's results: a Comprehensive 3D SR of the findings (TID 1500),
a Parametric Map per method and target (the raw map on the source's grid), the overlay as a Secondary Capture
(:func:`cxrexplain_render.secondary_capture`, the one writer of that picture) and the latent-shift frames as a
multi-frame Secondary Capture (cine). No torch and nothing of the server; needs the client's ``dicom`` extra
(pydicom, highdicom). docs/dicom.md names the templates and codes.
"""

from .cine import latent_shift_cine
from .pmap import parametric_map
from .results import OUTPUTS, DicomResults, dicom_results, save
from .source import NOT_FOR_DIAGNOSTIC_USE, Algorithm, SourceLink
from .sr import findings_sr

__all__ = [
    "NOT_FOR_DIAGNOSTIC_USE",
    "OUTPUTS",
    "Algorithm",
    "DicomResults",
    "SourceLink",
    "dicom_results",
    "findings_sr",
    "latent_shift_cine",
    "parametric_map",
    "save",
]

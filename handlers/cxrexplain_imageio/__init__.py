"""Image input: request bodies and users' files (PNG, JPEG, DICOM, NPY) to one grayscale display-space array.

Used by the serving layer and by the lab's evaluation on users' folders, so it belongs to neither. No torch:
:func:`cxrexplain.preprocess.to_model_input` turns the array into a model input.
"""

from .decode import ACCEPTED, DecodedImage, Kind, decode_image, detect_kind
from .dicom import DEFAULT_MODALITIES, dicom_info, dicom_patient_link

__all__ = ["ACCEPTED", "DEFAULT_MODALITIES", "DecodedImage", "Kind", "decode_image", "detect_kind", "dicom_info",
           "dicom_patient_link"]

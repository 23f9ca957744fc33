"""The original image as the SDK shows it under an overlay: whatever the caller has (a path, bytes, an array,
a PIL image, a pydicom Dataset) as an RGB picture. Drawing the overlay is :mod:`cxrexplain_render`'s job."""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
from PIL import Image


def to_display_image(image: Any) -> Image.Image:
    """An RGB picture of the original image, the base of the SDK's overlays.

    Parameters
    ----------
    image
        A PIL image, a numpy array ((H, W), (H, W, 1|3) or (1|3, H, W)), a path or bytes (PNG, JPEG, DICOM,
        .npy), or a pydicom Dataset. Arrays and 16-bit / float images are min-max scaled (intensities of
        X-rays have no fixed range).

    Returns
    -------
    PIL.Image.Image
        RGB, the size of the image.
    """
    if isinstance(image, Image.Image):
        if image.mode in ("I", "I;16", "I;16B", "F"):
            return to_display_image(np.asarray(image))
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        arr = np.asarray(image, dtype=np.float32)
        if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
            arr = np.moveaxis(arr, 0, -1)
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
        return Image.fromarray(np.round(scaled * 255).astype(np.uint8)).convert("RGB")
    if hasattr(image, "pixel_array"):  # pydicom Dataset
        return to_display_image(_dicom_display_array(image))
    data: bytes
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
    elif isinstance(image, (str, os.PathLike)):
        with open(image, "rb") as fh:
            data = fh.read()
    else:
        raise TypeError(
            f"cannot display an image of type {type(image).__name__}: pass a path, bytes, a numpy array, "
            "a PIL image or a pydicom Dataset"
        )
    if data[:6] == b"\x93NUMPY":
        return to_display_image(np.load(io.BytesIO(data), allow_pickle=False))
    if len(data) > 132 and data[128:132] == b"DICM":
        try:
            import pydicom
        except ImportError as exc:
            raise ImportError(
                "showing a DICOM file needs pydicom: pip install 'cxrexplain-client[dicom]'"
            ) from exc
        return to_display_image(_dicom_display_array(pydicom.dcmread(io.BytesIO(data))))
    return to_display_image(Image.open(io.BytesIO(data)))


def _dicom_display_array(ds: Any) -> np.ndarray:
    arr = np.asarray(ds.pixel_array, dtype=np.float32)
    if arr.ndim == 3 and getattr(ds, "SamplesPerPixel", 1) == 1:
        arr = arr[0]  # multi-frame: show the first frame
    if str(getattr(ds, "PhotometricInterpretation", "")) == "MONOCHROME1":
        arr = arr.max() - arr  # MONOCHROME1 shows high values dark
    return arr

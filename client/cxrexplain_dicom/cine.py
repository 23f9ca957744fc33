"""Latent-shift frames as a cine: a Multi-frame Grayscale Byte Secondary Capture the viewer plays as a loop.

Classic multi-frame SC has no per-frame attributes: each frame's lambda and probability go in the findings SR,
one entry per frame, referencing the frame by its number here (1 = the first, most negative lambda).
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.uid import MultiFrameGrayscaleByteSecondaryCaptureImageStorage as CINE_SOP_CLASS

import cxrexplain_render as render
from cxrexplain_client.results import LatentShiftResult

from .source import MANUFACTURER, NOT_FOR_DIAGNOSTIC_USE, Algorithm, SourceLink, mark_derived

BURN_IN_MIN_WIDTH = 128
"""Frames at least this wide get the marking burned in; in narrower ones it would hide the image."""


def latent_shift_cine(
    link: SourceLink,
    latent_shift: LatentShiftResult,
    algorithm: Algorithm,
    *,
    frame_time_ms: float = 120.0,
    series_instance_uid: str | None = None,
    series_number: int = 9903,
    instance_number: int = 1,
) -> Dataset:
    """The counterfactual frames of one target as a multi-frame 8-bit grey Secondary Capture.

    Parameters
    ----------
    link
        The source instance.
    latent_shift
        The SDK's result: frames (K, S, S) in [0, 1] at the model's resolution (the model's square crop of the
        source, not its pixel grid: no Pixel Spacing is claimed).
    algorithm
        The model that answered.
    frame_time_ms
        Frame Time (the Cine module's); Cine Rate follows from it.
    series_instance_uid, series_number, instance_number
        The cines of one explanation share a series; a new series when None.

    Returns
    -------
    pydicom.Dataset
        Multi-frame Grayscale Byte SC Image Storage, MONOCHROME2, DERIVED; Frame Increment Pointer to Frame
        Time; "NOT FOR DIAGNOSTIC USE" in Image Comments and Series Description, and burned into every frame
        at least :data:`BURN_IN_MIN_WIDTH` wide.

    Raises
    ------
    ValueError
        No frames, or frames that are not (K, H, W) finite values.
    """
    frames = np.asarray(latent_shift.frames, dtype=np.float32)
    if frames.ndim != 3 or frames.shape[0] < 1 or not np.isfinite(frames).all():
        raise ValueError(
            f"latent shift frames must be (K, H, W) finite values with K >= 1, got {frames.shape}: "
            "request the latent_shift method with frames"
        )
    pixels = np.rint(np.clip(frames, 0.0, 1.0) * 255.0).astype(np.uint8)
    burn_in = pixels.shape[2] >= BURN_IN_MIN_WIDTH
    if burn_in:
        rgb = np.repeat(pixels[..., None], 3, axis=-1)
        pixels = np.stack([render.burn_in_marking(frame)[..., 0] for frame in rgb])
    source = link.dataset
    sc = hd.base.SOPClass(
        study_instance_uid=source.StudyInstanceUID,
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        sop_class_uid=CINE_SOP_CLASS,
        instance_number=instance_number,
        modality="OT",
        manufacturer=MANUFACTURER,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        patient_id=source.get("PatientID"),
        patient_name=source.get("PatientName"),
        series_description=f"cxrexplain latent shift - {NOT_FOR_DIAGNOSTIC_USE}",
        manufacturer_model_name=algorithm.name[:64],
        software_versions=algorithm.version[:64],
        specific_character_set=source.get("SpecificCharacterSet"),
    )
    # SC Equipment: made by a workstation; General Image: derived from the source, orientation unknown.
    sc.ConversionType = "WSD"
    sc.BodyPartExamined = "CHEST"  # unpaired: General Series Laterality (Type 2C) is then absent
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.PatientOrientation = None
    sc.BurnedInAnnotation = "YES" if burn_in else "NO"
    sc.RecognizableVisualFeatures = "YES"  # a reconstruction of the radiograph
    sc.ImageComments = f"{NOT_FOR_DIAGNOSTIC_USE}. Latent shift counterfactual of '{latent_shift.target}'."
    sc.DerivationDescription = (
        f"Latent shift counterfactual frames of the model's input for '{latent_shift.target}'; "
        "lambda and probability of each frame in the cxrexplain findings SR"
    )[:1024]
    sc.SourceImageSequence = [link.source_image_item()]
    # Image Pixel, Multi-frame and Cine modules.
    sc.SamplesPerPixel = 1
    sc.PhotometricInterpretation = "MONOCHROME2"
    sc.Rows, sc.Columns = int(pixels.shape[1]), int(pixels.shape[2])
    sc.BitsAllocated = sc.BitsStored = 8
    sc.HighBit = 7
    sc.PixelRepresentation = 0
    sc.PresentationLUTShape = "IDENTITY"
    sc.RescaleIntercept, sc.RescaleSlope, sc.RescaleType = 0, 1, "US"  # SC Multi-frame Image: stored = shown
    sc.NumberOfFrames = int(pixels.shape[0])
    sc.FrameIncrementPointer = 0x00181063  # Frame Time
    sc.FrameTime = float(frame_time_ms)
    sc.CineRate = max(1, round(1000.0 / float(frame_time_ms)))
    sc.PixelData = np.ascontiguousarray(pixels).tobytes()
    mark_derived(sc, link, algorithm)
    return sc

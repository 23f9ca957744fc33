"""A heatmap as a Parametric Map: the raw signed map on the source image's pixel grid, float32, with a
real-world value mapping (identity, quantity Saliency) that viewers which support Parametric Maps overlay."""

from __future__ import annotations

from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

import cxrexplain_render as render

from . import codes
from .source import MANUFACTURER, NOT_FOR_DIAGNOSTIC_USE, Algorithm, SourceLink, mark_derived


def parametric_map(
    link: SourceLink,
    heatmap: Any,
    geometry: render.GeometryLike,
    method: str,
    target: str,
    algorithm: Algorithm,
    *,
    series_instance_uid: str | None = None,
    series_number: int = 9902,
    instance_number: int = 1,
) -> Dataset:
    """A Parametric Map of one method's raw map for one target, resampled to the source's rows x columns.

    Parameters
    ----------
    link
        The source instance (:meth:`SourceLink.from_dataset`).
    heatmap
        (S, S) raw signed map at the model's resolution (an SDK ``TargetResult.heatmaps[method]`` of an
        ``array`` response).
    geometry
        The response's geometry: where the model's square lies in the source image.
    method, target
        The method's wire name and the explained label.
    algorithm
        The model that answered.
    series_instance_uid, series_number, instance_number
        The maps of one explanation share a series; a new series when None.

    Returns
    -------
    pydicom.Dataset
        A ``highdicom.pm.ParametricMap``: Float Pixel Data of :func:`cxrexplain_render.heatmap_to_original`
        of the map, the source's Frame of Reference (or the link's new one), Source Image Sequence and
        Referenced Series Sequence naming the source.

    Raises
    ------
    ValueError
        The geometry is not the source's (the map was made for another image).
    """
    height, width = int(geometry.original_height), int(geometry.original_width)
    if (height, width) != (link.rows, link.columns):
        raise ValueError(
            f"the explanation's geometry is {height} x {width}, the source image {link.rows} x "
            f"{link.columns}: pass the explanation of this image"
        )
    pixels = render.heatmap_to_original(heatmap, geometry)
    render.maps.require_finite(pixels, "heatmap")
    low, high = float(pixels.min()), float(pixels.max())
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=codes.SALIENCY.meaning.upper()[:16],
        lut_explanation=f"raw signed {method} map for {target}"[:64],
        unit=codes.NO_UNITS,
        value_range=(low, high),
        slope=1.0,
        intercept=0.0,
        quantity_definition=codes.SALIENCY,
    )
    # Centred on zero: evidence for the target bright, evidence against it dark, no evidence mid-grey.
    # LINEAR_EXACT: raw maps often span less than 1 (RAP, LRP), and a LINEAR window narrower than 1 is not
    # permitted (PS3.3 C.11.2.1.2.1); LINEAR_EXACT maps exactly [center - width/2, center + width/2].
    half = max(abs(low), abs(high), 1e-12)
    pm = hd.pm.ParametricMap(
        source_images=[_image_plane(link)],
        pixel_array=pixels.astype(np.float32),
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=algorithm.name[:64],
        software_versions=algorithm.version[:64],
        device_serial_number=algorithm.weights_sha256[:64] or "unknown",
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(
            window_center=0.0, window_width=2.0 * half, voi_lut_function="LINEAR_EXACT")],
        pixel_measures=hd.PixelMeasuresSequence(pixel_spacing=link.pixel_spacing, slice_thickness=None),
        content_label=_content_label(method),
        content_description=f"{method} heatmap, {target}"[:64],
        content_qualification=hd.ContentQualificationValues.RESEARCH,
        series_description=f"cxrexplain heatmaps - {NOT_FOR_DIAGNOSTIC_USE}",
    )
    pm.BodyPartExamined = "CHEST"  # unpaired: General Series Laterality (Type 2C) is then absent
    mark_derived(pm, link, algorithm)
    return pm


def _image_plane(link: SourceLink) -> Dataset:
    """The link as highdicom's source of a map's geometry: the link's Frame of Reference, and the image plane.

    A Parametric Map must lie in a Frame of Reference with a plane position and orientation; a projection
    radiograph has neither (a CR not even the Frame of Reference). The map is given the image plane itself,
    at the origin of the link's Frame of Reference, rows along x and columns along y, and the source's pixel
    spacing (its Imager Pixel Spacing, else 1 mm): the Parametric Map lies on the source's pixel grid, which
    its Derivation Image Sequence states (Spatial Locations Preserved YES).
    """
    plane = Dataset()
    plane.update(link.dataset)
    plane.FrameOfReferenceUID = link.frame_of_reference_uid
    plane.PositionReferenceIndicator = None
    plane.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    plane.ImagePositionPatient = [0.0, 0.0, 0.0]
    plane.PixelSpacing = link.pixel_spacing
    plane.SliceThickness = None
    return plane


def _content_label(method: str) -> str:
    """Content Label is a CS (upper case, digits, space, underscore; 16 characters)."""
    return "".join(c if c.isalnum() or c == "_" else "_" for c in method.upper())[:16] or "HEATMAP"

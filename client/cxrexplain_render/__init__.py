"""Pictures of explanations, without torch: normalization, colormap, overlay, PNG/GIF encoding, DICOM.

One render path for the server (PNG heatmaps and GIFs on the wire), the client SDK (overlays, exports) and the
lab (figures), so every picture of a map is drawn the same way. numpy and Pillow are all it needs at import;
the DICOM writer imports pydicom and highdicom when called.
"""

from .colormap import COLORMAP_LUT, colorize, srgb_to_lab
from .dicom import NOT_FOR_DIAGNOSTIC_USE, burn_in_marking, secondary_capture
from .encode import ArrayDType, decode_array, encode_array, encode_png, frames_to_gif
from .errors import RenderError, RenderInputError, RenderOptionError
from .maps import normalize_for_display
from .overlay import DEFAULT_ALPHA, GeometryLike, heatmap_to_original, overlay

__all__ = [
    "COLORMAP_LUT",
    "DEFAULT_ALPHA",
    "NOT_FOR_DIAGNOSTIC_USE",
    "ArrayDType",
    "GeometryLike",
    "RenderError",
    "RenderInputError",
    "RenderOptionError",
    "burn_in_marking",
    "colorize",
    "decode_array",
    "encode_array",
    "encode_png",
    "frames_to_gif",
    "heatmap_to_original",
    "normalize_for_display",
    "overlay",
    "secondary_capture",
    "srgb_to_lab",
]

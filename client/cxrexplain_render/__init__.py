"""Pictures of explanations, without torch: normalization, colormap, overlay, PNG/GIF encoding, DICOM.

One render path for the server (PNG heatmaps and GIFs on the wire), the client SDK (overlays, exports) and the
lab (figures), so every picture of a map is drawn the same way.
"""

from .maps import normalize_for_display

__all__ = ["normalize_for_display"]

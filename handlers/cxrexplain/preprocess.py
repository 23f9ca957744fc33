"""Model input from a decoded image: the bundle's resize policy and value range, and where the square lies.

Used by the serving layer after :func:`cxrexplain_imageio.decode_image` and by the lab on users' folders, so the
server and the engine preprocess identically.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .errors import InvalidInput
from .spec import InputSpec


@dataclass(frozen=True)
class Geometry:
    """Where the model's square input lies in the original image (``Geometry`` of protos/explain.proto).

    ``crop_size == 0`` marks the ``"stretch"`` resize policy: the whole image was resized to the model's
    square without cropping, so ``crop_top`` and ``crop_left`` are 0 and the map goes back by a plain resize.
    """

    original_height: int
    original_width: int
    crop_top: int
    crop_left: int
    crop_size: int
    model_size: int

    def to_dict(self) -> dict[str, int]:
        return {
            "original_height": self.original_height,
            "original_width": self.original_width,
            "crop_top": self.crop_top,
            "crop_left": self.crop_left,
            "crop_size": self.crop_size,
            "model_size": self.model_size,
        }


def to_model_input(pixels: np.ndarray, spec: InputSpec) -> tuple[torch.Tensor, Geometry]:
    """Display-space (H, W) image -> model input (1, C, S, S) and the geometry to map heatmaps back.

    Uses the spec's own resize policy (:meth:`InputSpec.resize_unit`: centre-crop to a square, then resize)
    and :meth:`InputSpec.from_unit`, so the server and the engine preprocess identically.
    """
    arr = np.asarray(pixels, dtype=np.float32)
    if arr.ndim != 2:
        raise InvalidInput(f"expected one (H, W) gray image, got shape {arr.shape}")
    h, w = arr.shape
    g = torch.from_numpy(np.ascontiguousarray(arr))[None, None]
    x = spec.from_unit(spec.resize_unit(g))
    if spec.resize == "center_crop":
        s = min(h, w)
        geometry = Geometry(h, w, (h - s) // 2, (w - s) // 2, s, spec.size)
    else:
        geometry = Geometry(h, w, 0, 0, 0, spec.size)
    return x, geometry

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


def to_model_input(
    pixels: np.ndarray, spec: InputSpec, *, original_size: tuple[int, int] | None = None, reduction: int = 1
) -> tuple[torch.Tensor, Geometry]:
    """Display-space (H, W) image -> model input (1, C, S, S) and the geometry to map heatmaps back.

    Uses the spec's own resize policy (:meth:`InputSpec.resize_unit`: centre-crop to a square, then resize)
    and :meth:`InputSpec.from_unit`, so the server and the engine preprocess identically.

    ``pixels`` may be the original image reduced by an integer factor while decoding (``reduction``; pixel
    ``i`` covers original pixels ``i * reduction`` to ``(i + 1) * reduction``) of an ``original_size``
    (height, width) image: the geometry is then that of the original, and the crop is taken at the same place
    of the reduced image (to the nearest reduced pixel).
    """
    arr = np.asarray(pixels, dtype=np.float32)
    if arr.ndim != 2:
        raise InvalidInput(f"expected one (H, W) gray image, got shape {arr.shape}")
    h, w = original_size if original_size is not None else arr.shape
    r = max(1, int(reduction))
    if spec.resize == "center_crop":
        s = min(h, w)
        geometry = Geometry(h, w, (h - s) // 2, (w - s) // 2, s, spec.size)
        if r > 1 or original_size is not None:
            side = max(1, round(s / r))
            top = min(round(geometry.crop_top / r), max(0, arr.shape[0] - side))
            left = min(round(geometry.crop_left / r), max(0, arr.shape[1] - side))
            arr = arr[top : top + side, left : left + side]
    else:
        geometry = Geometry(h, w, 0, 0, 0, spec.size)
    g = torch.from_numpy(np.ascontiguousarray(arr))[None, None]
    x = spec.from_unit(spec.resize_unit(g))
    return x, geometry

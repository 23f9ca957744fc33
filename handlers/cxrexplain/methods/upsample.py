"""Bring a coarse (N, h, w) map to the input's (H, W): bilinear, as the CAM papers display them."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def to_input_size(maps: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(N, h, w) -> (N, H, W) float32 at the spatial size of ``x`` (N, C, H, W)."""
    size = x.shape[-2:]
    if maps.shape[-2:] == size:
        return maps.float()
    return F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]

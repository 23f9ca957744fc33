"""Hand-made autoencoders shared by the Latent Shift tests (one definition, imported where needed)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class PoolAE(nn.Module):
    """Linear autoencoder: E = 4x4 average pooling, D = nearest-neighbour upsampling."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 4)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return F.interpolate(z, scale_factor=4, mode="nearest")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

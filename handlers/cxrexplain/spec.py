"""Input spaces: how a grayscale image in [0, 1] ("unit space", also the display space) maps to a model's input.

Every model carries an :class:`InputSpec`. Converting between two models (classifier and autoencoder) goes
through unit space with differentiable maps, so latent shift can chain D(E(x)) into f.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputSpec:
    """What a model expects.

    ``x = (g * (hi - lo) + lo - mean[c]) / std[c]`` for a unit-space gray image ``g``, repeated over ``channels``.
    torchvision defaults: 3 channels, range (0, 1), ImageNet mean/std. torchxrayvision: 1 channel,
    range (-1024, 1024), mean 0, std 1.
    """

    channels: int = 3
    size: int = 224
    value_range: tuple[float, float] = (0.0, 1.0)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    resize: Literal["center_crop", "stretch"] = "center_crop"
    name: str = field(default="torchvision")

    def __post_init__(self) -> None:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean and std need {self.channels} entries, got {self.mean} and {self.std}")

    def _affine(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(self.mean, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)
        return mean, std

    def from_unit(self, g: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) gray in [0, 1] -> (N, C, H, W) model input. Differentiable."""
        lo, hi = self.value_range
        mean, std = self._affine(g)
        return (g.expand(-1, self.channels, -1, -1) * (hi - lo) + lo - mean) / std

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) model input -> (N, 1, H, W) gray in unit space (channel mean). Differentiable."""
        lo, hi = self.value_range
        mean, std = self._affine(x)
        return ((x * std + mean - lo) / (hi - lo)).mean(dim=1, keepdim=True)

    def resize_unit(self, g: torch.Tensor) -> torch.Tensor:
        """Resize (N, 1, H, W) unit images to ``size`` by the spec's policy (default: centre-crop to a square)."""
        h, w = g.shape[-2:]
        if self.resize == "center_crop" and h != w:
            s = min(h, w)
            top, left = (h - s) // 2, (w - s) // 2
            g = g[..., top : top + s, left : left + s]
        if g.shape[-2:] != (self.size, self.size):
            g = F.interpolate(g, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return g

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputSpec:
        d = dict(d)
        for key in ("value_range", "mean", "std"):
            if key in d:
                d[key] = tuple(float(v) for v in d[key])
        return cls(**d)


TORCHVISION = InputSpec()
XRV = InputSpec(channels=1, size=224, value_range=(-1024.0, 1024.0), mean=(0.0,), std=(1.0,), name="torchxrayvision")


def unit_spec(channels: int = 1, size: int = 224) -> InputSpec:
    """A model that takes unit-space gray directly (the phantom-trained demo models)."""
    return InputSpec(channels=channels, size=size, value_range=(0.0, 1.0), mean=(0.0,) * channels,
                     std=(1.0,) * channels, name="unit")

"""Classifier architectures by name, and loading users' local weight files into bundles."""

from __future__ import annotations

import torch.nn as nn
from torchvision.models import DenseNet

from .errors import WeightsError


def _densenet_small(num_labels: int, in_channels: int) -> nn.Module:
    """The demo classifier: DenseNet-121's layout (4 dense blocks, 3 transitions, GAP + linear) at a size
    that trains on a 2-core CPU in minutes."""
    model = DenseNet(growth_rate=12, block_config=(2, 2, 2, 2), num_init_features=24, bn_size=4,
                     num_classes=num_labels)
    if in_channels != 3:
        model.features.conv0 = nn.Conv2d(in_channels, 24, kernel_size=7, stride=2, padding=3, bias=False)
    return model


def build_classifier(arch: str, num_labels: int, in_channels: int = 3) -> nn.Module:
    """An untrained classifier of a named architecture with ``num_labels`` outputs."""
    builders = {"densenet_small": _densenet_small}
    if arch not in builders:
        raise WeightsError(f"unknown architecture {arch!r}; known: {', '.join(sorted(builders))}")
    return builders[arch](num_labels, in_channels)

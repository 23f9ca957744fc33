"""torchxrayvision's DenseNet-121 (``res224-*`` weight files) as a module of our own, and its weight metadata.

Read from torchxrayvision 1.x ``models.py``: its DenseNet keeps torchvision's parameter names
(``features.conv0``, ``features.denseblockB.denselayerL.{norm1,conv1,norm2,conv2}``, ``features.transitionT.
{norm,conv}``, ``features.norm5``, ``classifier``) and computes what torchvision's DenseNet computes:
``features -> ReLU -> global average pool -> Linear``, with one input channel, 18 outputs and input pixels in
[-1024, 1024] at 224 px. So torchvision's :class:`~torchvision.models.DenseNet` with a one-channel stem loads
its state dicts strictly.

Two differences are deliberate. torchxrayvision's ``forward`` resizes off-size inputs and, when ``op_threshs``
are set, returns ``op_norm(sigmoid(logits))`` (each finding rescaled piecewise-linearly so its operating point
lands on 0.5: :func:`op_norm`). Our module returns the raw logits; the bundle keeps the operating points as
``op_thresholds`` (probabilities), so "positive" means ``sigmoid(logit) >= op_threshold`` for every model, and
resizing belongs to the input spec, outside the differentiable graph methods walk. The bundle's ``op_norm`` flag
says that the model's published output is ``op_norm(sigmoid(logit), op_thresholds)``: Latent Shift works in
those units, as [Cohen2021] does (its f is torchxrayvision's output).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torchvision.models import DenseNet

# The 18 outputs of every res224 DenseNet, in torchxrayvision's order (its ``default_pathologies``).
XRV_LABELS: tuple[str, ...] = (
    "Atelectasis", "Consolidation", "Infiltration", "Pneumothorax", "Edema", "Emphysema", "Fibrosis",
    "Effusion", "Pneumonia", "Pleural_Thickening", "Cardiomegaly", "Nodule", "Mass", "Hernia",
    "Lung Lesion", "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum",
)

# Operating points (probabilities) published with ``densenet121-res224-all``, the weights trained on all
# datasets, aligned with XRV_LABELS. Weight metadata as data: a sidecar JSON overrides them for other files.
XRV_ALL_OP_THRESHOLDS: tuple[float, ...] = (
    0.07422872, 0.038290843, 0.09814756, 0.0098118475, 0.023601074, 0.0022490358, 0.010060724, 0.103246614,
    0.056810737, 0.026791653, 0.050318155, 0.023985857, 0.01939503, 0.042889766, 0.053369623, 0.035975814,
    0.20204692, 0.05015312,
)

# The registered architecture name of this module (cxrexplain.models.architectures).
XRV_ARCHITECTURE = "xrv-densenet121"

# The buffer in which torchxrayvision keeps operating points, when a model was built with them.
XRV_OP_THRESHS_KEY = "op_threshs"


def xrv_densenet121(num_labels: int = len(XRV_LABELS), in_channels: int = 1) -> nn.Module:
    """A DenseNet-121 with torchxrayvision's layout: loads ``densenet121-res224-*`` state dicts unchanged.

    Parameters
    ----------
    num_labels
        Outputs of the linear head (18 for every published res224 file).
    in_channels
        Input channels (1 for every published file).

    Returns
    -------
    nn.Module
        Untrained; ``forward`` returns (N, num_labels) logits.
    """
    model = DenseNet(growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64, bn_size=4,
                     num_classes=num_labels)
    if in_channels != 3:
        model.features.conv0 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


def clean_thresholds(values: list[float]) -> list[float]:
    """Operating points as plain floats; NaN (torchxrayvision: "no such output in this file") becomes 0.5."""
    return [0.5 if value is None or math.isnan(value) else float(value) for value in values]


def op_norm(p: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """torchxrayvision's ``op_norm``: probabilities rescaled piecewise-linearly so each operating point is 0.5.

    ``p / (2 t)`` below ``t``, ``1 - (1 - p) / (2 (1 - t))`` from ``t`` on (torchxrayvision 1.x ``models.op_norm``,
    the same comparison ``p < t``), written with ``torch.where`` so it is differentiable in ``p``. ``thresholds``
    broadcasts against ``p`` (per label (L,) against (N, L), or per row (N,) against (N,)). A NaN operating
    point (torchxrayvision: "no such output", where it answers a constant 0.5) is 0.5 here after
    :func:`clean_thresholds`, which makes ``op_norm`` the identity.
    """
    t = thresholds.to(p.dtype)
    return torch.where(p < t, p / (2 * t), 1 - (1 - p) / (2 * (1 - t)))


def op_norm_slope(f: float, threshold: float) -> float:
    """d op_norm(σ(l), t) / dl at the point where the normalized output is ``f``, from ``f`` alone.

    Below the operating point σ = 2 t f and the slope is σ (1 - σ) / (2 t) = f (1 - 2 t f); from it on
    1 - σ = 2 (1 - t)(1 - f) and the slope is σ (1 - σ) / (2 (1 - t)) = σ (1 - f). At t = 0.5 both are
    f (1 - f), the sigmoid's own slope: Latent Shift's conversion of its λ step between the logit and the
    probability directions.
    """
    if f < 0.5:
        return f * (1 - 2 * threshold * f)
    return (1 - 2 * (1 - threshold) * (1 - f)) * (1 - f)

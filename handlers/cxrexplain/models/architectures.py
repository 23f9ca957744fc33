"""Classifier architectures by name (``build_classifier``), and where a module's classification head is.

- ``densenet121`` / ``chexnet``: CheXNet as in [Nam2021], torchvision's DenseNet-121 with
  ``classifier = Linear(1024, L)``, the 14 NIH ChestX-ray14 labels by default.
- ``t_densenet121`` (``t-densenet``): T-DenseNet ([Khakzar2022] §3): DenseNet-121 with the last two dense
  blocks and their transitions (transition2, transition3) discarded, so the last feature maps are 28x28 at
  224 px (512 channels). We keep DenseNet's own head on what remains: BatchNorm (``features.norm5``, 512
  features) + ReLU + global average pool + ``Linear(512, L)``; parameter names are torchvision's, so an
  ImageNet DenseNet-121 state dict fills blocks 1-2 unchanged.
- any torchvision ResNet / ResNeXt / Wide-ResNet / DenseNet / VGG by its torchvision name (``resnet50``,
  ``vgg16``, ``densenet169``, ``vgg16_bn``, ...), always built with ``weights=None`` (nothing is downloaded).
- ``xrv-densenet121``: torchxrayvision's res224 DenseNet-121 (see :mod:`cxrexplain.xrv_densenet`).
- ``densenet_small``: the test fixtures' model trained on the phantom set (last maps at stride 32).
- ``densenet_fine``: the served demo's model, ``densenet_small`` truncated after dense block 2 as T-DenseNet is
  ([Khakzar2022] §3), so its last maps are at stride 8 (12x12 at 96 px) and CAM can outline a lesion.

The lab's training cache hashes this file (``cxrexplain_lab.demo_models.cache_key``): it is what shapes the demo
classifier's weights. Weight loading lives apart (:mod:`.loading`, :mod:`.weight_files`,
:mod:`.checkpoint_keys`), so editing it does not invalidate that cache.

References are keyed as in ``docs/references.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch.nn as nn
import torchvision
from torchvision.models import DenseNet

from ..errors import WeightsError
from ..spec import TORCHVISION, XRV, InputSpec, unit_spec
from ..xrv_densenet import XRV_ALL_OP_THRESHOLDS, XRV_LABELS, xrv_densenet121

logger = logging.getLogger(__name__)

# CheXNet's output order (NIH ChestX-ray14).
NIH_LABELS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
    "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)

_TORCHVISION_FAMILIES = {"densenet": ("classifier", "features.conv0"), "resnet": ("fc", "conv1"),
                         "resnext": ("fc", "conv1"), "wide_resnet": ("fc", "conv1"),
                         "vgg": ("classifier.6", "features.0")}


@dataclass(frozen=True)
class Architecture:
    """What is known about a named architecture: how to build it and its defaults."""

    name: str
    build: Callable[[int, int], nn.Module]  # (num_labels, in_channels) -> module
    head: str  # dotted path of the final nn.Linear
    stem: str  # dotted path of the first nn.Conv2d
    labels: tuple[str, ...] | None = None
    op_thresholds: tuple[float, ...] | None = None
    in_channels: int = 3
    spec: Callable[[int], InputSpec] | None = None  # in_channels -> default input spec


def _replace(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _with_stem(model: nn.Module, stem: str, in_channels: int) -> nn.Module:
    """Swap the first convolution for one taking ``in_channels`` (same kernel, stride, padding)."""
    conv = model.get_submodule(stem)
    assert isinstance(conv, nn.Conv2d)
    if conv.in_channels != in_channels:
        _replace(model, stem, nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride,  # type: ignore[arg-type]
                                        conv.padding, bias=conv.bias is not None))  # type: ignore[arg-type]
    return model


def _densenet_small(num_labels: int, in_channels: int) -> nn.Module:
    """The demo classifier: DenseNet-121's layout (4 dense blocks, 3 transitions, GAP + linear) at a size
    that trains on a 2-core CPU in minutes."""
    model = DenseNet(growth_rate=12, block_config=(2, 2, 2, 2), num_init_features=24, bn_size=4,
                     num_classes=num_labels)
    if in_channels != 3:
        model.features.conv0 = nn.Conv2d(in_channels, 24, kernel_size=7, stride=2, padding=3, bias=False)
    return model


def _densenet_fine(num_labels: int, in_channels: int) -> nn.Module:
    """The served demo classifier: T-DenseNet's truncation ([Khakzar2022] §3) of ``densenet_small``, two dense
    blocks and one transition, deeper blocks to keep the receptive field (about 110 px) over a whole phantom
    heart. Stride 8: 12x12 last maps at 96 px where ``densenet_small`` has 3x3."""
    model = DenseNet(growth_rate=12, block_config=(4, 4), num_init_features=24, bn_size=4,
                     num_classes=num_labels)
    return _with_stem(model, "features.conv0", in_channels)


def _t_densenet121(num_labels: int, in_channels: int) -> nn.Module:
    """T-DenseNet ([Khakzar2022] §3): DenseNet-121's stem, dense block 1, transition 1 and dense block 2 (12 layers);
    at 224 px the stem gives 56x56, transition 1 halves it to 28x28, so the pooled maps are 28x28x512."""
    model = DenseNet(growth_rate=32, block_config=(6, 12), num_init_features=64, bn_size=4,
                     num_classes=num_labels)
    return _with_stem(model, "features.conv0", in_channels)


def _torchvision_builder(name: str, stem: str) -> Callable[[int, int], nn.Module]:
    def build(num_labels: int, in_channels: int) -> nn.Module:
        # weights=None: torchvision never downloads, and num_classes sizes the head directly.
        model = torchvision.models.get_model(name, weights=None, num_classes=num_labels)
        return _with_stem(model, stem, in_channels)

    return build


def _torchvision_spec(in_channels: int) -> InputSpec:
    if in_channels == 3:
        return TORCHVISION
    # A gray torchvision-style model: ImageNet statistics averaged over the three channels.
    logger.warning("no input spec given for a %d-channel torchvision model: assuming [0, 1] pixels "
                   "normalized by the mean ImageNet statistics; pass input_spec= or a sidecar JSON",
                   in_channels)
    return InputSpec(channels=in_channels, mean=(0.449,) * in_channels, std=(0.226,) * in_channels,
                     name="torchvision")


def _xrv_spec(in_channels: int) -> InputSpec:
    if in_channels == 1:
        return XRV
    return InputSpec(channels=in_channels, size=224, value_range=(-1024.0, 1024.0), mean=(0.0,) * in_channels,
                     std=(1.0,) * in_channels, name="torchxrayvision")


def _registry() -> dict[str, Architecture]:
    archs: dict[str, Architecture] = {}
    for name in torchvision.models.list_models(module=torchvision.models):
        family = next((f for f in _TORCHVISION_FAMILIES if name.startswith(f)), None)
        if family is None:
            continue
        head, stem = _TORCHVISION_FAMILIES[family]
        archs[name] = Architecture(name, _torchvision_builder(name, stem), head, stem, labels=NIH_LABELS,
                                   spec=_torchvision_spec)
    archs["t_densenet121"] = Architecture("t_densenet121", _t_densenet121, "classifier", "features.conv0",
                                          labels=NIH_LABELS, spec=_torchvision_spec)
    archs["xrv-densenet121"] = Architecture("xrv-densenet121", xrv_densenet121, "classifier",
                                            "features.conv0", labels=XRV_LABELS,
                                            op_thresholds=XRV_ALL_OP_THRESHOLDS, in_channels=1,
                                            spec=_xrv_spec)
    archs["densenet_small"] = Architecture("densenet_small", _densenet_small, "classifier", "features.conv0",
                                           spec=lambda c: unit_spec(channels=c))
    archs["densenet_fine"] = Architecture("densenet_fine", _densenet_fine, "classifier", "features.conv0",
                                          spec=lambda c: unit_spec(channels=c))
    return archs


ARCHITECTURES: dict[str, Architecture] = _registry()
ALIASES: dict[str, str] = {
    "chexnet": "densenet121", "t-densenet": "t_densenet121", "t-densenet121": "t_densenet121",
    "tdensenet": "t_densenet121", "xrv_densenet121": "xrv-densenet121",
    "densenet121-res224-all": "xrv-densenet121",
}


def architecture(name: str) -> Architecture:
    """Look up a named architecture (case-insensitive, aliases allowed); raises :class:`WeightsError`."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in ARCHITECTURES:
        known = sorted(ARCHITECTURES) + [f"{alias} (= {target})" for alias, target in sorted(ALIASES.items())]
        raise WeightsError(f"unknown architecture {name!r}; known: {', '.join(known)}; or pass an nn.Module")
    return ARCHITECTURES[key]


def build_classifier(arch: str, num_labels: int, in_channels: int | None = None) -> nn.Module:
    """An untrained classifier of a named architecture.

    Parameters
    ----------
    arch
        An architecture name (see the module docstring; ``architecture`` lists them in its error).
    num_labels
        Outputs of the final linear layer.
    in_channels
        Input channels; default: the architecture's own (1 for ``xrv-densenet121``, otherwise 3).

    Returns
    -------
    nn.Module
        A module in eval mode whose ``forward`` returns (N, num_labels) logits.
    """
    spec = architecture(arch)
    model = spec.build(num_labels, spec.in_channels if in_channels is None else in_channels)
    return model.eval()



def find_head(module: nn.Module) -> nn.Linear | None:
    """The classification head of a module: its last ``nn.Linear`` in registration order.

    That is ``classifier`` of a DenseNet, ``fc`` of a ResNet, ``classifier.6`` of a VGG (whose
    ``classifier`` is a Sequential) and the final Linear of a custom ``nn.Sequential``. Used by
    :func:`~cxrexplain.models.load_classifier` and :class:`~cxrexplain.Explainer` to count a bare module's
    outputs when no labels are given.

    Parameters
    ----------
    module
        A classifier whose ``forward`` ends in a linear layer.

    Returns
    -------
    nn.Linear or None
        ``None`` when the module has no ``nn.Linear`` (a convolutional head, a functional one): the caller
        must then be given the labels.
    """
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None

"""The ResNet autoencoder of Latent Shift ([Cohen2021] §4.1), with torchxrayvision's ``ResNetAE`` parameter layout.

Module and parameter names follow ``torchxrayvision.autoencoders.ResNetAE`` (stem ``conv1/bn1/maxpool``, encoder
``layer1..4`` of bottleneck blocks, decoder ``uplayer1..4`` + ``uplayer_top`` of transposed-conv bottlenecks and a
1x1 ``conv1_1``), so a user's ``101-elastic`` state dict loads unchanged. Two quirks of that layout are kept
because the weights depend on them: every block applies ReLU after its last batch norm *and* after the residual
sum, and a strided decoder shortcut is a 1x1 transposed conv with ``output_padding=1`` whatever the stride.

Geometry: the 101 layout downsamples by 2 (stem), 2 (max-pool), 1, 2, 2 and 6, so a 224 px image becomes a
512 x 3 x 3 latent (4608 values, the paper's bottleneck) and decodes back to 224 px; in general it reconstructs
sizes ``96 m - 64`` (32, 128, 224, ...). The small demo layout uses stride 1 in the last stage, so its total
stride is 16 and it reconstructs every size divisible by 16.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from .errors import WeightsError
from .spec import XRV, InputSpec, unit_spec

EXPANSION = 4  # channel expansion of the encoder's bottleneck blocks (and of the decoder's inner blocks)


def _shortcut(conv: nn.Module, channels: int) -> nn.Sequential:
    # Indices 0 and 1 are part of the state-dict keys ("downsample.0.weight", "upsample.1.running_mean").
    return nn.Sequential(conv, nn.BatchNorm2d(channels))


class _Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 with a residual; ReLU after bn3 and again after the sum (xrv's order)."""

    def __init__(self, in_ch: int, width: int, out_ch: int, stride: int, up: bool, shortcut: nn.Module | None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, width, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        if up and stride > 1:
            self.conv2: nn.Module = nn.ConvTranspose2d(width, width, kernel_size=3, stride=stride, padding=1,
                                                       output_padding=1, bias=False)
        else:
            self.conv2 = nn.Conv2d(width, width, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU()  # not in place: hooks and fx tracing must see every activation
        # The shortcut's attribute name is part of the state-dict keys: "downsample" down, "upsample" up.
        self.shortcut_name = "upsample" if up else "downsample"
        setattr(self, self.shortcut_name, shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.relu(self.bn3(self.conv3(out)))
        shortcut = getattr(self, self.shortcut_name)
        return self.relu(out + (x if shortcut is None else shortcut(x)))


@dataclass(frozen=True)
class AEConfig:
    """Widths, depths and strides of one :class:`ResNetAE` layout.

    ``down_widths[i]`` is the inner width of encoder stage i (its output has 4x as many channels);
    ``up_widths[i]`` the inner width of decoder stage i (its output has 2x as many channels). Decoder stage i
    has the depth of encoder stage 3 - i; its strides mirror the encoder's downsampling, with the last stage
    undoing the max-pool (xrv: up strides 6, 2, 2, 2) and ``uplayer_top`` the stem.
    """

    stem: int = 64
    down_widths: tuple[int, int, int, int] = (64, 128, 256, 128)
    down_blocks: tuple[int, int, int, int] = (3, 4, 23, 2)
    down_strides: tuple[int, int, int, int] = (1, 2, 2, 6)
    up_widths: tuple[int, int, int, int] = (128, 64, 32, 16)
    up_strides: tuple[int, int, int, int] = (6, 2, 2, 2)
    top: int = 64
    channels: int = 1


class ResNetAE(nn.Module):
    """ResNet autoencoder: ``encode(x) -> z``, ``decode(z) -> x``, ``forward(x) = decode(encode(x))``.

    Parameters
    ----------
    config
        The layout; the default is torchxrayvision's ResNetAE-101.
    """

    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential
    uplayer1: nn.Sequential
    uplayer2: nn.Sequential
    uplayer3: nn.Sequential
    uplayer4: nn.Sequential

    def __init__(self, config: AEConfig | None = None):
        super().__init__()
        c = config or AEConfig()
        self.config = c
        self.conv1 = nn.Conv2d(c.channels, c.stem, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(c.stem)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        ch = c.stem
        for i, (width, blocks, stride) in enumerate(zip(c.down_widths, c.down_blocks, c.down_strides,
                                                        strict=True)):
            stage, ch = self._down_stage(ch, width, blocks, stride)
            setattr(self, f"layer{i + 1}", stage)
        for i, (width, blocks, stride) in enumerate(zip(c.up_widths, c.down_blocks[::-1], c.up_strides,
                                                        strict=True)):
            stage, ch = self._up_stage(ch, width, blocks, stride)
            setattr(self, f"uplayer{i + 1}", stage)
        self.uplayer_top = _Bottleneck(ch, c.top, c.top, stride=2, up=True, shortcut=_shortcut(
            nn.ConvTranspose2d(ch, c.top, kernel_size=1, stride=2, output_padding=1, bias=False), c.top))
        self.conv1_1 = nn.ConvTranspose2d(c.top, c.channels, kernel_size=1, stride=1, bias=False)
        self.total_stride = 2 * 2 * math.prod(c.down_strides)  # stem, max-pool, then the four stages

    @staticmethod
    def _down_stage(ch: int, width: int, blocks: int, stride: int) -> tuple[nn.Sequential, int]:
        out = width * EXPANSION
        shortcut = None
        if stride != 1 or ch != out:
            shortcut = _shortcut(nn.Conv2d(ch, out, kernel_size=1, stride=stride, bias=False), out)
        layers = [_Bottleneck(ch, width, out, stride, up=False, shortcut=shortcut)]
        layers += [_Bottleneck(out, width, out, 1, up=False, shortcut=None) for _ in range(blocks - 1)]
        return nn.Sequential(*layers), out

    @staticmethod
    def _up_stage(ch: int, width: int, blocks: int, stride: int) -> tuple[nn.Sequential, int]:
        # Inner blocks keep the channel count (expansion 4, identity shortcut); the last one halves it to
        # 2 * width and carries the stride, as in xrv.
        if blocks > 1 and ch != width * EXPANSION:
            raise ValueError(f"a decoder stage with {blocks} blocks needs {width * EXPANSION} input channels, "
                             f"got {ch}: make its width a quarter of the previous stage's output")
        out = width * 2
        shortcut = None
        if stride != 1 or ch != out:
            shortcut = _shortcut(nn.ConvTranspose2d(ch, out, kernel_size=1, stride=stride,
                                                    output_padding=1 if stride > 1 else 0, bias=False), out)
        layers = [_Bottleneck(ch, width, ch, 1, up=True, shortcut=None) for _ in range(blocks - 1)]
        layers.append(_Bottleneck(ch, width, out, stride, up=True, shortcut=shortcut))
        return nn.Sequential(*layers), out

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) image in the autoencoder's input space -> latent z."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent z -> (N, C, H, W) image in the autoencoder's input space."""
        z = self.uplayer4(self.uplayer3(self.uplayer2(self.uplayer1(z))))
        return self.conv1_1(self.uplayer_top(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def reconstructed_size(size: int, config: AEConfig | None = None) -> int:
    """The side length ``decode(encode(x))`` has for a square input of side ``size`` (pure arithmetic)."""
    c = config or AEConfig()
    s = (size + 1) // 2  # stem conv, kernel 7, padding 3, stride 2
    s = (s + 1) // 2  # max-pool, kernel 3, padding 1, stride 2
    for stride in c.down_strides:
        s = (s - 1) // stride + 1
    for stride in c.up_strides + (2,):  # decoder stages, then uplayer_top
        if stride > 1:  # transposed conv: kernel 3, padding 1, output_padding 1 (its 1x1 shortcut agrees)
            s = (s - 1) * stride + 2
    return s


SMALL = AEConfig(stem=32, down_widths=(16, 32, 64, 16), down_blocks=(1, 1, 1, 1), down_strides=(1, 2, 2, 1),
                 up_widths=(32, 32, 16, 8), up_strides=(1, 2, 2, 2), top=32)

_LAYOUTS: dict[str, tuple[AEConfig, InputSpec]] = {
    # torchxrayvision's ResNetAE-101 ("101-elastic"): 1 channel, 224 px, range [-1024, 1024].
    "resnet_ae101": (AEConfig(), XRV),
    # The phantom demo: same class, one block per stage, narrow, total stride 16 (latent 64 x 4 x 4 at 64 px).
    "resnet_ae_small": (SMALL, unit_spec(1, 64)),
}


def autoencoder_names() -> list[str]:
    """The architectures :func:`build_autoencoder` knows."""
    return sorted(_LAYOUTS)


def autoencoder_spec(name: str) -> InputSpec:
    """The input spec a named autoencoder is trained in (the small one: unit space at 64 px)."""
    return _layout(name)[1]


def native_spec(module: nn.Module) -> InputSpec | None:
    """The input spec an autoencoder module brings with it; ``None`` for a module of the user's own.

    A :class:`ResNetAE` of a named layout works in that layout's space. torchxrayvision's ResNetAE (class
    ``torchxrayvision.autoencoders._ResNetAE``, recognised by name so the engine needs no torchxrayvision)
    works in :data:`~cxrexplain.spec.XRV`, like ``resnet_ae101``.
    """
    if isinstance(module, ResNetAE):
        return next((spec for config, spec in _LAYOUTS.values() if config == module.config), None)
    cls = type(module)
    if cls.__module__.partition(".")[0] == "torchxrayvision" and cls.__name__.lstrip("_") == "ResNetAE":
        return XRV
    return None


def build_autoencoder(name: str) -> ResNetAE:
    """An untrained autoencoder of a named layout.

    Raises
    ------
    WeightsError
        For an unknown name; the message lists the known ones.
    """
    return ResNetAE(_layout(name)[0])


def _layout(name: str) -> tuple[AEConfig, InputSpec]:
    if name not in _LAYOUTS:
        raise WeightsError(f"unknown autoencoder architecture {name!r}; known: {', '.join(autoencoder_names())}")
    return _LAYOUTS[name]


"""The ResNet autoencoder: torchxrayvision's ResNetAE-101 layout loads unchanged and computes the same thing;
the small demo layout keeps the encode/decode contract."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torchxrayvision as xrv

from cxrexplain.autoencoder import (
    SMALL,
    AEConfig,
    ResNetAE,
    autoencoder_names,
    autoencoder_spec,
    build_autoencoder,
    reconstructed_size,
)
from cxrexplain.errors import WeightsError
from cxrexplain.spec import XRV


def _randomize_batch_norms(model: nn.Module) -> None:
    """Random-init BN layers are the identity in eval mode; give them statistics so the comparison bites."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)


@pytest.fixture(scope="module")
def xrv_pair() -> tuple[nn.Module, ResNetAE]:
    torch.manual_seed(0)
    ref = xrv.autoencoders.ResNetAE101()
    _randomize_batch_norms(ref)
    ours = build_autoencoder("resnet_ae101")
    ours.load_state_dict(ref.state_dict(), strict=True)  # raises on any missing/unexpected key or shape
    return ref.eval(), ours.eval()


def test_xrv_state_dict_has_the_same_names_shapes_and_order(xrv_pair: tuple[nn.Module, ResNetAE]) -> None:
    ref, ours = xrv_pair
    ref_sd, our_sd = ref.state_dict(), ours.state_dict()
    assert list(ref_sd) == list(our_sd)
    assert all(ref_sd[k].shape == our_sd[k].shape for k in ref_sd)


@pytest.mark.parametrize("size", [32, 128])
def test_xrv_weights_give_identical_outputs(xrv_pair: tuple[nn.Module, ResNetAE], size: int) -> None:
    ref, ours = xrv_pair
    torch.manual_seed(1)
    x = (torch.rand(2, 1, size, size) * 2 - 1) * 1024  # xrv's range [-1024, 1024]
    with torch.no_grad():
        z_ref, z = ref.encode(x, check_resolution=False), ours.encode(x)
        out_ref, out = ref.decode(z_ref, image_size=list(x.shape)), ours.decode(z)
    assert z.shape == z_ref.shape
    assert torch.allclose(z, z_ref, rtol=1e-5, atol=1e-5)
    assert out.shape == x.shape == out_ref.shape
    # Same operations in the same order: agreement to float32 round-off (tolerance relative to the scale).
    assert torch.allclose(out, out_ref, rtol=1e-4, atol=1e-4 * out_ref.abs().max().item())
    assert torch.allclose(ours(x), out)


def test_resnet_ae101_bottleneck_is_the_papers() -> None:
    # [Cohen2021] §4.1: "a ResNet101 with a bottleneck size of 4608" (512 x 3 x 3 at 224 px).
    assert reconstructed_size(224) == 224
    assert [s for s in range(16, 400, 16) if reconstructed_size(s) == s] == [32, 128, 224, 320]
    assert autoencoder_spec("resnet_ae101") == XRV
    ae = ResNetAE(AEConfig())
    assert ae.total_stride == 96


def test_small_autoencoder_contract() -> None:
    torch.manual_seed(0)
    ae = build_autoencoder("resnet_ae_small").eval()
    assert ae.total_stride == 16
    assert autoencoder_spec("resnet_ae_small").size == 64
    for size in (32, 48, 64, 128):
        x = torch.rand(3, 1, size, size)
        with torch.no_grad():
            z = ae.encode(x)
            assert z.shape == (3, SMALL.down_widths[-1] * 4, size // 16, size // 16)
            out = ae.decode(z)
            assert out.shape == x.shape
            assert torch.equal(ae(x), out)
        assert reconstructed_size(size, SMALL) == size
    # Rows are independent in eval mode (batch norm uses running statistics).
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ae(x)[1:], ae(x[1:]), atol=1e-6)


def test_small_autoencoder_learns() -> None:
    # It is meant to train in minutes on a CPU: 20 steps on 4 images cut the reconstruction loss by half.
    torch.manual_seed(0)
    ae = build_autoencoder("resnet_ae_small").train()
    x = torch.rand(4, 1, 32, 32)
    opt = torch.optim.Adam(ae.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss = (ae(x) - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_unknown_autoencoder_names_the_known_ones() -> None:
    with pytest.raises(WeightsError) as info:
        build_autoencoder("resnet_ae9000")
    for name in autoencoder_names():
        assert name in str(info.value)
    assert set(autoencoder_names()) == {"resnet_ae101", "resnet_ae_small"}


def test_decoder_stage_with_wrong_width_is_refused() -> None:
    with pytest.raises(ValueError, match="input channels"):
        ResNetAE(AEConfig(stem=8, down_widths=(8, 8, 8, 8), down_blocks=(1, 1, 1, 2), up_widths=(4, 4, 4, 4),
                          top=8))

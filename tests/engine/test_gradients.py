"""Saliency and integrated gradients: parity with captum, completeness, batching, and the shared forward."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torchvision
from captum.attr import IntegratedGradients as CaptumIG
from captum.attr import Saliency as CaptumSaliency

from cxrexplain import Explainer, InvalidOption
from cxrexplain.methods import base as registry
from cxrexplain.methods import gradients


@pytest.fixture(scope="module", params=["resnet18", "densenet121"])
def net(request: pytest.FixtureRequest) -> nn.Module:
    torch.manual_seed(0)
    return getattr(torchvision.models, request.param)(num_classes=5).eval()


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 3, 64, 64)


TARGETS = [1, 4]


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    """ResNet-18 alone, for the checks that are not parity (they do not need both architectures)."""
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=5).eval()


def explainer(net: nn.Module) -> Explainer:
    return Explainer(copy.deepcopy(net), device="cpu")


def test_saliency_matches_captum(net: nn.Module, batch: torch.Tensor) -> None:
    ours = explainer(net).explain(batch, methods=["saliency"], targets=TARGETS).heatmaps["saliency"]
    theirs = CaptumSaliency(copy.deepcopy(net)).attribute(batch.clone(), target=TARGETS, abs=True).amax(dim=1)
    assert ours.shape == (2, 64, 64) and ours.min() >= 0
    # Same backward on the same float32 graph: equal up to summation order.
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6 * theirs.abs().max().item())


def test_integrated_gradients_matches_captum_gauss_legendre(net: nn.Module, batch: torch.Tensor) -> None:
    steps, baseline = 8, 0.5
    ours = explainer(net).explain(batch, methods=["integrated_gradients"], targets=TARGETS,
                                  options={"integrated_gradients": {"steps": steps, "baseline": baseline}})
    theirs = CaptumIG(copy.deepcopy(net)).attribute(batch, baselines=baseline, target=TARGETS, n_steps=steps,
                                                     method="gausslegendre").sum(dim=1)
    scale = theirs.abs().max().item()
    torch.testing.assert_close(ours.heatmaps["integrated_gradients"], theirs, rtol=1e-4, atol=1e-5 * scale)


def test_integrated_gradients_trapezoid_is_captums_rescaled(resnet: nn.Module, batch: torch.Tensor) -> None:
    # captum's "riemann_trapezoid" weights are 1/n halved at the ends (summing to (n-1)/n); ours are 1/(n-1)
    # halved at the ends (summing to 1), on the same nodes. So ours = captum's * n / (n - 1).
    steps = 8
    ours = explainer(resnet).explain(batch, methods=["integrated_gradients"], targets=TARGETS,
                                     options={"integrated_gradients": {"steps": steps,
                                                                       "integration": "riemann_trapezoid"}})
    theirs = CaptumIG(copy.deepcopy(resnet)).attribute(batch, target=TARGETS, n_steps=steps,
                                                        method="riemann_trapezoid").sum(dim=1)
    theirs = theirs * steps / (steps - 1)
    scale = theirs.abs().max().item()
    torch.testing.assert_close(ours.heatmaps["integrated_gradients"], theirs, rtol=1e-4, atol=1e-5 * scale)


def test_integrated_gradients_completeness(resnet: nn.Module, batch: torch.Tensor) -> None:
    # Sundararajan et al. Prop. 1: sum_i IG_i(x) = F(x) - F(x'), up to the quadrature error.
    # Zero baseline: a freshly initialised torchvision net (zero conv biases, BatchNorm at mean 0 / var 1) is
    # positively homogeneous up to the last bias, so the integrand is constant along the path and
    # Gauss-Legendre is exact to float32. Baseline -0.5: the path crosses ReLU kinks; 64 nodes bring the
    # error under 1 % (measured: 2.3 % at 32 nodes, 0.6 % at 64, 0.1 % at 128 on ResNet-18).
    ex = explainer(resnet)
    rows = torch.arange(2)
    for baseline, steps, rtol in ((0.0, 16, 1e-4), (-0.5, 64, 1e-2)):
        res = ex.explain(batch, methods=["integrated_gradients"], targets=TARGETS,
                         options={"integrated_gradients": {"steps": steps, "baseline": baseline,
                                                           "internal_batch_size": 64}})
        with torch.no_grad():
            fx = ex.bundle.module(batch)[rows, TARGETS]
            fb = ex.bundle.module(torch.full_like(batch, baseline))[rows, TARGETS]
        total = res.heatmaps["integrated_gradients"].sum(dim=(1, 2))
        torch.testing.assert_close(total, fx - fb, rtol=rtol, atol=1e-6)


def test_integrated_gradients_does_not_depend_on_internal_batch_size(resnet: nn.Module,
                                                                     batch: torch.Tensor) -> None:
    ex = explainer(resnet)
    # 2 rows x 3 steps = 6 path points: one per forward, chunks that split a step's rows, all in one forward.
    maps = [
        ex.explain(batch, methods=["integrated_gradients"], targets=TARGETS,
                   options={"integrated_gradients": {"steps": 3, "internal_batch_size": size}}).heatmaps[
            "integrated_gradients"]
        for size in (1, 4, 64)
    ]
    for other in maps[1:]:
        torch.testing.assert_close(other, maps[0], rtol=1e-5, atol=1e-7)


def test_integrated_gradients_options_and_cost() -> None:
    assert registry.create("integrated_gradients").cost() == 32
    assert registry.create("integrated_gradients", steps=7).cost() == 7
    assert registry.create("saliency").cost() == 1
    with pytest.raises(InvalidOption, match="riemann_trapezoid"):
        registry.create("integrated_gradients", integration="simpson")
    with pytest.raises(InvalidOption, match="steps"):
        registry.create("integrated_gradients", steps=0)
    with pytest.raises(InvalidOption, match="internal_batch_size"):
        registry.create("integrated_gradients", internal_batch_size=-1)
    with pytest.raises(InvalidOption, match="steps"):
        registry.create("integrated_gradients", steps="many")


def test_integrated_gradients_constructor_computes_no_quadrature() -> None:
    """Building the method validates its options only: the Gauss-Legendre eigen-solve (steps x steps) waits for
    the first explanation, and is computed once per (rule, steps) after that."""
    gradients.path_rule.cache_clear()
    for steps in (4000, 1_000_000):
        method = registry.create("integrated_gradients", steps=steps)
        assert method.cost() == gradients.IntegratedGradients.cost_of({"steps": steps}) == steps
    registry.create("integrated_gradients", steps=5, integration="riemann_trapezoid")
    assert gradients.path_rule.cache_info().currsize == 0
    with pytest.raises(InvalidOption, match="steps >= 2"):
        registry.create("integrated_gradients", steps=1, integration="riemann_trapezoid")
    first = gradients.path_rule("gausslegendre", 7)
    assert gradients.path_rule("gausslegendre", 7) is first and not first[0].flags.writeable
    assert gradients.path_rule.cache_info().misses == 1


def test_forward_counts_saliency_shares_the_forward_ig_adds_its_own() -> None:
    torch.manual_seed(0)
    ex = Explainer(torchvision.models.resnet18(num_classes=3), device="cpu")
    calls: list[int] = []
    conv1 = ex.bundle.module.conv1
    handle = conv1.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    try:
        x = torch.rand(3, 3, 32, 32)
        ex.explain(x, methods=["saliency", "cam", "gradcam"], targets=0)
        assert calls == [3]  # one shared forward for the three methods
        calls.clear()
        ex.explain(x, methods=["integrated_gradients"], targets=0,
                   options={"integrated_gradients": {"steps": 4, "internal_batch_size": 5}})
        # the shared forward, then 3 rows x 4 steps = 12 path points in chunks of at most 5
        assert calls == [3, 5, 5, 2]
    finally:
        handle.remove()

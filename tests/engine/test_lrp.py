"""LRP-alpha-beta ([Nam2021] eq. 2) on the rule engine: matrix re-derivation, conservation, zennit 0.5.1 parity,
integration with the Explainer, no leaked state, clear errors."""

from __future__ import annotations

import copy
import time

import pytest
import torch
import torch.nn as nn
from propagation_nets import (
    TINY_INPUT,
    SmallConvNet,
    TinyNet,
    at_target,
    labels,
    random_classifier,
    randomize_batchnorm,
    relevance_at_input,
    unrolled,
)

import cxrexplain
from cxrexplain.methods.base import create
from cxrexplain.methods.lrp import lrp_rules
from cxrexplain.methods.rap import RAP_RULES, rap_rules
from cxrexplain.propagation import linear_maps, nodes, pointwise

# One torch thread for this module (set by a fixture, so the setting does not leak into other modules).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def lrp_by_matrices(weights: list[torch.Tensor], x: torch.Tensor, target: int, alpha: float, beta: float):
    """[Nam2021] eq. 2 written out for one sample of a bias-free ReLU MLP: Z[j, i] = w_ij a_i,
    R_i = sum_j (alpha Z+[j, i] / sum_i Z+[j, i] - beta Z-[j, i] / sum_i Z-[j, i]) R_j (0/0 read as 0)."""
    acts = [x]
    for w in weights[:-1]:
        acts.append(torch.relu(w @ acts[-1]))
    out = weights[-1] @ acts[-1]
    relevance = torch.zeros_like(out)
    relevance[target] = out[target]
    per_layer = [relevance]
    for w, a in zip(reversed(weights), reversed(acts), strict=True):
        z = w * a[None, :]
        zp, zn = z.clamp(min=0), z.clamp(max=0)
        sp, sn = zp.sum(1, keepdim=True), zn.sum(1, keepdim=True)
        ratio_p = torch.where(sp != 0, zp / sp.where(sp != 0, 1), 0)
        ratio_n = torch.where(sn != 0, zn / sn.where(sn != 0, 1), 0)
        relevance = (alpha * ratio_p - beta * ratio_n).T @ relevance
        per_layer.append(relevance)
    return relevance, per_layer


@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 0.0), (2.0, 1.0)])
def test_tiny_net_matches_matrix_algebra_and_conserves_layer_to_layer(alpha, beta):
    net = TinyNet()
    x = torch.tensor(TINY_INPUT, dtype=torch.float64)
    targets = [1, 0]
    record: dict[str, torch.Tensor] = {}
    ours = relevance_at_input(net, x, at_target(targets), lrp_rules(alpha, beta), "lrp", record)
    for n, target in enumerate(targets):
        expected, per_layer = lrp_by_matrices(net.weights(), x[n], target, alpha, beta)
        torch.testing.assert_close(ours[n], expected, rtol=1e-12, atol=1e-12)
        if beta:
            continue  # beta > 0 conserves only where every neuron has contributions of both signs
        # eq. 1 layer by layer: every layer's relevance sums to f(x) (tolerance: float64 rounding)
        f = per_layer[0].sum()
        for layer_relevance in per_layer:
            torch.testing.assert_close(layer_relevance.sum(), f, rtol=1e-12, atol=1e-12)
    # and the engine's own per-node relevance (logits, fc3 input, ..., input) conserves too
    logits = net(x).detach()
    for name, relevance in record.items() if not beta else ():
        expected = logits[[0, 1], targets]
        torch.testing.assert_close(relevance.sum(1), expected, rtol=1e-12, atol=1e-12, msg=name)


@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 0.0), (2.0, 1.0)])
def test_diagonal_and_merged_batchnorm_equal_their_explicit_convolutions(alpha, beta):
    """The unmergeable BN (diagonal alpha-beta shortcut) and the conv+BN merge give what the generic conv
    path gives on the same function written with a depthwise 1x1 conv and a pre-merged conv (float64)."""
    torch.manual_seed(0)
    net = randomize_batchnorm(SmallConvNet())
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(net(x), unrolled(net)(x), rtol=1e-12, atol=1e-12)
    start = at_target([0, 2])
    ours = relevance_at_input(net, x, start, lrp_rules(alpha, beta), "lrp")
    explicit = relevance_at_input(unrolled(net), x, start, lrp_rules(alpha, beta), "lrp")
    torch.testing.assert_close(ours, explicit, rtol=1e-10, atol=1e-12)
    assert ours.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------------
# zennit 0.5.1 parity on the paper's architectures (random seeded weights, random BN statistics)

EPS = 1e-12


def _zennit_composite(canonizers):
    from zennit.composites import LayerMapComposite
    from zennit.layer import Sum
    from zennit.rules import AlphaBeta, Norm
    from zennit.types import AvgPool, Convolution, Linear

    # Our stabilizers: sums of positive (negative) contributions clamped at +-1e-12, signed sums nudged only
    # where exactly zero. zennit's default (+-1e-6 everywhere) would differ by ~1e-6 relative.
    def clamp(z):
        return torch.where(z >= 0, z.clamp(min=EPS), z.clamp(max=-EPS))

    def nudge(z):
        return z.masked_fill(z == 0, EPS)

    # zero_params="bias": zennit adds biases to z+ unless told; [Nam2021] eq. 2 (and our engine) has no bias term.
    alpha_beta = AlphaBeta(alpha=1.0, beta=0.0, stabilizer=clamp, zero_params="bias")
    layer_map = [(Convolution, alpha_beta), (Linear, alpha_beta), (AvgPool, Norm(stabilizer=nudge)),
                 (Sum, Norm(stabilizer=nudge))]
    return LayerMapComposite(layer_map=layer_map, canonizers=list(canonizers))


def _zennit_ready(model: nn.Module) -> nn.Module:
    """In-place ReLUs off; each BN's eps folded into its running variance: zennit's merge canonizer leaves
    the emptied BN computing x / sqrt(1 + eps), a 5e-6 gain per layer that is not part of the rule."""
    for module in model.modules():
        if hasattr(module, "inplace"):
            module.inplace = False
        if isinstance(module, nn.BatchNorm2d):
            with torch.no_grad():
                module.running_var.add_(module.eps)
            module.eps = 0.0
    return model


def _densenet_for_zennit(model: nn.Module) -> nn.Module:
    """DenseNet as zennit can hook it: BNs that follow a conv merged into it by hand (conv0/norm0,
    conv1/norm2), every BN after a concatenation replaced by the equivalent depthwise 1x1 conv
    (weight a, bias b, AlphaBeta like any conv), and the functional ReLU / pooling of the head as modules."""
    m = copy.deepcopy(model)

    def affine(bn):
        a = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        return a, bn.bias - a * bn.running_mean

    def merge(conv, bn):
        a, b = affine(bn)
        with torch.no_grad():
            conv.weight.mul_(a.view(-1, 1, 1, 1))
        conv.bias = nn.Parameter(b.detach().clone())
        return nn.Identity()

    def depthwise(bn):
        a, b = affine(bn)
        conv = nn.Conv2d(bn.num_features, bn.num_features, 1, groups=bn.num_features, dtype=a.dtype)
        with torch.no_grad():
            conv.weight.copy_(a.view(-1, 1, 1, 1))
            conv.bias.copy_(b)
        return conv

    features = m.features
    features.norm0 = merge(features.conv0, features.norm0)
    for module in features.modules():
        if type(module).__name__ == "_DenseLayer":
            module.norm2 = merge(module.conv1, module.norm2)
            module.norm1 = depthwise(module.norm1)
        elif type(module).__name__ == "_Transition":
            module.norm = depthwise(module.norm)
    features.norm5 = depthwise(features.norm5)
    return nn.Sequential(features, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), m.classifier).eval()


def zennit_lrp(name: str, model: nn.Module, x: torch.Tensor, targets: list[int]) -> torch.Tensor:
    from zennit.attribution import Gradient
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer

    if name.startswith("densenet"):
        model, canonizers = _densenet_for_zennit(model), []
    elif name.startswith("resnet"):
        model, canonizers = copy.deepcopy(model), [ResNetCanonizer()]
    else:
        model, canonizers = copy.deepcopy(model), [VGGCanonizer()]
    model = _zennit_ready(model)

    def attr_output(out):  # start relevance: the target logit at the target unit
        rows = torch.tensor(targets)[:, None]
        return torch.zeros_like(out).scatter_(1, rows, out.gather(1, rows)).detach()

    with Gradient(model, _zennit_composite(canonizers)) as attributor:
        _, relevance = attributor(x.clone().requires_grad_(True), attr_output=attr_output)
    return relevance.detach().sum(1)


# float32 tolerances, as a fraction of the largest |relevance|: ResNet-50 and VGG-16 agree to ~5e-7 and 0;
# DenseNet-121 to ~1e-3 in float32 (float32 rounding amplified by the signed z-rule of its average pools over
# conv outputs of mixed sign), and to ~1e-12 in float64 (the float64 test below): no rule difference remains.
PARITY_TOLERANCE = {"resnet50": 1e-5, "vgg16": 1e-5, "densenet121": 5e-3}


@pytest.mark.parametrize("name", ["resnet50", "vgg16", "densenet121"])
def test_matches_zennit_alpha1_beta0(name):
    model = random_classifier(name)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    targets = [0, 2]
    # zennit's canonizers fold BatchNorm into the convolutions: compare like with like (batchnorm=zennit)
    result = cxrexplain.Explainer(copy.deepcopy(model), device="cpu", labels=labels()).explain(
        x, ["lrp"], targets=targets, options={"lrp": {"batchnorm": "zennit"}}
    )
    ours = result.heatmaps["lrp"]
    reference = zennit_lrp(name, model, x, targets)
    assert ours.shape == (2, 64, 64)
    scale = reference.abs().max().item()
    assert scale > 0
    torch.testing.assert_close(ours, reference, rtol=0, atol=PARITY_TOLERANCE[name] * scale)


def test_matches_zennit_on_densenet_in_float64():
    model = random_classifier("densenet121").double()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ours = relevance_at_input(model, x, at_target([1]), lrp_rules(batchnorm="zennit"), "lrp").sum(1)
    reference = zennit_lrp("densenet121", model, x, [1])
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-9 * reference.abs().max().item())


@pytest.mark.parametrize("name", ["densenet121", "resnet50", "vgg16"])
def test_conservation_on_bias_free_architectures(name):
    """[Nam2021] eq. 1: with biases and BN shifts zeroed, the input relevance sums to the target logit."""
    model = random_classifier(name, bias_free=True)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    targets = [1, 2]
    result = cxrexplain.Explainer(model, device="cpu", labels=labels()).explain(x, ["lrp"], targets=targets)
    with torch.no_grad():
        logits = model(x)[[0, 1], targets]
    torch.testing.assert_close(result.heatmaps["lrp"].sum((1, 2)), logits, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# options, state, errors


def test_alpha_beta_options_are_checked():
    assert create("lrp", alpha=2, beta=1).alpha == 2.0
    with pytest.raises(cxrexplain.InvalidOption, match="alpha - beta must equal 1"):
        create("lrp", alpha=1.5, beta=0.0)
    with pytest.raises(cxrexplain.InvalidOption, match="non-negative"):
        create("lrp", alpha=0.0, beta=-1.0)
    with pytest.raises(cxrexplain.InvalidOption, match="does not take"):
        create("lrp", gamma=0.25)


def test_no_state_leaks_and_repeatable():
    model = random_classifier("resnet50")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    explainer = cxrexplain.Explainer(model, device="cpu", labels=labels())
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    first = explainer.explain(x, ["lrp", "saliency"], targets=[0, 1])
    second = explainer.explain(x, ["lrp"], targets=[0, 1])
    alone = explainer.explain(x, ["saliency"], targets=[0, 1])
    # saliency after lrp on the same shared forward is the plain gradient
    torch.testing.assert_close(first.heatmaps["saliency"], alone.heatmaps["saliency"], rtol=0, atol=0)
    xg = x.clone().requires_grad_(True)
    model(xg)[[0, 1], [0, 1]].sum().backward()
    torch.testing.assert_close(alone.heatmaps["saliency"], xg.grad.abs().amax(1), rtol=1e-5, atol=1e-7)
    assert torch.equal(first.heatmaps["lrp"], second.heatmaps["lrp"])
    for module in model.modules():
        assert not module._forward_hooks and not module._backward_hooks and not module._forward_pre_hooks
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("rules", [lrp_rules(1.0, 0.0), lrp_rules(2.0, 1.0), RAP_RULES, lrp_rules(batchnorm="pass"),
                                   rap_rules("pass")], ids=["lrp", "lrp21", "rap", "lrp-pass", "rap-pass"])
def test_cached_linear_maps_follow_parameter_changes(rules):
    """The engine keeps each layer's merged / clamped weights between calls; a parameter or BatchNorm
    statistic changed in place, or replaced, must give the result a fresh traced model gives."""
    from cxrexplain.graph import TracedModel
    from cxrexplain.propagation import propagate

    torch.manual_seed(0)
    net = randomize_batchnorm(SmallConvNet())
    traced = TracedModel(net)
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    start = at_target([0, 2])

    def relevance() -> torch.Tensor:
        logits, activations = traced.run(x.detach().requires_grad_(True), "all")
        return propagate(traced, activations, start(logits.detach()), rules, "lrp")

    before = relevance()
    assert torch.equal(relevance(), before)  # repeatable on the cached maps
    with torch.no_grad():
        net.conv3.weight.mul_(-1.5)  # merged conv + BN, in place
        net.norm.running_var.mul_(3.0)  # diagonal BN statistic, in place
    net.fc.weight = nn.Parameter(torch.randn_like(net.fc.weight))  # replaced
    after = relevance()
    fresh = relevance_at_input(copy.deepcopy(net), x, start, rules, "lrp")
    torch.testing.assert_close(after, fresh, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(after, before)


def test_unsupported_layer_names_node_and_type():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LeakyReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3))
    explainer = cxrexplain.Explainer(model, device="cpu", labels=labels())
    with pytest.raises(cxrexplain.UnsupportedModel, match=r"lrp has no propagation rule .* LeakyReLU at '1'"):
        explainer.explain(torch.rand(1, 3, 16, 16), ["lrp"], targets=[0])


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("choice", [0, 1])
def test_pointwise_convolution_candidates_are_the_same_map(monkeypatch, stride, choice):
    """A 1x1 conv runs as oneDNN's convolution or as matrix products, whichever is faster for the shape: both
    must be the conv and its exact transpose (strided: every stride-th pixel, zeros elsewhere)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 4, 1, stride=stride, bias=False)
    layer = nodes._conv_map(conv, conv.weight.detach(), None)
    assert layer.kind == "pointwise"
    monkeypatch.setattr(linear_maps, "fastest", lambda key, like, candidates: candidates[choice]())
    x = torch.randn(3, 6, 7, 7, requires_grad=True)
    s = torch.randn(3, 4, *conv(x).shape[2:])
    torch.testing.assert_close(layer.forward(x.detach()), conv(x).detach(), rtol=1e-5, atol=1e-6)
    (expected,) = torch.autograd.grad(conv(x), x, s)
    torch.testing.assert_close(layer.transpose(s, x.detach()), expected, rtol=1e-5, atol=1e-6)


def test_fastest_times_each_candidate_once_per_shape_and_keeps_the_winner():
    calls = {"slow": 0, "fast": 0}

    def slow() -> torch.Tensor:
        calls["slow"] += 1
        time.sleep(0.02)
        return torch.zeros(1)

    def fast() -> torch.Tensor:
        calls["fast"] += 1
        return torch.ones(1)

    like = torch.zeros(2, 3)
    key = ("test", object())  # a key no other call uses
    assert pointwise.fastest(key, like, (slow, fast)).item() == 1.0
    timed = 1 + pointwise.TIMED_ROUNDS  # a warm-up and the timed rounds, each
    assert calls == {"slow": timed, "fast": timed}
    for _ in range(3):
        assert pointwise.fastest(key, like, (slow, fast)).item() == 1.0
    assert calls == {"slow": timed, "fast": timed + 3}
    # off the CPU (CUDA; here the meta device stands in) the first candidate, untimed
    assert pointwise.fastest(("test", object()), torch.empty(1, device="meta"), (slow, fast)).item() == 0.0
    assert calls["slow"] == timed + 1

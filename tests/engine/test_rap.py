"""RAP ([Nam2021] eqs. 3-6) on the rule engine: matrix re-derivation, conservation, bi-polarity, integration.

Reading of [Nam2021]'s equations used here (the extracted text has index typos; sums over i run over the inputs of
neuron j, outer sums over the neurons j of the layer above). For one sample, Z[j, i] = w_ij a_i, Z+ / Z- its
positive / negative parts, P_j = sum_i Z+[j, i], N_j = sum_i Z-[j, i]:
  eq. 3 (output layer, target t):   R_i = Z[t, i]                     (the actual contribution to f_t)
  eq. 4:                            R'_i = |R_i| * f_t(x) / sum_i |R_i|  (f_t = sum_i Z[t, i] + b_t: eq. 1's
                                                                          total, the head's bias included)
  eq. 5 (each later layer):         Rbar_i = sum_j Z+[j, i] / P_j R_j
                                           + sum_j Z-[j, i] / N_j (R_j |N_j| / (P_j + |N_j|))
  eq. 6:                            Psi = sum_i (second sum of eq. 5) / Gamma, Gamma = #{i: a_i != 0};
                                    R_i = Rbar_i - Psi where a_i != 0, Rbar_i elsewhere.
"""

from __future__ import annotations

import pytest
import torch
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
from cxrexplain.methods.rap import RAP_RULES

# One torch thread for this module (set by a fixture, so the setting does not leak into other modules).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _safe_ratio(z: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    return torch.where(total != 0, z / total.where(total != 0, 1), 0)


def rap_by_matrices(weights: list[torch.Tensor], x: torch.Tensor, target: int, head_bias: float = 0.0):
    acts = [x]
    for w in weights[:-1]:
        acts.append(torch.relu(w @ acts[-1]))
    z = weights[-1] * acts[-1][None, :]
    relevance = z[target].clone()  # eq. 3
    logit = relevance.sum() + head_bias
    relevance = relevance.abs() * logit / relevance.abs().sum()  # eq. 4, total f(x)
    per_layer = [relevance]
    for w, a in zip(reversed(weights[:-1]), reversed(acts[:-1]), strict=True):
        z = w * a[None, :]
        zp, zn = z.clamp(min=0), z.clamp(max=0)
        p, n = zp.sum(1, keepdim=True), zn.sum(1, keepdim=True)
        positive_part = _safe_ratio(zp, p).T @ relevance
        negative_part = _safe_ratio(zn, n).T @ (relevance * _safe_ratio(n.abs(), p + n.abs())[:, 0])  # eq. 5
        activated = (a != 0).to(a.dtype)
        psi = negative_part.sum() / activated.sum()  # eq. 6
        relevance = positive_part + negative_part - psi * activated
        per_layer.append(relevance)
    return relevance, per_layer


def test_tiny_net_matches_matrix_algebra_and_conserves_layer_to_layer():
    net = TinyNet()
    x = torch.tensor(TINY_INPUT, dtype=torch.float64)
    targets = [1, 0]
    record: dict[str, torch.Tensor] = {}
    ours = relevance_at_input(net, x, at_target(targets, "one"), RAP_RULES, "rap", record)
    logits = net(x).detach()[[0, 1], targets]
    for n, target in enumerate(targets):
        expected, per_layer = rap_by_matrices(net.weights(), x[n], target)
        torch.testing.assert_close(ours[n], expected, rtol=1e-12, atol=1e-12)
        for layer_relevance in per_layer:  # eq. 1 at every layer (bias-free net; float64 rounding)
            torch.testing.assert_close(layer_relevance.sum(), logits[n], rtol=1e-12, atol=1e-12)
    for name, relevance in record.items():
        if name != "fc3":  # the logits node holds the unit indicator that selects the target (eq. 3)
            torch.testing.assert_close(relevance.sum(1), logits, rtol=1e-12, atol=1e-12, msg=name)


def with_head_bias(net: TinyNet, bias: list[float]) -> TinyNet:
    """``net`` with a biased output layer (same weights)."""
    head = torch.nn.Linear(3, 2, dtype=torch.float64)
    with torch.no_grad():
        head.weight.copy_(net.fc3.weight)
        head.bias.copy_(torch.tensor(bias, dtype=torch.float64))
    net.fc3 = head
    return net


def test_biased_head_totals_the_logit_and_never_flips_the_map():
    """[Nam2021] eq. 1 starts from R = f(x), bias included. Row 0 (target 1) gets a bias that makes f(x) and
    sum_i z_ti differ in sign; row 1 (target 0) one that only shifts f(x). RAP is linear in the first step's
    total, so the biased map is the bias-free map times f(x) / (f(x) - b_t): for row 0 a negative factor, where
    the total f(x) - b_t (before this fix) would have given the bias-free map, of the wrong sign."""
    x = torch.tensor(TINY_INPUT, dtype=torch.float64)
    targets = [1, 0]
    plain = TinyNet()
    z = plain(x).detach()[[0, 1], targets]  # sum_i z_ti: the bias-free logits
    assert z[0] > 0  # so a bias of -3 z_0 makes f(x) = -2 z_0 < 0 for row 0
    biased = with_head_bias(TinyNet(), [0.7, -3.0 * float(z[0])])
    logits = biased(x).detach()[[0, 1], targets]
    assert logits[0] < 0 < z[0]
    record: dict[str, torch.Tensor] = {}
    ours = relevance_at_input(biased, x, at_target(targets, "one"), RAP_RULES, "rap", record)
    bias_free = relevance_at_input(plain, x, at_target(targets, "one"), RAP_RULES, "rap")
    torch.testing.assert_close(ours, bias_free * (logits / z)[:, None], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours.sum(1), logits, rtol=1e-12, atol=1e-12)  # eq. 1: sum == f(x), bias included
    for name, relevance in record.items():  # and at every layer below the logits
        if name != "fc3":
            torch.testing.assert_close(relevance.sum(1), logits, rtol=1e-12, atol=1e-12, msg=name)
    for n, target in enumerate(targets):  # the matrix re-derivation with the bias in eq. 4's total
        expected, _ = rap_by_matrices(biased.weights(), x[n], target, float(biased.fc3.bias.detach()[target]))
        torch.testing.assert_close(ours[n], expected, rtol=1e-12, atol=1e-12)


def test_diagonal_and_merged_batchnorm_equal_their_explicit_convolutions():
    torch.manual_seed(0)
    net = randomize_batchnorm(SmallConvNet())
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    start = at_target([0, 2], "one")
    ours = relevance_at_input(net, x, start, RAP_RULES, "rap")
    explicit = relevance_at_input(unrolled(net), x, start, RAP_RULES, "rap")
    torch.testing.assert_close(ours, explicit, rtol=1e-10, atol=1e-12)


def test_conserves_on_small_bias_free_conv_net_node_by_node():
    """Every node kind (conv, diagonal BN, merged BN, cat, add, max / average pool, linear): eq. 1 holds on
    every cut of the graph (a single node, or both branches of the residual add), float64.

    Eq. 1 holds exactly when every neuron that carries relevance has at least one positive contribution
    (eq. 5's first term is empty otherwise, as in LRP-alpha1-beta0). Behind a ReLU that is automatic; the two
    layers whose signed outputs feed the concatenation and the addition directly (conv2, side) get positive
    weights here so that the small net meets it (wide layers of real networks meet it in practice: see the
    architecture test below)."""
    torch.manual_seed(1)
    net = randomize_batchnorm(SmallConvNet(), bias_free=True)
    with torch.no_grad():
        net.conv2.weight.abs_()
        net.side.weight.abs_()
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    record: dict[str, torch.Tensor] = {}
    relevance_at_input(net, x, at_target([0, 2], "one"), RAP_RULES, "rap", record)
    logits = net(x).detach()[[0, 1], [0, 2]]
    cuts = [["flatten"], ["gap"], ["relu_3"], ["pool"], ["add"], ["side", "relu_2"], ["side", "norm3"],
            ["relu_1"], ["norm"], ["cat"], ["relu"], ["conv1"], ["x"]]
    for cut in cuts:
        total = sum(record[name].flatten(1).sum(1) for name in cut)
        torch.testing.assert_close(total, logits, rtol=1e-9, atol=1e-12, msg=str(cut))


@pytest.mark.parametrize("name", ["densenet121", "resnet50", "vgg16"])
def test_conservation_and_bipolarity_on_bias_free_architectures_with_a_biased_head(name):
    """Bias-free but for the classifier head, whose bias (large and negative for row 1's target, as on a rare
    finding) is part of f(x): the map totals f(x), bias included (eq. 1), in float32 through the Explainer."""
    model = random_classifier(name, bias_free=True)
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        head.bias.copy_(torch.tensor([0.5, 2.0, -3.0]))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    targets = [1, 2]
    result = cxrexplain.Explainer(model, device="cpu", labels=labels()).explain(x, ["rap"], targets=targets)
    heatmap = result.heatmaps["rap"]
    assert heatmap.shape == (2, 64, 64) and heatmap.dtype == torch.float32
    with torch.no_grad():
        logits = model(x)[[0, 1], targets]
    # eq. 1, within float32 rounding: the bi-polar map's parts cancel (on ResNet-50 row 1, sum |R| = 4.7e4 for a
    # total of 5), so the float32 total is good to a few ulps of sum |R|, not of f(x); float64: the TinyNet tests.
    error = (heatmap.double().sum((1, 2)) - logits.double()).abs()
    bound = 1e-4 * logits.double().abs() + 2e-7 * heatmap.double().abs().sum((1, 2))
    assert (error <= bound).all(), (error, bound)
    for row in heatmap:
        assert (row > 0).any() and (row < 0).any()


def test_repeatable_and_shares_the_forward_with_lrp():
    model = random_classifier("densenet121")
    explainer = cxrexplain.Explainer(model, device="cpu", labels=labels())
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    both = explainer.explain(x, ["lrp", "rap"], targets=["finding1"])
    alone = explainer.explain(x, ["rap"], targets=["finding1"])
    assert torch.equal(both.heatmaps["rap"], alone.heatmaps["rap"])
    assert not torch.equal(both.heatmaps["rap"], both.heatmaps["lrp"])


def test_unsupported_layer():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Upsample(scale_factor=2), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))
    explainer = cxrexplain.Explainer(model, device="cpu", labels=labels())
    with pytest.raises(cxrexplain.UnsupportedModel, match="rap has no propagation rule .* Upsample"):
        explainer.explain(torch.rand(1, 3, 16, 16), ["rap"], targets=[0])

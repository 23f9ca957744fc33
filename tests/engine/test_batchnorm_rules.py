"""The two BatchNorm rules of LRP and RAP: ``pass`` (relevance through BatchNorm unchanged, the RAP authors' code)
and ``zennit`` (BatchNorm folded into an affine node): hand-computed maps on a net whose BatchNorm shift switches a
unit on, conservation ([Nam2021] eq. 1) on DenseNet-121 with trained-like BatchNorm, and the option's checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from propagation_nets import at_target, relevance_at_input

import cxrexplain
from benchmarks.bn_conservation import model as trained_like_model
from cxrexplain.methods.base import create
from cxrexplain.methods.lrp import lrp_rules
from cxrexplain.methods.rap import rap_rules
from cxrexplain.options_schema import METHOD_OPTIONS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class ShiftedUnit(nn.Module):
    """1x1 conv (bias-free) -> ReLU -> BatchNorm (after a ReLU: cannot be merged) -> ReLU -> 1x1 conv -> flatten.

    Three input channels (the Explainer's default input), the third with zero weights and, in the tests, zero
    input. For x = (1, 1, 0): conv1 gives (1, -1), ReLU (1, 0); BatchNorm a = (1, 1), shift b = (0, 0.5) gives (1, 0.5):
    unit 1 is on through its shift alone; conv2 w = (1, 2) gives f(x) = 1 + 1 = 2.
    """

    def __init__(self) -> None:
        super().__init__()
        kw = dict(bias=False, dtype=torch.float64)
        self.conv1, self.conv2 = nn.Conv2d(3, 2, 1, **kw), nn.Conv2d(2, 1, 1, **kw)
        self.norm = nn.BatchNorm2d(2, dtype=torch.float64)
        with torch.no_grad():
            self.conv1.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [-2.0, 1.0, 0.0]]).view(2, 3, 1, 1))
            self.conv2.weight.copy_(torch.tensor([[1.0, 2.0]]).view(1, 2, 1, 1))
            self.norm.running_mean.zero_()
            self.norm.running_var.fill_(1.0 - self.norm.eps)  # a = 1 exactly
            self.norm.weight.fill_(1.0)
            self.norm.bias.copy_(torch.tensor([0.0, 0.5]))
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.conv2(torch.relu(self.norm(torch.relu(self.conv1(x))))), 1)


# Hand-computed input relevance at x = (1, 1, 0), f(x) = 2 (x_2 gets nothing: zero weights, zero input).
# LRP-alpha1-beta0: conv2 gives (1, 1) (z = (1, 0.5 * 2)).
#   pass: (1, 1) reaches conv1's outputs; unit 0 (z = (1, 0)) sends its 1 to x_0, unit 1 (z = (-2, 1), preactivation
#   -1, positive part 1) sends its 1 to x_1: (1, 1), total 2.
#   zennit: the diagonal map a x keeps R where a x > 0 and drops unit 1's (its input is 0): (1, 0), total 1.
# RAP: the head step gives (1, 1) (eq. 3 contributions (1, 1), total f(x) = 2, eq. 4).
#   pass: eq. 5 at conv1: x_0 gets 1 (unit 0) + (-2)(-1 / 3) (unit 1's negative part, T = 3), x_1 gets 1 (unit 1's
#   positive part); eq. 6: Psi = (2 / 3) / 2 active inputs: (4/3, 2/3), total 2.
#   zennit: the diagonal rule keeps R on active inputs only (unit 1's input is 0): (1, 0), then conv1: (1, 0).
EXPECTED = {
    ("lrp", "pass"): [1.0, 1.0, 0.0],
    ("lrp", "zennit"): [1.0, 0.0, 0.0],
    ("rap", "pass"): [4 / 3, 2 / 3, 0.0],
    ("rap", "zennit"): [1.0, 0.0, 0.0],
}


@pytest.mark.parametrize(("method", "batchnorm"), list(EXPECTED))
def test_hand_computed_maps_on_a_unit_switched_on_by_its_shift(method, batchnorm):
    net = ShiftedUnit()
    x = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64).view(1, 3, 1, 1)
    assert net(x).item() == 2.0
    rules = lrp_rules(batchnorm=batchnorm) if method == "lrp" else rap_rules(batchnorm)
    start = at_target([0], "logit" if method == "lrp" else "one")
    relevance = relevance_at_input(net, x, start, rules, method)
    torch.testing.assert_close(relevance.flatten(), torch.tensor(EXPECTED[method, batchnorm], dtype=torch.float64),
                               rtol=1e-12, atol=1e-12)


def test_the_served_methods_default_to_pass_and_take_either_rule():
    net = ShiftedUnit().float()
    explainer = cxrexplain.Explainer(net, device="cpu", labels=["finding"])
    x = torch.tensor([1.0, 1.0, 0.0]).view(1, 3, 1, 1)
    for method in ("lrp", "rap"):
        assert create(method).batchnorm == "pass" == METHOD_OPTIONS[method]["batchnorm"].default
        default = explainer.explain(x, [method], targets=[0]).heatmaps[method]
        zennit = explainer.explain(x, [method], targets=[0], options={method: {"batchnorm": "zennit"}})
        assert default.sum().item() == pytest.approx(2.0, rel=1e-6)  # conserves f(x) = 2
        assert zennit.heatmaps[method].sum().item() == pytest.approx(1.0, rel=1e-6)
        with pytest.raises(cxrexplain.InvalidOption, match="batchnorm='fold' is not valid; use one of pass, zennit"):
            create(method, batchnorm="fold")


def test_densenet121_with_trained_like_batchnorm_conserves_only_with_pass():
    """[Nam2021] eq. 1 on DenseNet-121 (conv / linear biases zero, BatchNorm statistics and shifts as training
    leaves them, 64 px, float32): ``pass`` totals f(x) within 0.5 %; ``zennit`` loses most of it, through the
    BatchNorms after concatenations. The figures at 224 px: BENCHMARKS.md, ``benchmarks.bn_conservation``."""
    net = trained_like_model("densenet121", size=64)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        logits = net(x)
    target = int(logits.argmax(1))
    explainer = cxrexplain.Explainer(net, device="cpu", labels=["a", "b", "c"])
    for method in ("lrp", "rap"):
        ratio = {rule: explainer.explain(x, [method], targets=[target], options={method: {"batchnorm": rule}})
                 .heatmaps[method].double().sum().item() / logits[0, target].item() for rule in ("pass", "zennit")}
        assert abs(ratio["pass"] - 1) < 5e-3, (method, ratio)
        assert abs(ratio["zennit"] - 1) > 0.1, (method, ratio)

"""Guided backprop (Springenberg et al.) on the rule engine: captum parity, exact plain gradient with the
unmodified table, no leaked state."""

from __future__ import annotations

import copy

import pytest
import torch
from propagation_nets import (
    SmallConvNet,
    at_target,
    labels,
    random_classifier,
    randomize_batchnorm,
    relevance_at_input,
)

import cxrexplain
from cxrexplain.propagation import GRADIENT_RULES

# One torch thread for this module (set by a fixture, so the setting does not leak into other modules).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("name", ["resnet50", "vgg16"])
def test_matches_captum_guided_backprop(name):
    from captum.attr import GuidedBackprop

    model = random_classifier(name)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    targets = [2, 0]
    ours = cxrexplain.Explainer(copy.deepcopy(model), device="cpu", labels=labels()).explain(
        x, ["guided_backprop"], targets=targets
    ).heatmaps["guided_backprop"]
    reference_model = copy.deepcopy(model)
    for module in reference_model.modules():  # captum hooks ReLU modules; in-place ones would trip its hooks
        if hasattr(module, "inplace"):
            module.inplace = False
    reference = GuidedBackprop(reference_model).attribute(
        x.clone().requires_grad_(True), target=torch.tensor(targets)
    )
    reference = reference.detach().sum(1)
    assert ours.shape == (2, 64, 64)
    # float32: same arithmetic in a different order; tolerance 1e-5 of the largest |value|
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5 * reference.abs().max().item())


@pytest.mark.parametrize("name", ["densenet121", "small"])
def test_unmodified_gradient_table_gives_the_autograd_gradient(name):
    """With plain ReLU gradients the traversal is exactly backpropagation: checks every VJP rule (merged and
    diagonal BN, cat, add, pools, functional ReLU / pooling of DenseNet's head)."""
    if name == "small":
        torch.manual_seed(0)
        model, x = randomize_batchnorm(SmallConvNet()), torch.randn(2, 2, 8, 8, dtype=torch.float64)
        tolerance = dict(rtol=1e-10, atol=1e-12)
    else:
        model = random_classifier(name)
        x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
        tolerance = dict(rtol=1e-4, atol=1e-6)
    targets = [1, 2]
    ours = relevance_at_input(model, x, at_target(targets, "one"), GRADIENT_RULES, "gradient")
    xg = x.clone().requires_grad_(True)
    model(xg)[[0, 1], targets].sum().backward()
    torch.testing.assert_close(ours, xg.grad, **tolerance)


def test_differs_from_gradient_and_leaves_no_state():
    model = random_classifier("resnet50")
    explainer = cxrexplain.Explainer(model, device="cpu", labels=labels())
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    both = explainer.explain(x, ["guided_backprop", "saliency"], targets=[1])
    again = explainer.explain(x, ["saliency", "guided_backprop"], targets=[1])
    xg = x.clone().requires_grad_(True)
    model(xg)[0, 1].backward()
    torch.testing.assert_close(both.heatmaps["saliency"], xg.grad.abs().amax(1), rtol=1e-5, atol=1e-7)
    assert torch.equal(both.heatmaps["guided_backprop"], again.heatmaps["guided_backprop"])
    assert not torch.allclose(both.heatmaps["guided_backprop"], xg.grad.sum(1), rtol=1e-2, atol=1e-6)
    for module in model.modules():
        assert not module._forward_hooks and not module._backward_hooks


def test_unsupported_layer():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GELU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 3))
    with pytest.raises(cxrexplain.UnsupportedModel, match="guided_backprop has no propagation rule .* GELU"):
        explainer = cxrexplain.Explainer(model, device="cpu", labels=labels())
        explainer.explain(torch.rand(1, 3, 8, 8), ["guided_backprop"])

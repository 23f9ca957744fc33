"""Guided backpropagation (Springenberg et al., 2015, §3.4) on the propagation rule engine."""

from __future__ import annotations

import torch

from ..bundle import ClassifierBundle
from ..propagation import GRADIENT_RULES, Rule, Site, propagate
from .base import Captures, ForwardContext, Method, MethodOutput, register


def guided_relu(site: Site, grad: torch.Tensor) -> list[torch.Tensor]:
    """Springenberg et al. eq. for guided backprop: ``R_l = (f_l > 0) * (R_{l+1} > 0) * R_{l+1}``."""
    return [grad.clamp(min=0) * (site.inputs[0] > 0)]


GUIDED_RULES: dict[str, Rule] = {**GRADIENT_RULES, "relu": guided_relu}
"""Local vector-Jacobian products everywhere, except ReLUs pass only positive gradient."""


@register
class GuidedBackprop(Method):
    """The gradient of the target logit with every ReLU passing only positive gradient where its input was
    positive; all other nodes use their exact local vector-Jacobian product. One backward walk over the shared
    forward's activations; no hooks. Output: summed over channels, signed.
    """

    name = "guided_backprop"
    needs_graph = False  # rules work on detached activations

    def captures(self, bundle: ClassifierBundle) -> Captures:
        return "all"

    def explain(self, ctx: ForwardContext) -> MethodOutput:
        start = torch.zeros_like(ctx.logits.detach()).scatter_(1, ctx.targets[:, None], 1.0)
        grad = propagate(ctx.bundle.traced, ctx.activations, start, GUIDED_RULES, self.name)
        return MethodOutput(heatmap=grad.sum(dim=1).float())

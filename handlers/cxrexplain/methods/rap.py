"""Relative attributing propagation (Nam et al., AAAI 2020; [Nam2021] §2 eqs. 3-6) on the propagation rule engine.

Reading of [Nam2021]'s equations (the extracted text has index typos: ``sum_i z_ij`` is the sum over the inputs
i of neuron j, the outer sums run over the neurons j of the layer above). ``z_ij = x_i w_ij`` without bias,
``z_ij^+`` / ``z_ij^-`` its positive / negative part (sign of the product).

* eq. 3 (first backward step only, output layer q -> penultimate layer p): each input gets its actual
  forward contribution to the target, ``R_i^(p) = (z_ij^+ + z_ij^-) R_j^(q) = z_ij`` with ``R_j^(q)`` the
  unit indicator of the target neuron (a literal ``sum_i`` would make R_i independent of i). The sum over i
  is f(x) minus the head's bias b_t.
* eq. 4: ``R'_i = |R_i| * total / sum_i |R_i|`` per sample: influence instead of value. [Nam2021] §2 starts the
  propagation from ``R = f(x)`` (eq. 1), so the total is the target's logit f(x), bias included, not
  ``sum_i R_i = f(x) - b_t``: with a bias, taking ``sum_i R_i`` would make the map total f(x) - b_t and, where
  the two differ in sign, flip the whole bi-polar map. On a bias-free head both totals are the same. The RAP
  authors' code (wjNam/Relative_Attributing_Propagation, ``Linear.RAP_relprop``'s ``first_prop``) also ends the
  first step at f(x): it spreads the bias over the positive inputs' contributions before eq. 4.
* eq. 5 (every later affine layer): ``Rbar_i = sum_j [ z_ij^+ / sum_i z_ij^+ * R_j
  + z_ij^- / sum_i z_ij^- * R_j * sum_i |z_ij^-| / sum_i (|z_ij^+| + |z_ij^-|) ]``: the positive part carries
  all of R_j, the negative part a further share R_j times neuron j's fraction of negative influence.
* eq. 6: ``Psi = (sum_i of the negative part of eq. 5) / Gamma``, Gamma the number of activated input neurons
  (``x_i != 0``) of the layer per sample; ``R_i = Rbar_i - Psi`` on activated neurons, ``Rbar_i`` elsewhere.
  Subtracting exactly the surplus of eq. 5 restores conservation (eq. 1) and pushes weakly influential
  neurons negative (the bi-polar map).

Non-affine nodes (ReLU, pooling, concatenation, addition, reshapes) use the same rules as LRP.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..bundle import ClassifierBundle
from ..propagation import (
    RELEVANCE_RULES,
    Rule,
    Site,
    per_sample_dot,
    per_sample_sum,
    positive,
    propagate,
    split_sign,
    with_batchnorm,
)
from .base import Captures, ForwardContext, Method, MethodOutput, register
from .lrp import check_batchnorm


def influence_normalization(site: Site, relevance: torch.Tensor) -> list[torch.Tensor]:
    """[Nam2021] eqs. 3-4 at the output layer; ``relevance`` is the target indicator."""
    x = site.inputs[0]
    contribution = x * site.layer.transpose(relevance, x)  # eq. 3: R_i = z_ij for the target j
    # eq. 4 with f(x) as the total (eq. 1: R = f(x) at the output, bias included): R'_i = |R_i| f(x) / sum_i |R_i|
    logit = (site.output * relevance).flatten(1).sum(dim=1).view(-1, *([1] * (x.ndim - 1)))
    magnitude = contribution.abs()
    return [magnitude * logit / positive(per_sample_sum(magnitude))]


def relative_attribution(site: Site, relevance: torch.Tensor) -> list[torch.Tensor]:
    """[Nam2021] eqs. 5-6 at every other affine node."""
    layer = site.layer
    x = site.inputs[0]
    active = x != 0
    # Gamma: activated (x_i != 0) input neurons per sample (eq. 6)
    gamma = active.flatten(1).sum(dim=1).clamp_(min=1).view(-1, *([1] * (x.ndim - 1)))
    if layer.kind == "diagonal":
        # One contribution per neuron: eq. 5 gives Rbar_i = R_i wherever z_i = a_i x_i != 0 (through the
        # positive part if z_i > 0, through the negative part, with fraction 1, if z_i < 0).
        z = layer.forward(x)
        psi = per_sample_sum(relevance * (z < 0)) / gamma  # eq. 6 over the negative part
        return [(relevance - psi) * active]
    xp, xn = split_sign(x, site.nonnegative)
    pos_sum = layer.positive_sum(xp, xn)  # P_j = sum_i z_ij^+
    z = layer.preactivation(site.output)  # z_j = P_j + N_j, N_j = sum_i z_ij^- (no second conv)
    # T_j = sum_i (|z_ij^+| + |z_ij^-|) = P_j - N_j = 2 P_j - z_j, formed halved in one pass: T_j / 2 = P_j - z_j / 2
    half_total = torch.sub(pos_sum, z, alpha=0.5)
    # eq. 5: Rbar_i = sum_j z_ij^+ (R_j / P_j) + sum_j z_ij^- / N_j * (R_j |N_j| / T_j); the latter factor
    # simplifies to z_ij^- * s_neg_j with s_neg_j = -R_j / T_j = -0.5 R_j / (T_j / 2) (no division by N_j)
    s_neg = torch.div(relevance, positive(half_total, out=half_total), out=half_total).mul_(-0.5)
    # eq. 6: Psi = sum_i (negative part of eq. 5) / Gamma = sum_j N_j s_neg_j / Gamma, taken at the outputs
    # as sum_j z_j s_neg_j - sum_j P_j s_neg_j (two dot products, no N tensor)
    psi = (per_sample_dot(z, s_neg) - per_sample_dot(pos_sum, s_neg)) / gamma
    s_pos = torch.div(relevance, positive(pos_sum, out=pos_sum), out=pos_sum)  # R_j / P_j; P not needed after
    rbar = layer.mixed_share(xp, xn, s_pos, s_neg)
    # R_i = Rbar_i - Psi on activated neurons; the others (x_i = 0) have Rbar_i = 0 (a multiple of x_i) and
    # keep it: one fused pass
    return [rbar.addcmul_(active, psi, value=-1)]


RAP_RULES: dict[str, Rule] = {
    **RELEVANCE_RULES,
    "head": influence_normalization,
    "affine": relative_attribution,
}
"""RAP with BatchNorm folded into affine nodes (``batchnorm=zennit``); :func:`rap_rules` for either."""


def rap_rules(batchnorm: str = "zennit") -> dict[str, Rule]:
    """The RAP rule table with BatchNorm treated as ``batchnorm`` says (``pass`` or ``zennit``)."""
    return with_batchnorm(RAP_RULES, batchnorm)


@register
class RAP(Method):
    """Relative attributing propagation: bi-polar relevance by relative influence ([Nam2021] eqs. 3-6).

    The first step (output layer) gives each penultimate neuron its actual contribution to the target logit
    and re-signs it by influence (eqs. 3-4); every later affine layer splits relevance through positive and
    negative contributions and shifts it uniformly over activated neurons (eqs. 5-6). The first step totals
    the target's logit f(x), the head's bias included (eq. 1), so the map never flips sign because of that
    bias; biases inside the network are left out of every ``z``, so the input relevance sums to f(x) exactly
    when they are zero. ``batchnorm``: ``pass`` (default; the authors' code passes relevance through BatchNorm
    unchanged) or ``zennit`` (folded into affine nodes); on DenseNet-121 with trained-like BatchNorm ``pass``
    totals f(x) within a few per cent and ``zennit`` not even with f(x)'s sign (docs/fidelity.md). Cost: about
    four extra forward-equivalents. Output: input
    relevance summed over channels, signed.
    """

    name = "rap"
    needs_graph = False  # rules work on detached activations
    options = {"batchnorm": str}
    batchnorm: str = "pass"

    def __init__(self, **options: Any):
        super().__init__(**options)
        check_batchnorm(self.name, self.batchnorm)

    def captures(self, bundle: ClassifierBundle) -> Captures:
        return "all"

    @classmethod
    def cost_of(cls, options: Mapping[str, Any]) -> int:
        return 2

    def explain(self, ctx: ForwardContext) -> MethodOutput:
        start = torch.zeros_like(ctx.logits.detach()).scatter_(1, ctx.targets[:, None], 1.0)
        relevance = propagate(ctx.bundle.traced, ctx.activations, start, rap_rules(self.batchnorm), self.name)
        return MethodOutput(heatmap=relevance.sum(dim=1).float())

"""LRP-alpha-beta (Bach et al. 2015; [Nam2021] §2 eq. 2) on the propagation rule engine."""

from __future__ import annotations

from typing import Any

import torch

from ..bundle import ClassifierBundle
from ..errors import InvalidOption
from ..propagation import (
    RELEVANCE_RULES,
    Rule,
    Site,
    negative,
    positive,
    propagate,
    split_sign,
    with_batchnorm,
)
from ..propagation.rules import BATCHNORM_RULES
from .base import Captures, ForwardContext, Method, MethodOutput, register


class AlphaBeta:
    """[Nam2021] eq. 2: ``R_i = sum_j (alpha z_ij^+ / sum_i z_ij^+ - beta z_ij^- / sum_i z_ij^-) R_j``.

    ``z_ij = x_i w_ij`` without bias, split by the sign of the product. Applied to every affine node: convs,
    linear layers, merged conv + BatchNorm, and BatchNorms that cannot be merged (DenseNet's, after a
    concatenation), which are the diagonal map ``y = a x`` per channel: there the rule keeps ``R_j`` where
    ``a x > 0`` and, with beta = 0, drops it where ``a x < 0``.
    """

    def __init__(self, alpha: float, beta: float):
        self.alpha, self.beta = alpha, beta

    def __call__(self, site: Site, relevance: torch.Tensor) -> list[torch.Tensor]:
        layer = site.layer
        if layer.kind == "diagonal":
            # one contribution per neuron: z+/sum z+ = 1 where z = a x > 0, z-/sum z- = 1 where z < 0
            z = layer.forward(site.inputs[0])
            out = relevance * (z > 0) if self.alpha == 1.0 else self.alpha * relevance * (z > 0)
            return [out - self.beta * relevance * (z < 0) if self.beta else out]
        xp, xn = split_sign(site.inputs[0], site.nonnegative)
        pos_sum = layer.positive_sum(xp, xn)
        # sum_i z_ij^- = z_j - sum_i z_ij^+ (no second conv)
        neg_sum = layer.preactivation(site.output) - pos_sum if self.beta else None
        # alpha * sum_j z_ij^+ R_j / sum_i z_ij^+ (the quotient in place: pos_sum is not needed after it)
        out = layer.positive_share(xp, xn, torch.div(relevance, positive(pos_sum, out=pos_sum), out=pos_sum))
        if self.alpha != 1.0:
            out.mul_(self.alpha)
        if neg_sum is not None:
            # - beta * sum_j z_ij^- R_j / sum_i z_ij^-
            s_neg = torch.div(relevance, negative(neg_sum, out=neg_sum), out=neg_sum)
            out.sub_(layer.negative_share(xp, xn, s_neg), alpha=self.beta)
        return [out]


def lrp_rules(alpha: float = 1.0, beta: float = 0.0, batchnorm: str = "zennit") -> dict[str, Rule]:
    """The LRP rule table: alpha-beta on affine nodes, the shared relevance rules elsewhere; BatchNorm as
    ``batchnorm`` says (:data:`~cxrexplain.propagation.BATCHNORM_RULES`)."""
    return with_batchnorm({**RELEVANCE_RULES, "affine": AlphaBeta(alpha, beta)}, batchnorm)


DEFAULT_BATCHNORM = "pass"


def check_batchnorm(method: str, batchnorm: str) -> None:
    """Refuse a ``batchnorm`` option that names no rule, listing the rules."""
    if batchnorm not in BATCHNORM_RULES:
        raise InvalidOption(f"{method}: batchnorm={batchnorm!r} is not valid; use one of "
                            f"{', '.join(BATCHNORM_RULES)}")


@register
class LRP(Method):
    """Layer-wise relevance propagation, alpha-beta rule ([Nam2021] eq. 2; default alpha = 1, beta = 0 as in [Nam2021]).

    Relevance starts as the target's logit f(x) (before the sigmoid, [Nam2021] §2) at the target unit, zero
    elsewhere, and is propagated back to the input pixels over the shared forward pass's activations: about
    two extra forward-equivalents (one positive-weight forward and one transposed pass per layer). Biases are
    not part of ``z``, so on a bias-free network the input relevance sums to f(x) ([Nam2021] eq. 1). Output: input
    relevance summed over channels, signed. Options: ``alpha``, ``beta`` (non-negative, ``alpha - beta = 1``);
    ``batchnorm``: ``pass`` (default, relevance through BatchNorm unchanged: on DenseNet-121 with trained-like
    BatchNorm it totals f(x) within 1e-3, where ``zennit``'s diagonal rule keeps under a third of it) or
    ``zennit`` (BatchNorm folded into the conv / a diagonal layer, as zennit does). docs/fidelity.md has the
    figures.
    """

    name = "lrp"
    needs_graph = False  # rules work on detached activations
    options = {"alpha": float, "beta": float, "batchnorm": str}
    alpha: float = 1.0
    beta: float = 0.0
    batchnorm: str = DEFAULT_BATCHNORM

    def __init__(self, **options: Any):
        super().__init__(**options)
        if self.alpha < 0 or self.beta < 0:
            raise InvalidOption(
                f"lrp: alpha and beta must be non-negative, got alpha={self.alpha}, beta={self.beta}"
            )
        if abs(self.alpha - self.beta - 1.0) > 1e-9:
            raise InvalidOption(
                f"lrp: alpha - beta must equal 1 to conserve relevance ([Nam2021] eq. 2), got alpha={self.alpha}, "
                f"beta={self.beta}; for example alpha=1, beta=0 or alpha=2, beta=1"
            )

        check_batchnorm(self.name, self.batchnorm)

    def captures(self, bundle: ClassifierBundle) -> Captures:
        return "all"

    def explain(self, ctx: ForwardContext) -> MethodOutput:
        logits, rows = ctx.logits.detach(), ctx.targets[:, None]
        start = torch.zeros_like(logits).scatter_(1, rows, logits.gather(1, rows))  # R = f(x) at the target
        rules = lrp_rules(self.alpha, self.beta, self.batchnorm)
        relevance = propagate(ctx.bundle.traced, ctx.activations, start, rules, self.name)
        return MethodOutput(heatmap=relevance.sum(dim=1).float())

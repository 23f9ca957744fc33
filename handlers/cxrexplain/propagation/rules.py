"""Rules shared by the relevance methods (LRP, RAP) and the gradient ones, and the tables they start from.

A rule maps the quantity at a node's output to one tensor per input, from that node's kept input and output
(a :class:`Site`); LRP and RAP differ only in their ``affine`` (and ``head``) rules.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from .linear_maps import LinearMap
from .nodes import Op
from .numerics import stabilize, vjp


@dataclass
class Site:
    """One visit of a node: its :class:`Op` and the kept input and output tensors (detached)."""

    op: Op
    inputs: list[torch.Tensor]
    output: torch.Tensor
    nonnegative: bool = False  # inputs[0] is known >= 0 (it comes from a ReLU through pools / reshapes)

    @property
    def layer(self) -> LinearMap:
        return self.op.layer()


Rule = Callable[[Site, torch.Tensor], Sequence[torch.Tensor]]
"""Maps the relevance (or gradient) at a node's output to one tensor per input of ``site.op``."""

RuleTable = Mapping[str, Rule]



def pass_through(site: Site, relevance: torch.Tensor) -> list[torch.Tensor]:
    """ReLU, Dropout, Identity: relevance passes unchanged (a ReLU's zero outputs get none from above)."""
    return [relevance]


def reshape_back(site: Site, relevance: torch.Tensor) -> list[torch.Tensor]:
    """flatten / view / reshape: the same values, the input's shape."""
    return [relevance.reshape(site.inputs[0].shape)]


def split_cat(site: Site, relevance: torch.Tensor) -> list[torch.Tensor]:
    """torch.cat: each input gets its own slice."""
    sizes = [x.shape[site.op.dim] for x in site.inputs]
    return list(relevance.split(sizes, dim=site.op.dim))


def z_rule_sum(site: Site, relevance: torch.Tensor) -> list[torch.Tensor]:
    """Tensor addition (ResNet residual): each summand gets ``R * x_k / sum_k x_k`` (the z-rule)."""
    s = relevance / stabilize(functools.reduce(operator.add, site.inputs))
    return [(x * s).sum_to_size(x.shape) for x in site.inputs]


def z_rule_pool(site: Site, relevance: torch.Tensor) -> list[torch.Tensor]:
    """Average pooling: the z-rule with the pool's (positive) weights, ``R_i = x_i sum_j w_ij R_j / z_j``."""
    assert site.op.apply is not None
    x = site.inputs[0]
    s = relevance / stabilize(site.output)
    return [x * vjp(site.op.apply, x, s)]


def gradient_pool(site: Site, relevance: torch.Tensor) -> list[torch.Tensor]:
    """Max pooling: winner-take-all, i.e. the local gradient routes everything to the maximum."""
    assert site.op.apply is not None
    return [vjp(site.op.apply, site.inputs[0], relevance)]


def gradient_affine(site: Site, grad: torch.Tensor) -> list[torch.Tensor]:
    """The exact gradient of an affine node, ``W^T g`` (a merged conv + BatchNorm included)."""
    return [site.layer.transpose(grad, site.inputs[0])]


def gradient_relu(site: Site, grad: torch.Tensor) -> list[torch.Tensor]:
    """The plain ReLU gradient: ``g`` where the input was positive."""
    return [grad * (site.inputs[0] > 0)]


def gradient_sum(site: Site, grad: torch.Tensor) -> list[torch.Tensor]:
    """Addition: every summand gets the gradient (reduced over broadcast axes)."""
    return [grad.sum_to_size(x.shape) for x in site.inputs]


RELEVANCE_RULES: dict[str, Rule] = {
    "relu": pass_through,
    "identity": pass_through,
    "reshape": reshape_back,
    "cat": split_cat,
    "add": z_rule_sum,
    "avgpool": z_rule_pool,
    "maxpool": gradient_pool,
}
"""Every kind except ``affine``: LRP and RAP differ only in their affine (and head) rules."""

GRADIENT_RULES: dict[str, Rule] = {
    "affine": gradient_affine,
    "relu": gradient_relu,
    "identity": pass_through,
    "reshape": reshape_back,
    "cat": split_cat,
    "add": gradient_sum,
    "avgpool": gradient_pool,
    "maxpool": gradient_pool,
}
"""The plain vector-Jacobian product of every kind: the table guided backprop modifies."""


BATCHNORM_RULES: dict[str, str] = {
    "pass": "relevance passes through every BatchNorm unchanged; the conv before it keeps its own weights "
            "(the RAP authors' code, wjNam/Relative_Attributing_Propagation)",
    "zennit": "BatchNorm merged into the conv before it, or a diagonal affine layer where it cannot be merged "
              "(DenseNet's, after a concatenation), with the method's affine rule (zennit's canonizers)",
}
"""The BatchNorm treatments a relevance method offers (a ``batchnorm`` option), with what each does."""


def with_batchnorm(rules: dict[str, Rule], batchnorm: str) -> dict[str, Rule]:
    """``rules`` with BatchNorm treated as ``batchnorm`` says (a key of :data:`BATCHNORM_RULES`).

    ``pass`` adds a ``batchnorm`` rule, which makes :func:`~.walk.propagate` keep every BatchNorm as a node of
    its own; ``zennit`` adds none, so BatchNorms are folded into affine nodes.
    """
    if batchnorm not in BATCHNORM_RULES:
        raise ValueError(f"batchnorm must be one of {', '.join(BATCHNORM_RULES)}, got {batchnorm!r}")
    return {**rules, "batchnorm": pass_through} if batchnorm == "pass" else dict(rules)

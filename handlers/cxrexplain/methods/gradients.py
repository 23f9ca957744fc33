"""Input gradients: saliency (Simonyan et al. 2014), integrated gradients (Sundararajan et al. 2017)."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..errors import InvalidOption
from .base import ForwardContext, Method, MethodOutput, register

INTEGRATION_RULES = ("gausslegendre", "riemann_trapezoid")
# Path points per extra forward when ``internal_batch_size`` is 0: small on the CPU, where larger batches buy
# little and cost memory (a DenseNet-121 row at 224 px keeps ~100 MB for its backward), larger on a GPU.
CPU_POINTS, CUDA_POINTS = 8, 32


@register
class Saliency(Method):
    """``M(u, v) = max_c |d y / d x_c(u, v)|`` (Simonyan et al. §3.1: the maximum magnitude over channels).

    Reuses the shared forward: one backward to the input, no extra forward.
    """

    name = "saliency"

    def explain(self, ctx: ForwardContext) -> MethodOutput:
        return MethodOutput(heatmap=ctx.input_gradient().abs().amax(dim=1))


def check_rule(rule: str, steps: int) -> None:
    """Refuse a quadrature rule that does not exist or cannot use ``steps`` points, without computing it."""
    if rule not in INTEGRATION_RULES:
        raise InvalidOption(
            f"integrated_gradients: unknown integration {rule!r}; use one of {', '.join(INTEGRATION_RULES)}"
        )
    if rule == "riemann_trapezoid" and steps < 2:
        raise InvalidOption("integrated_gradients: riemann_trapezoid needs steps >= 2")


@functools.lru_cache(maxsize=8)
def path_rule(rule: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Quadrature nodes ``alpha`` in [0, 1] and weights (summing to 1) for the path integral; read-only arrays,
    computed on first use and cached per (rule, steps): Gauss-Legendre is an eigen-solve of a steps x steps
    matrix, so it is never computed before the request has passed its caps.

    ``gausslegendre``: Gauss-Legendre nodes on [-1, 1] mapped to [0, 1] (what captum uses by default).
    ``riemann_trapezoid``: ``steps`` equally spaced nodes including both ends, trapezoid weights
    ``1/(steps-1)`` halved at the ends (captum's variant uses ``1/steps``, so its weights sum to
    ``(steps-1)/steps``; ours integrate constants exactly).
    """
    check_rule(rule, steps)
    if rule == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        alphas, weights = 0.5 * (nodes + 1.0), 0.5 * weights
    else:
        weights = np.full(steps, 1.0 / (steps - 1))
        weights[[0, -1]] /= 2
        alphas = np.linspace(0.0, 1.0, steps)
    alphas.flags.writeable = weights.flags.writeable = False
    return alphas, weights


@register
class IntegratedGradients(Method):
    """``IG_i(x) = (x_i - x'_i) int_0^1 dy(x' + a (x - x'))/dx_i da`` (Sundararajan et al. eq. 1, §5).

    The integral is approximated by a quadrature rule over ``steps`` path points, evaluated in chunks of
    ``internal_batch_size`` rows (extra forwards are inherent to the method). Channels are summed, keeping
    the sign. Options: ``steps`` (default 32), ``baseline`` (constant value of x', default 0.0, in the
    classifier's input space), ``integration`` (``gausslegendre`` default, or ``riemann_trapezoid``),
    ``internal_batch_size`` (path points per extra forward; default 0 = by device, 8 on CPU, 32 on CUDA:
    memory stays bounded whatever N and steps).
    """

    name = "integrated_gradients"
    needs_graph = False  # its own passes on path points
    options = {"steps": int, "baseline": float, "integration": str, "internal_batch_size": int}
    steps: int = 32
    baseline: float = 0.0
    integration: str = "gausslegendre"
    internal_batch_size: int = 0

    def __init__(self, **options: Any):
        super().__init__(**options)
        if self.steps < 1:
            raise InvalidOption(f"integrated_gradients: steps must be >= 1, got {self.steps}")
        if self.internal_batch_size < 0:
            raise InvalidOption(
                f"integrated_gradients: internal_batch_size must be >= 0 (0: by device), got "
                f"{self.internal_batch_size}"
            )
        check_rule(self.integration, self.steps)  # validate now; the quadrature itself waits for explain

    @classmethod
    def cost_of(cls, options: Mapping[str, Any]) -> int:
        return int(options.get("steps", cls.steps))

    def attributions(self, ctx: ForwardContext) -> torch.Tensor:
        """(N, C, H, W) integrated gradients of each row's target logit."""
        module = ctx.bundle.module
        x = ctx.x.detach()
        n = x.shape[0]
        base = torch.full_like(x, self.baseline)
        alphas, weights = path_rule(self.integration, self.steps)
        # Path points ordered (step, row): point j is row j % n at alpha[j // n].
        alpha = torch.tensor(alphas, dtype=x.dtype, device=x.device).repeat_interleave(n)
        weight = torch.tensor(weights, dtype=x.dtype, device=x.device).repeat_interleave(n)
        rows = torch.arange(n, device=x.device).repeat(self.steps)
        total = torch.zeros_like(x)
        chunk = self.internal_batch_size or (CUDA_POINTS if x.device.type == "cuda" else CPU_POINTS)
        for start in range(0, alpha.numel(), chunk):
            part = slice(start, start + chunk)
            r, a = rows[part], alpha[part].view(-1, 1, 1, 1)
            points = (base[r] + a * (x[r] - base[r])).requires_grad_(True)
            logits = module(points)
            chosen = logits.gather(1, ctx.targets[r][:, None]).sum()
            (grad,) = torch.autograd.grad(chosen, points)
            total.index_add_(0, r, grad * weight[part].view(-1, 1, 1, 1))
        return (x - base) * total

    def explain(self, ctx: ForwardContext) -> MethodOutput:
        return MethodOutput(heatmap=self.attributions(ctx).sum(dim=1))

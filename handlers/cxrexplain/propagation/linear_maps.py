"""The bias-free linear map ``z = W x`` of an affine node (conv, linear, merged conv + BatchNorm, diagonal
BatchNorm), its transpose, and the sign-masked sums and shares the alpha-beta rule ([Nam2021] eq. 2) and RAP
([Nam2021] eqs. 3-6) are made of."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

from .numerics import vjp
from .pointwise import fastest, pointwise_mm


@dataclass
class LinearMap:
    """``z = W x`` without bias: a conv, a linear layer, a merged conv + BatchNorm, or a diagonal BatchNorm.

    ``positive_sum`` gives ``sum_i z_ij^+`` per output neuron j (``sum_i z_ij^-`` is the preactivation minus
    it), with ``z_ij = x_i w_ij`` split by the sign of the product (so a negative input times a negative
    weight is a positive contribution). ``positive_share(s)`` / ``negative_share(s)`` give ``sum_j z_ij^+ s_j`` /
    ``sum_j z_ij^- s_j`` per input neuron i: the transpose of the same map, masked by sign.
    """

    weight: torch.Tensor
    kind: Literal["conv", "pointwise", "linear", "diagonal"]
    bias: torch.Tensor | None = None  # the effective bias (BatchNorm shift included), left out of z
    conv: dict[str, Any] = field(default_factory=dict)  # stride, padding, dilation, groups
    _parts: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # W+, W-, made when first used

    @property
    def w_pos(self) -> torch.Tensor:
        if "pos" not in self._parts:
            self._parts["pos"] = self.weight.clamp(min=0)
        return self._parts["pos"]

    @property
    def w_neg(self) -> torch.Tensor:
        if "neg" not in self._parts:
            self._parts["neg"] = self.weight.clamp(max=0)
        return self._parts["neg"]

    def forward(self, x: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        w = self.weight if w is None else w
        if self.kind == "conv":
            return F.conv2d(x, w, None, **self.conv)
        if self.kind == "pointwise":
            x = self._subsample(x)
            return fastest(("pointwise", w.shape, x.shape), x, (
                lambda: F.conv2d(x, w), lambda: pointwise_mm(w.flatten(1), x)))
        if self.kind == "linear":
            return F.linear(x, w)
        return x * w.view(-1, *([1] * (x.ndim - 2)))

    def transpose(self, s: torch.Tensor, like: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        """``W^T s`` shaped like the input ``like``."""
        w = self.weight if w is None else w
        if self.kind == "conv":
            if isinstance(self.conv["padding"], str):  # "same"/"valid": let autograd work out the geometry
                return vjp(lambda t: F.conv2d(t, w, None, **self.conv), like, s)
            return _conv_transpose(s, w, like.shape, **self.conv)
        if self.kind == "pointwise":
            t = fastest(("pointwise transposed", w.shape, s.shape), s, (
                lambda: F.conv_transpose2d(s, w), lambda: pointwise_mm(w.flatten(1).t(), s)))
            if self.stride == (1, 1):
                return t
            # a strided 1x1 conv reads every stride-th pixel: its transpose writes there, zeros elsewhere
            # (CPU's transposed convolution for ResNet's stride-2 downsample took 10x its forward)
            out = t.new_zeros(like.shape)
            out[:, :, :: self.stride[0], :: self.stride[1]] = t
            return out
        if self.kind == "linear":
            return s @ w
        return s * w.view(-1, *([1] * (s.ndim - 2)))

    @property
    def stride(self) -> tuple[int, ...]:
        return tuple(self.conv.get("stride", (1, 1)))

    def _subsample(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.stride == (1, 1) else x[:, :, :: self.stride[0], :: self.stride[1]]

    def preactivation(self, output: torch.Tensor) -> torch.Tensor:
        """``z_j = sum_i z_ij`` from the node's kept output: output minus effective bias (no new conv)."""
        if self.bias is None:
            return output
        return output - self.bias.view(-1, *([1] * (output.ndim - 2)))

    def positive_sum(self, xp: torch.Tensor, xn: torch.Tensor | None) -> torch.Tensor:
        z = self.forward(xp, self.w_pos)
        return z if xn is None else z + self.forward(xn, self.w_neg)

    def positive_share(self, xp: torch.Tensor, xn: torch.Tensor | None, s: torch.Tensor) -> torch.Tensor:
        # transposed passes return fresh tensors: the products are taken in place
        r = self.transpose(s, xp, self.w_pos).mul_(xp)
        return r if xn is None else r.addcmul_(xn, self.transpose(s, xn, self.w_neg))

    def negative_share(self, xp: torch.Tensor, xn: torch.Tensor | None, s: torch.Tensor) -> torch.Tensor:
        r = self.transpose(s, xp, self.w_neg).mul_(xp)
        return r if xn is None else r.addcmul_(xn, self.transpose(s, xn, self.w_pos))

    def mixed_share(
        self, xp: torch.Tensor, xn: torch.Tensor | None, s_pos: torch.Tensor, s_neg: torch.Tensor
    ) -> torch.Tensor:
        """``positive_share(s_pos) + negative_share(s_neg)``.

        For the positive inputs ``W+^T s_pos + W-^T s_neg = W+^T (s_pos - s_neg) + W^T s_neg``: two transposed
        passes with ``W+`` and ``W``, so no ``W-`` is made for layers fed by a ReLU (VGG-16's 25088x4096 FC
        weights among them). The rewrite is exact where it matters: a signal made huge by a clamped
        denominator (no contribution of that sign to neuron j) meets only weights that are exactly zero for
        every positive input i. For negative inputs it would not be (huge terms would cancel), so they take
        ``W-`` explicitly. ``s_pos`` is overwritten.
        """
        from_negative = None if xn is None else \
            self.transpose(s_pos, xn, self.w_neg).add_(self.transpose(s_neg, xn, self.w_pos)).mul_(xn)
        r = self.transpose(s_pos.sub_(s_neg), xp, self.w_pos).add_(self.transpose(s_neg, xp)).mul_(xp)
        return r if from_negative is None else r.add_(from_negative)


def _conv_transpose(s: torch.Tensor, w: torch.Tensor, shape: torch.Size, stride: Any, padding: Any,
                    dilation: Any, groups: int) -> torch.Tensor:
    """``W^T s`` of a convolution with integer padding, shaped ``shape``: a transposed convolution whose
    ``output_padding`` restores the rows and columns a strided forward dropped. (oneDNN runs it 5-20 % faster
    on this CPU than ``torch.nn.grad.conv2d_input``, which goes through ``convolution_backward``.)"""
    stride, padding, dilation = (_pair(v) for v in (stride, padding, dilation))
    extra = tuple(
        shape[2 + i] - ((s.shape[2 + i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (w.shape[2 + i] - 1) + 1)
        for i in range(2))
    return F.conv_transpose2d(s, w, None, stride, padding, extra, groups, dilation)


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))

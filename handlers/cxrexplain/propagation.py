"""The propagation rule engine: one backward walk over the traced graph, a small rule per node kind.

LRP, RAP and guided backprop are the same mechanism with different rule tables (as in zennit, a rule is a
small declaration and the traversal does the plumbing). :func:`propagate` starts from a relevance (or
gradient) at the logits and walks the fx graph of :class:`~cxrexplain.graph.TracedModel` in reverse
topological order; for each node that received something, the rule of its *kind* maps the quantity at the
node's output to its tensor inputs, using only that node's kept input and output (``ctx.activations`` of
the shared forward pass). Nothing is hooked onto the model and the shared autograd graph is never touched:
rules work on detached tensors, under ``torch.no_grad`` except for small local vector-Jacobian products on
detached copies (pooling layers).

Node kinds (anything else raises :class:`~cxrexplain.errors.UnsupportedModel` naming the node and type):

``affine``
    ``nn.Conv2d``, ``nn.Linear``, and ``nn.BatchNorm2d``. A BatchNorm that directly follows a conv whose only
    user it is (ResNet, VGG-bn, DenseNet's ``norm0`` / ``norm2``) is merged with it into one conv
    ``W' = W * gamma / sqrt(var + eps)`` whose input is the conv's input; a BatchNorm that cannot be merged
    (DenseNet's, after a concatenation) is the per-channel affine map ``y = a x + b`` with
    ``a = gamma / sqrt(var + eps)``: a diagonal linear layer, to which the method's affine rule applies
    unchanged. Biases (and BatchNorm shifts ``b``) are left out of every ``z`` (000 eq. 2 has no bias
    term), so relevance is conserved exactly (000 eq. 1) on bias-free networks.
``head``
    The affine node that produces the logits (through reshapes only); methods may give it its own rule
    (RAP's first step, 000 eqs. 3-4); otherwise the ``affine`` rule applies.
``relu``, ``identity``, ``reshape``, ``cat``, ``add``, ``maxpool``, ``avgpool``
    ReLU (module or functional), Dropout / Identity, flatten / view / reshape, ``torch.cat``, tensor
    addition (ResNet residuals), max pooling, average pooling (fixed or adaptive, module or functional).

Denominators are kept away from zero by :data:`EPSILON` (1e-12) only to avoid 0/0: sums of positive
(negative) contributions are clamped at +1e-12 (-1e-12), signed sums get 1e-12 where they are exactly zero. A
denominator that small comes with numerators as small, so no relevance is absorbed in practice.
"""

from __future__ import annotations

import functools
import operator
import time
import weakref
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .errors import UnsupportedModel
from .graph import TracedModel

EPSILON = 1e-12

SUPPORTED = (
    "Conv2d, Linear, BatchNorm2d, ReLU, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, Flatten, Dropout, Identity, "
    "torch.cat, tensor addition, flatten/view/reshape"
)


def stabilize(z: torch.Tensor) -> torch.Tensor:
    """A signed denominator with :data:`EPSILON` where it is exactly zero (only to avoid 0/0)."""
    return z.masked_fill(z == 0, EPSILON)


def positive(z: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """A non-negative denominator (a sum of positive contributions) clamped at :data:`EPSILON`."""
    return torch.clamp(z, min=EPSILON, out=out)


def negative(z: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """A non-positive denominator (a sum of negative contributions) clamped at -:data:`EPSILON`."""
    return torch.clamp(z, max=-EPSILON, out=out)


def split_sign(x: torch.Tensor, nonnegative: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(x+, x-)``; ``x-`` is ``None`` when ``x`` has no negative entry (ReLU outputs): half the work."""
    if nonnegative:
        return x, None
    neg = x.clamp(max=0)
    return x.clamp(min=0), (neg if bool(neg.any()) else None)


def per_sample_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over everything but the batch axis, shaped to broadcast against ``t``."""
    return t.reshape(t.shape[0], -1).sum(dim=1).view(-1, *([1] * (t.ndim - 1)))


def per_sample_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``per_sample_sum(a * b)`` as one dot product per sample, without the elementwise product in memory
    (a batched ``bmm`` of (N, 1, K) by (N, K, 1) took 10x as long at N = 8 here)."""
    dots = torch.stack([torch.dot(a[i].reshape(-1), b[i].reshape(-1)) for i in range(a.shape[0])])
    return dots.view(-1, *([1] * (a.ndim - 1)))


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
                lambda: F.conv2d(x, w), lambda: _pointwise_mm(w.flatten(1), x)))
        if self.kind == "linear":
            return F.linear(x, w)
        return x * w.view(-1, *([1] * (x.ndim - 2)))

    def transpose(self, s: torch.Tensor, like: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        """``W^T s`` shaped like the input ``like``."""
        w = self.weight if w is None else w
        if self.kind == "conv":
            if isinstance(self.conv["padding"], str):  # "same"/"valid": let autograd work out the geometry
                return _vjp(lambda t: F.conv2d(t, w, None, **self.conv), like, s)
            return _conv_transpose(s, w, like.shape, **self.conv)
        if self.kind == "pointwise":
            t = fastest(("pointwise transposed", w.shape, s.shape), s, (
                lambda: F.conv_transpose2d(s, w), lambda: _pointwise_mm(w.flatten(1).t(), s)))
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


def _pointwise_mm(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution of (N, C, H, W) ``x`` with the (C', C) matrix ``w`` as matrix products; one plain
    product at N = 1 (a broadcast batched product of one sample took 1.4x as long with two threads here)."""
    n, _, h, width = x.shape
    flat = x.reshape(n, -1, h * width)
    out = (w @ flat[0]).unsqueeze(0) if n == 1 else torch.matmul(w, flat)
    return out.view(n, -1, h, width)


_FASTEST: dict[tuple[Any, ...], int] = {}  # fastest(): call key -> index of the faster candidate
TIMED_ROUNDS = 3  # fastest(): timed runs of each candidate, interleaved; the minimum counts (one slow run is noise)


def fastest(key: tuple[Any, ...], like: torch.Tensor,
            candidates: Sequence[Callable[[], torch.Tensor]]) -> torch.Tensor:
    """The result of the fastest of equivalent ``candidates`` for this call shape, on the CPU timed the first
    time the shape comes (a warm-up run each, then :data:`TIMED_ROUNDS` interleaved rounds, the minimum of each
    candidate's runs; the choice is kept for the process).

    Why: for a 1x1 convolution on this 2-core CPU with two threads, oneDNN's convolution runs 1.7-2.7x faster
    than a matrix product for most of ResNet-50's and DenseNet-121's shapes, but 4-5x slower for a few
    (64 -> 256 channels at 56x56, batch 8); with one thread the two are equal. No rule on shapes alone
    predicts that. Elsewhere (CUDA) the first candidate, the convolution, is used.
    """
    if like.device.type != "cpu":
        return candidates[0]()
    key = (*key, like.dtype, torch.get_num_threads())
    if key in _FASTEST:
        return candidates[_FASTEST[key]]()
    outputs = [fn() for fn in candidates]  # warm-up (first-use costs such as oneDNN's primitive creation)
    best = [float("inf")] * len(candidates)
    for _ in range(TIMED_ROUNDS):
        for i, fn in enumerate(candidates):
            start = time.perf_counter()
            outputs[i] = fn()
            best[i] = min(best[i], time.perf_counter() - start)
    _FASTEST[key] = best.index(min(best))
    return outputs[_FASTEST[key]]


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


def _vjp(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``J_fn(x)^T v`` on a detached local copy (the shared graph is not touched)."""
    with torch.enable_grad():
        local = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(fn(local), local, v)
    return grad


@dataclass(frozen=True)
class Op:
    """A graph node as the engine sees it: its kind, the nodes relevance flows to, how to rebuild it."""

    node: fx.Node
    kind: str
    inputs: tuple[fx.Node, ...]
    apply: Callable[[torch.Tensor], torch.Tensor] | None = None  # recompute on a new input (pooling)
    build: Callable[[], LinearMap] | None = None  # the bias-free linear map, from the current parameters
    modules: tuple[nn.Module, ...] = ()  # whose parameters and buffers ``build`` reads
    dim: int = 1  # concatenation axis
    _cache: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def layer(self) -> LinearMap:
        """The bias-free linear map, rebuilt only when a parameter or buffer it reads was replaced, moved or
        changed in place. Rebuilding it on every call (a conv + BatchNorm merge, ``W+`` of VGG-16's
        25088x4096 weights) cost more than the convolutions of a batch-1 LRP pass."""
        assert self.build is not None, f"{self.node.name} is not an affine node"
        # the tensors themselves are kept in the key, so identity is safe (no address reuse)
        state = [(t, t.data_ptr(), t._version) for m in self.modules
                 for t in (*m.parameters(recurse=False), *m.buffers(recurse=False))]
        cached = self._cache.get("layer")
        if cached is None or not _same_state(cached[0], state):
            cached = self._cache["layer"] = (state, self.build())
        return cached[1]


def _same_state(old: list[tuple[torch.Tensor, int, int]], new: list[tuple[torch.Tensor, int, int]]) -> bool:
    return len(old) == len(new) and all(a[0] is b[0] and a[1:] == b[1:] for a, b in zip(old, new, strict=True))


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


# ---------------------------------------------------------------------------------------------------------
# Rules shared by the relevance methods (LRP, RAP) and the gradient ones.


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
    return [x * _vjp(site.op.apply, x, s)]


def gradient_pool(site: Site, relevance: torch.Tensor) -> list[torch.Tensor]:
    """Max pooling: winner-take-all, i.e. the local gradient routes everything to the maximum."""
    assert site.op.apply is not None
    return [_vjp(site.op.apply, site.inputs[0], relevance)]


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


# ---------------------------------------------------------------------------------------------------------
# Classifying nodes (once per traced model, lazily per node).

_RELU_FUNCTIONS = {F.relu, torch.relu}
_ADD_FUNCTIONS = {operator.add, torch.add}
_RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape}
_RESHAPE_METHODS = {"view", "reshape", "flatten"}
_POOL_FUNCTIONS = {F.adaptive_avg_pool2d: "avgpool", F.avg_pool2d: "avgpool", F.max_pool2d: "maxpool"}
_MODULE_KINDS: tuple[tuple[type[nn.Module] | tuple[type[nn.Module], ...], str], ...] = (
    (nn.ReLU, "relu"),
    ((nn.Dropout, nn.Identity), "identity"),
    (nn.Flatten, "reshape"),
    (nn.MaxPool2d, "maxpool"),
    ((nn.AvgPool2d, nn.AdaptiveAvgPool2d), "avgpool"),
)


def _conv_map(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None) -> LinearMap:
    pointwise = conv.kernel_size == (1, 1) and conv.padding in ((0, 0), "valid")
    if pointwise and conv.groups == 1:
        return LinearMap(weight, "pointwise", bias, dict(stride=conv.stride))
    return LinearMap(weight, "conv", bias, dict(stride=conv.stride, padding=conv.padding,
                                                dilation=conv.dilation, groups=conv.groups))


def _bn_affine(bn: nn.BatchNorm2d, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, b)`` with ``BN(x) = a x + b`` in eval mode: ``a = gamma / sqrt(var + eps)``,
    ``b = beta - a mean``."""
    if bn.running_var is None:
        raise UnsupportedModel(
            f"BatchNorm2d node '{name}' keeps no running statistics (track_running_stats=False); propagation "
            "needs an eval-mode BatchNorm with running statistics"
        )
    assert bn.running_mean is not None
    a = torch.rsqrt(bn.running_var + bn.eps)
    a = a if bn.weight is None else bn.weight * a
    shift = -a * bn.running_mean
    return a, shift if bn.bias is None else shift + bn.bias


def _merged(conv: nn.Conv2d, bn: nn.BatchNorm2d, name: str) -> LinearMap:
    """BN(conv(x)) = (a W) x + (a b_conv + b): one conv."""
    a, b = _bn_affine(bn, name)
    bias = b if conv.bias is None else a * conv.bias + b
    return _conv_map(conv, conv.weight * a.view(-1, 1, 1, 1), bias)


def _diagonal(bn: nn.BatchNorm2d, name: str) -> LinearMap:
    a, b = _bn_affine(bn, name)
    return LinearMap(a, "diagonal", b)


class Plan:
    """How each node of a traced model is propagated; built lazily, cached per :class:`TracedModel`."""

    def __init__(self, traced: TracedModel):
        self.traced = traced
        self._ops: dict[str, Op] = {}
        self._nonnegative: dict[str, bool] = {}
        self.head = self._find_head()

    def nonnegative(self, node: fx.Node) -> bool:
        """Whether a node's output is >= 0 by construction (ReLU, then pools / reshapes / concatenations)."""
        if node.name not in self._nonnegative:
            try:
                op = self._classify(node, "propagation") if node.op != "placeholder" else None
            except UnsupportedModel:
                op = None
            if op is None or op.kind not in ("relu", "maxpool", "avgpool", "identity", "reshape", "cat"):
                self._nonnegative[node.name] = False
            else:
                inputs_nonnegative = all(self.nonnegative(n) for n in op.inputs)
                self._nonnegative[node.name] = op.kind == "relu" or inputs_nonnegative
        return self._nonnegative[node.name]

    def op(self, node: fx.Node, method: str) -> Op:
        if node.name not in self._ops:
            self._ops[node.name] = self._classify(node, method)
        return self._ops[node.name]

    def _unsupported(self, node: fx.Node, what: str, method: str) -> UnsupportedModel:
        return UnsupportedModel(
            f"{method} has no propagation rule for node '{node.name}' ({what}); "
            f"supported layers: {SUPPORTED}. "
            "Use cam, gradcam, saliency or integrated_gradients for this model"
        )

    def _classify(self, node: fx.Node, method: str) -> Op:
        args = node.args
        src = args[0] if args else None
        if not isinstance(src, fx.Node | list | tuple):
            raise self._unsupported(node, f"{node.op} {node.target} without a tensor input", method)
        first: tuple[fx.Node, ...] = (src,) if isinstance(src, fx.Node) else ()
        if node.op == "call_module":
            module = self.traced.module_of(node)
            if isinstance(module, nn.Conv2d):
                if module.padding_mode != "zeros":
                    raise self._unsupported(node, f"Conv2d with padding_mode={module.padding_mode!r}", method)
                conv = module
                return Op(node, "affine", first, build=lambda: _conv_map(conv, conv.weight, conv.bias),
                          modules=(conv,))
            if isinstance(module, nn.Linear):
                fc = module
                return Op(node, "affine", first, build=lambda: LinearMap(fc.weight, "linear", fc.bias),
                          modules=(fc,))
            if isinstance(module, nn.BatchNorm2d):
                return self._batchnorm(node, module, first)
            for types, kind in _MODULE_KINDS:
                if isinstance(module, types):
                    return Op(node, kind, first, apply=module)
            raise self._unsupported(node, f"layer type {type(module).__name__} at '{node.target}'", method)
        if node.op == "call_function":
            target = node.target
            if target in _RELU_FUNCTIONS:
                return Op(node, "relu", first)
            if target is F.dropout:
                return Op(node, "identity", first)
            if target in _RESHAPE_FUNCTIONS:
                return Op(node, "reshape", first)
            tensors = isinstance(src, list | tuple) and all(isinstance(a, fx.Node) for a in src)
            if target is torch.cat and tensors:
                assert isinstance(src, list | tuple)
                dim = args[1] if len(args) > 1 else node.kwargs.get("dim", 0)
                assert isinstance(dim, int)
                return Op(node, "cat", tuple(a for a in src if isinstance(a, fx.Node)), dim=dim)
            if target in _ADD_FUNCTIONS and "alpha" not in node.kwargs:
                return Op(node, "add", tuple(a for a in args if isinstance(a, fx.Node)))
            if target in _POOL_FUNCTIONS:
                return Op(node, _POOL_FUNCTIONS[target], first, apply=self._rebind(node))
            raise self._unsupported(node, f"function {getattr(target, '__name__', target)}", method)
        if node.op == "call_method":
            if node.target == "relu":
                return Op(node, "relu", first)
            if node.target in _RESHAPE_METHODS:
                return Op(node, "reshape", first)
            if node.target == "add" and len(args) == 2 and not node.kwargs:
                return Op(node, "add", tuple(a for a in args if isinstance(a, fx.Node)))
            raise self._unsupported(node, f"tensor method .{node.target}()", method)
        raise self._unsupported(node, f"{node.op} {node.target}", method)

    def _batchnorm(self, node: fx.Node, bn: nn.BatchNorm2d, first: tuple[fx.Node, ...]) -> Op:
        source = first[0]
        after_conv = source.op == "call_module" and isinstance(self.traced.module_of(source), nn.Conv2d)
        if after_conv and len(source.users) == 1:
            conv = self.traced.module_of(source)
            conv_input = source.args[0]
            assert isinstance(conv, nn.Conv2d) and isinstance(conv_input, fx.Node)
            if conv.padding_mode != "zeros":
                what = f"Conv2d with padding_mode={conv.padding_mode!r}"
                raise self._unsupported(source, what, "propagation")
            # conv followed only by this BN: one conv W' = W * a, input = the conv's input (bias excluded).
            return Op(node, "affine", (conv_input,), build=lambda: _merged(conv, bn, node.name),
                      modules=(conv, bn))
        # y = a x + b per channel: a diagonal linear layer (bias b excluded like every bias).
        return Op(node, "affine", first, build=lambda: _diagonal(bn, node.name), modules=(bn,))

    @staticmethod
    def _rebind(node: fx.Node) -> Callable[[torch.Tensor], torch.Tensor]:
        fn = node.target
        rest, kwargs = node.args[1:], dict(node.kwargs)
        assert callable(fn)
        return lambda x: fn(x, *rest, **kwargs)

    def _find_head(self) -> str | None:
        """The affine node whose output reaches the logits through reshape / identity nodes only."""
        node = self.traced.output_node.args[0]
        while isinstance(node, fx.Node) and node.op != "placeholder":
            try:
                op = self._classify(node, "propagation")
            except UnsupportedModel:
                return None
            if op.kind == "affine":
                return node.name
            if op.kind not in ("reshape", "identity"):
                return None
            node = op.inputs[0]
        return None


_PLANS: MutableMapping[TracedModel, Plan] = weakref.WeakKeyDictionary()


def plan_for(traced: TracedModel) -> Plan:
    """The cached :class:`Plan` of a traced model."""
    if traced not in _PLANS:
        _PLANS[traced] = Plan(traced)
    return _PLANS[traced]


def propagate(
    traced: TracedModel,
    activations: Mapping[str, torch.Tensor],
    start: torch.Tensor,
    rules: RuleTable,
    method: str,
    record: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Walk the graph backwards from the logits and return the quantity arriving at the input.

    Parameters
    ----------
    traced
        The classifier's traced graph (``bundle.traced``).
    activations
        Every node's output from the shared forward pass (``ctx.activations`` with ``captures == "all"``).
    start
        (N, L) relevance (or gradient) at the logits.
    rules
        Node kind -> :class:`Rule`; ``"head"`` optionally overrides ``"affine"`` for the output layer.
    method
        The method's wire name, for error messages.
    record
        If given, filled with the quantity at every visited node's output (tests check conservation with it).

    Returns
    -------
    torch.Tensor
        Shaped like the input (N, C, H, W).
    """
    plan = plan_for(traced)
    logits = traced.output_node.args[0]
    if not isinstance(logits, fx.Node):
        raise UnsupportedModel(f"{method} needs a model that returns one logits tensor")
    pending: dict[str, torch.Tensor] = {logits.name: start}
    with torch.no_grad():
        for node in reversed(traced.gm.graph.nodes):
            relevance = pending.pop(node.name, None)
            if relevance is None:
                continue
            if record is not None:
                record[node.name] = relevance
            if node.op == "placeholder":
                return relevance
            op = plan.op(node, method)
            rule = rules.get("head", rules["affine"]) if node.name == plan.head else rules[op.kind]
            inputs = [activations[n.name].detach() for n in op.inputs]
            site = Site(op, inputs, activations[node.name].detach(), plan.nonnegative(op.inputs[0]))
            for source, share in zip(op.inputs, rule(site, relevance), strict=True):
                pending[source.name] = pending[source.name] + share if source.name in pending else share
    placeholder = next(n for n in traced.gm.graph.nodes if n.op == "placeholder")
    return torch.zeros_like(activations[placeholder.name])

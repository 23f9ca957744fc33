"""Node kinds: how each node of a traced classifier is propagated (classified once per traced model, lazily
per node), and the cached linear map of each affine node (BatchNorm merged into the conv before it, ``W' =
W * gamma / sqrt(var + eps)``, or kept as the diagonal map ``y = a x + b``)."""

from __future__ import annotations

import operator
import weakref
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UnsupportedModel
from ..graph import TracedModel
from .linear_maps import LinearMap

SUPPORTED = (
    "Conv2d, Linear, BatchNorm2d, ReLU, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, Flatten, Dropout, Identity, "
    "torch.cat, tensor addition, flatten/view/reshape"
)


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
    """How each node of a traced model is propagated; built lazily, cached per :class:`TracedModel` and
    BatchNorm treatment.

    ``fold_batchnorm`` True: every BatchNorm is an ``affine`` node (merged into the conv before it, or the
    diagonal map), as zennit's canonizers make it. False: every BatchNorm is a ``batchnorm`` node of its own
    and the conv before it an ``affine`` node with its own weights, so a rule table's ``batchnorm`` rule
    decides (the RAP authors' code passes relevance through unchanged).
    """

    def __init__(self, traced: TracedModel, fold_batchnorm: bool = True):
        self.traced = traced
        self.fold_batchnorm = fold_batchnorm
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
        if not self.fold_batchnorm:
            _bn_affine(bn, node.name)  # the same error for a BatchNorm without running statistics
            return Op(node, "batchnorm", first, modules=(bn,))
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


_PLANS: MutableMapping[TracedModel, dict[bool, Plan]] = weakref.WeakKeyDictionary()


def plan_for(traced: TracedModel, fold_batchnorm: bool = True) -> Plan:
    """The cached :class:`Plan` of a traced model, BatchNorms folded into affine nodes or kept as their own."""
    plans = _PLANS.setdefault(traced, {})
    if fold_batchnorm not in plans:
        plans[fold_batchnorm] = Plan(traced, fold_batchnorm)
    return plans[fold_batchnorm]

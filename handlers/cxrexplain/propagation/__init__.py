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
    unchanged. Biases (and BatchNorm shifts ``b``) are left out of every ``z`` ([Nam2021] eq. 2 has no bias
    term), so relevance is conserved exactly ([Nam2021] eq. 1) on bias-free networks. That is BatchNorm as
    zennit folds it (``batchnorm=zennit``); a rule table with a ``batchnorm`` rule (``batchnorm=pass``, the RAP
    authors' rule and the methods' default) keeps every BatchNorm as a ``batchnorm`` node instead, relevance
    passing through unchanged to the conv before it, which keeps its own weights (docs/fidelity.md).
``head``
    The affine node that produces the logits (through reshapes only); methods may give it its own rule
    (RAP's first step, [Nam2021] eqs. 3-4); otherwise the ``affine`` rule applies.
``relu``, ``identity``, ``reshape``, ``cat``, ``add``, ``maxpool``, ``avgpool``
    ReLU (module or functional), Dropout / Identity, flatten / view / reshape, ``torch.cat``, tensor
    addition (ResNet residuals), max pooling, average pooling (fixed or adaptive, module or functional).

Modules: :mod:`.walk` (the traversal), :mod:`.nodes` (node kinds, the cached linear map of each affine node),
:mod:`.rules` (the rules shared by every method and the two base tables), :mod:`.linear_maps` (``z = W x``, its
transpose and sign-masked shares), :mod:`.pointwise` (the faster kernel for 1x1 convolutions),
:mod:`.numerics` (stabilized denominators, sign splits, per-sample sums). References are keyed as in
``docs/references.md``.
"""

from .linear_maps import LinearMap
from .nodes import SUPPORTED, Op, Plan, plan_for
from .numerics import EPSILON, negative, per_sample_dot, per_sample_sum, positive, split_sign, stabilize, vjp
from .rules import (
    BATCHNORM_RULES,
    GRADIENT_RULES,
    RELEVANCE_RULES,
    Rule,
    RuleTable,
    Site,
    gradient_affine,
    gradient_pool,
    gradient_relu,
    gradient_sum,
    pass_through,
    reshape_back,
    split_cat,
    with_batchnorm,
    z_rule_pool,
    z_rule_sum,
)
from .walk import propagate

__all__ = [
    "BATCHNORM_RULES",
    "EPSILON",
    "GRADIENT_RULES",
    "RELEVANCE_RULES",
    "SUPPORTED",
    "LinearMap",
    "Op",
    "Plan",
    "Rule",
    "RuleTable",
    "Site",
    "gradient_affine",
    "gradient_pool",
    "gradient_relu",
    "gradient_sum",
    "negative",
    "pass_through",
    "per_sample_dot",
    "per_sample_sum",
    "plan_for",
    "positive",
    "propagate",
    "reshape_back",
    "split_cat",
    "split_sign",
    "stabilize",
    "vjp",
    "with_batchnorm",
    "z_rule_pool",
    "z_rule_sum",
]

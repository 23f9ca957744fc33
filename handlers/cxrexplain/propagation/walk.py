"""The backward walk: from a relevance (or gradient) at the logits to the input, one rule per visited node."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.fx as fx

from ..errors import UnsupportedModel
from ..graph import TracedModel
from .nodes import plan_for
from .rules import RuleTable, Site


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
        Node kind -> :class:`Rule`; ``"head"`` optionally overrides ``"affine"`` for the output layer. A table
        with a ``"batchnorm"`` rule gets every BatchNorm as a node of its own (the conv before it keeps its own
        weights); without one, BatchNorms are folded into ``affine`` nodes (see :class:`~.nodes.Plan`).
    method
        The method's wire name, for error messages.
    record
        If given, filled with the quantity at every visited node's output (tests check conservation with it).

    Returns
    -------
    torch.Tensor
        Shaped like the input (N, C, H, W).
    """
    plan = plan_for(traced, fold_batchnorm="batchnorm" not in rules)
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

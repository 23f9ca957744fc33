"""Target resolution: which findings an explain row explains, as label indices, in request order.

The default target (a request that names none) is ``None``: the row's top finding, read from the same forward
pass that produces its findings. That is the explanation's own forward (the engine resolves ``None``), so the
default target costs no prediction pass. Only a streaming row has its findings from a prediction pass (they go
out, with the targets, before the explanation runs), and reads its top finding there.
"""

from __future__ import annotations

import torch

from cxrexplain.bundle import ClassifierBundle

from .rows import RowState


def needs_probabilities(row: RowState) -> bool:
    """Findings before the explanation: a predictions row, a stream (findings go first), or targets that depend
    on them (``positive``, ``top_k``)."""
    if row.kind == "predict" or row.stream:
        return True
    opts = row.options
    return opts.positive or opts.top_k is not None


def resolve_targets(row: RowState, bundle: ClassifierBundle) -> list[int | None]:
    """The row's targets without repeats: named labels, then positive findings (most probable first), then the
    ``top_k``, else the top finding (``None`` while the explanation has still to read it)."""
    opts = row.options
    chosen: list[int | None] = [bundle.label_index(t) for t in opts.targets]
    p = row.probabilities[0] if row.probabilities is not None else None
    if p is not None and opts.positive:
        ops = torch.tensor(bundle.op_thresholds or [0.5] * len(p), dtype=p.dtype)
        positive = (p > ops).nonzero().flatten()
        chosen += sorted(positive.tolist(), key=lambda i: -float(p[i]))
    if p is not None and opts.top_k is not None:
        chosen += torch.argsort(p, descending=True)[: min(opts.top_k, len(p))].tolist()
    if not opts.has_targets:
        # The top of the findings this row reports: from its prediction pass when one ran (a stream, which
        # announces its targets with its findings before explaining), else from the explanation's forward.
        chosen.append(int(p.argmax()) if p is not None else None)
    return list(dict.fromkeys(chosen))

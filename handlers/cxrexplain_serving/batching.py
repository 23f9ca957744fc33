"""Batch scheduling: which rows share one engine call, and how one call's result is shared back out.

Rows asking for the same methods with the same method options go through ONE :meth:`Explainer.explain` call,
one engine row per (image, target), in chunks of at most ``max_engine_batch`` engine rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

import torch

from cxrexplain.explainer import Explainer, ExplanationResult

from .rows import RowState


def engine_chunks(rows: Sequence[RowState], max_engine_batch: int) -> Iterator[list[RowState]]:
    """Live explain rows with targets, grouped by method set and options, in chunks of at most
    ``max_engine_batch`` targets (a row larger than that is a chunk of its own; the target cap bounds it)."""
    groups: dict[str, list[RowState]] = {}
    for row in rows:
        if row.live and row.kind == "explain" and row.targets:
            key = json.dumps([list(row.methods), row.method_options], sort_keys=True, default=str)
            groups.setdefault(key, []).append(row)
    for members in groups.values():
        chunk: list[RowState] = []
        for row in members:
            if chunk and sum(len(c.targets) for c in chunk) + len(row.targets) > max_engine_batch:
                yield chunk
                chunk = []
            chunk.append(row)
        if chunk:
            yield chunk


def explain_chunk(explainer: Explainer, rows: Sequence[RowState]) -> ExplanationResult:
    """One engine call for the chunk: each row's image once per target, its targets in order (``None``: the
    row's top finding, read by this call's forward pass). The rows share their method options, so the first
    row's method instances, built and validated in preparation, serve the chunk."""
    xs = [row.x.expand(len(row.targets), -1, -1, -1) for row in rows if row.x is not None]
    targets = [t for row in rows for t in row.targets]
    with torch.enable_grad():
        return explainer.explain(torch.cat(xs), methods=rows[0].instances, targets=targets)


def share_result(result: ExplanationResult, rows: Sequence[RowState]) -> None:
    """Give each row of the chunk its slice of ``result``: its resolved targets and where they start."""
    offset = 0
    for row in rows:
        row.result, row.offset = result, offset
        row.targets = list(result.targets[offset : offset + len(row.targets)])  # the top finding, resolved
        if row.probabilities is None:  # findings from the explanation's own forward pass
            row.probabilities = result.probabilities[offset : offset + 1]
        offset += len(row.targets)

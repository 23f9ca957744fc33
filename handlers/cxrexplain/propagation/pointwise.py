"""1x1 convolutions, the bulk of ResNet's and DenseNet's propagation work: oneDNN's convolution or matrix
products, whichever is faster for the call shape (:func:`fastest` times both the first time a shape comes)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch


def pointwise_mm(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
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

"""Cost-sensitive multi-label losses of [Khakzar2022], eqs. 1-2.

Every loss is the weighted binary cross-entropy of [Khakzar2022] eq. 1, applied per class m (index omitted in the
paper):

    L = - sum_i [ w+_i y_i log p_i + w-_i (1 - y_i) log(1 - p_i) ]

with the weights of [Khakzar2022] eq. 2:

* BCE:      w+ = w- = 1
* WBCE:     w+ = N- / (N+ + N-),  w- = N+ / (N+ + N-)
* Focal:    w+ = alpha (1 - p)^gamma,  w- = (1 - alpha) p^gamma
* CB-Focal: w+ = (1 - beta) / (1 - beta^N+) (1 - p)^gamma,  w- = (1 - beta) / (1 - beta^N-) p^gamma

N+ and N- count the positive and negative training samples of each class. The modulating factors of the focal
losses are part of the graph (gradients flow through them), as in Lin et al. The paper sums over samples;
``reduction="mean"`` (default) divides that sum by the number of entries (samples x classes) so the learning
rate does not depend on the batch size, ``"sum"`` keeps eq. 1 as printed, ``"none"`` returns (N, M).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

Reduction = Literal["mean", "sum", "none"]
LOSSES = ("bce", "wbce", "focal", "cb_focal")


def _reduce(loss: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction is 'mean', 'sum' or 'none', got {reduction!r}")


class WeightedBCE(nn.Module):
    """[Khakzar2022] eq. 1 with per-sample, per-class weights ``w+`` and ``w-`` given by :meth:`weights`.

    Subclasses override :meth:`weights`; this class alone is plain BCE (w+ = w- = 1). Inputs are logits; the
    log-probabilities come from ``logsigmoid`` so large logits do not overflow.
    """

    def __init__(self, reduction: Reduction = "mean"):
        super().__init__()
        self.reduction: Reduction = reduction

    def weights(self, p: torch.Tensor) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        """(w+, w-) for probabilities ``p``; broadcastable to ``p``."""
        return 1.0, 1.0  # BCE, [Khakzar2022] eq. 2

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.shape != targets.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ in shape")
        targets = targets.to(logits.dtype)
        w_pos, w_neg = self.weights(torch.sigmoid(logits))
        log_p, log_1mp = F.logsigmoid(logits), F.logsigmoid(-logits)
        loss = -(w_pos * targets * log_p + w_neg * (1.0 - targets) * log_1mp)  # [Khakzar2022] eq. 1
        return _reduce(loss, self.reduction)


class BCE(WeightedBCE):
    """Binary cross-entropy: w+ = w- = 1 ([Khakzar2022] eq. 2)."""


class _CountWeighted(WeightedBCE):
    """A loss whose weights depend on each class's positive and negative sample counts N+ and N-."""

    n_pos: torch.Tensor
    n_neg: torch.Tensor

    def __init__(self, n_pos: torch.Tensor, n_neg: torch.Tensor, reduction: Reduction = "mean"):
        super().__init__(reduction)
        n_pos, n_neg = torch.as_tensor(n_pos, dtype=torch.float64), torch.as_tensor(n_neg, dtype=torch.float64)
        if n_pos.shape != n_neg.shape or n_pos.ndim != 1:
            raise ValueError("N+ and N- are (M,) vectors, one count per class")
        if (n_pos < 0).any() or (n_neg < 0).any() or ((n_pos + n_neg) <= 0).any():
            raise ValueError("sample counts must be non-negative with at least one sample per class")
        self.register_buffer("n_pos", n_pos)
        self.register_buffer("n_neg", n_neg)


class WBCE(_CountWeighted):
    """Weighted BCE: w+ = N- / (N+ + N-), w- = N+ / (N+ + N-) ([Khakzar2022] eq. 2)."""

    def weights(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        total = self.n_pos + self.n_neg
        return (self.n_neg / total).to(p.dtype), (self.n_pos / total).to(p.dtype)  # [Khakzar2022] eq. 2, WBCE


class Focal(WeightedBCE):
    """Focal loss: w+ = alpha (1 - p)^gamma, w- = (1 - alpha) p^gamma ([Khakzar2022] eq. 2; Lin et al.)."""

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, reduction: Reduction = "mean"):
        super().__init__(reduction)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"focal alpha is in [0, 1], got {alpha}")
        if gamma < 0:
            raise ValueError(f"focal gamma is >= 0, got {gamma}")
        self.alpha, self.gamma = float(alpha), float(gamma)

    def weights(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.alpha * (1.0 - p) ** self.gamma, (1.0 - self.alpha) * p**self.gamma  # [Khakzar2022] eq. 2, Focal


class CBFocal(_CountWeighted):
    """Class-balanced focal loss: w+ = (1 - beta) / (1 - beta^N+) (1 - p)^gamma, and likewise for w- with N-
    ([Khakzar2022] eq. 2; Cui et al.: the inverse effective number of samples)."""

    cb_pos: torch.Tensor
    cb_neg: torch.Tensor

    def __init__(self, n_pos: torch.Tensor, n_neg: torch.Tensor, beta: float = 0.9999, gamma: float = 2.0,
                 reduction: Reduction = "mean"):
        super().__init__(n_pos, n_neg, reduction)
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"class-balanced beta is in [0, 1), got {beta}")
        if gamma < 0:
            raise ValueError(f"focal gamma is >= 0, got {gamma}")
        self.beta, self.gamma = float(beta), float(gamma)
        # Inverse effective number (1 - beta) / (1 - beta^N); a class with N = 0 never contributes that term.
        self.register_buffer("cb_pos", self._inverse_effective_number(self.n_pos))
        self.register_buffer("cb_neg", self._inverse_effective_number(self.n_neg))

    def _inverse_effective_number(self, n: torch.Tensor) -> torch.Tensor:
        denom = 1.0 - torch.pow(torch.full_like(n, self.beta), n)
        return torch.where(n > 0, (1.0 - self.beta) / denom.clamp_min(1e-300), torch.zeros_like(n))

    def weights(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w_pos = self.cb_pos.to(p.dtype) * (1.0 - p) ** self.gamma  # [Khakzar2022] eq. 2, CB-Focal
        w_neg = self.cb_neg.to(p.dtype) * p**self.gamma
        return w_pos, w_neg


def label_counts(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N+, N-) per class from an (N, M) 0/1 label matrix."""
    labels = torch.as_tensor(labels, dtype=torch.float64)
    if labels.ndim != 2:
        raise ValueError(f"labels are an (N, M) matrix, got shape {tuple(labels.shape)}")
    n_pos = (labels > 0.5).sum(dim=0).to(torch.float64)
    return n_pos, labels.shape[0] - n_pos


def make_loss(name: str, label_frequencies: torch.Tensor | None = None, **params: object) -> nn.Module:
    """A loss of [Khakzar2022] eq. 2 by name.

    Parameters
    ----------
    name
        ``"bce"``, ``"wbce"``, ``"focal"`` or ``"cb_focal"``.
    label_frequencies
        Needed by ``wbce`` and ``cb_focal``: either the (N, M) training label matrix, or an (M,) vector of
        positive fractions together with ``num_samples`` (N).
    **params
        ``alpha``, ``gamma`` (focal), ``beta``, ``gamma`` (cb_focal), ``num_samples``, ``reduction``.
        Defaults are [Khakzar2022]'s: alpha 0.25, gamma 2, beta 0.9999.

    Returns
    -------
    nn.Module
        ``loss(logits, targets)`` with logits and 0/1 targets of shape (N, M).
    """
    key = name.lower().replace("-", "_")
    if key not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of: {', '.join(LOSSES)}")
    reduction = params.pop("reduction", "mean")
    num_samples = params.pop("num_samples", None)
    if key == "bce":
        module: nn.Module = BCE(reduction=reduction)  # type: ignore[arg-type]
    elif key == "focal":
        module = Focal(reduction=reduction, **params)  # type: ignore[arg-type]
        params = {}
    else:
        if label_frequencies is None:
            raise ValueError(f"loss {name!r} weights classes by their counts: pass label_frequencies "
                             "(the training label matrix, or positive fractions with num_samples)")
        n_pos, n_neg = _counts(torch.as_tensor(label_frequencies), num_samples)
        if key == "wbce":
            module = WBCE(n_pos, n_neg, reduction=reduction)  # type: ignore[arg-type]
        else:
            module = CBFocal(n_pos, n_neg, reduction=reduction, **params)  # type: ignore[arg-type]
            params = {}
    if params:
        raise ValueError(f"loss {name!r} takes no options {sorted(params)}")
    return module


def _counts(freq: torch.Tensor, num_samples: object) -> tuple[torch.Tensor, torch.Tensor]:
    freq = freq.to(torch.float64)
    if freq.ndim == 1:
        if num_samples is None:
            raise ValueError("label_frequencies given as positive fractions needs num_samples (the training "
                             "set size) to turn them into counts N+ and N-")
        if ((freq < 0) | (freq > 1)).any():
            raise ValueError("positive fractions are in [0, 1]")
        n = float(num_samples)  # type: ignore[arg-type]
        return freq * n, (1.0 - freq) * n
    if freq.ndim == 2:
        return label_counts(freq)
    raise ValueError(f"label_frequencies has shape {tuple(freq.shape)}; expected (N, M) labels or (M,) fractions")

"""Matching a checkpoint's parameter names to a model's, and loading it with errors that say what differs.

Files found in the wild name parameters in several ways: DataParallel's ``module.`` prefixes, torchvision < 0.3
DenseNet names (``norm.1``), CheXNet's wrapper (``densenet121.features...``) and its ``Sequential(Linear,
Sigmoid)`` head. :func:`fit_keys` undoes those; :func:`load_into` loads strictly and explains a mismatch.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import WeightsError
from .architectures import ARCHITECTURES, Architecture

_CHEXNET_ERA = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))\.([12])\.")


def _normalize_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Undo DataParallel's ``module.`` prefixes and old DenseNet names (``norm.1`` -> ``norm1``)."""
    out = {}
    for key, value in state.items():
        while key.startswith("module."):
            key = key[len("module."):]
        key = key.replace(".module.", ".")
        out[_CHEXNET_ERA.sub(r"\1\2.", key)] = value
    return out


def fit_keys(
    state: dict[str, torch.Tensor], target: Mapping[str, Any], head: str | None
) -> dict[str, torch.Tensor]:
    """Match a file's names to the model's.

    Names that already fit are kept as they are. Otherwise: DataParallel's ``module.`` prefixes and old
    DenseNet names are undone, a wrapper level all keys share is dropped (CheXNet's code keeps torchvision's
    DenseNet in ``self.densenet121``) and a ``Sequential(Linear, Sigmoid)`` head is read as its Linear.
    """
    needed = {key for key in target if not key.endswith("num_batches_tracked")}
    if needed <= set(state) <= set(target):
        return state
    state = _normalize_keys(state)
    for _ in range(2):
        if set(state) & set(target):
            break
        roots = {key.split(".", 1)[0] for key in state}
        if len(roots) != 1 or not all("." in key for key in state):
            break
        state = {key.split(".", 1)[1]: value for key, value in state.items()}
    if head and f"{head}.weight" in target and f"{head}.weight" not in state and f"{head}.0.weight" in state:
        prefix = f"{head}.0."
        state = {(head + "." + key[len(prefix):] if key.startswith(prefix) else key): value
                 for key, value in state.items() if key.startswith(prefix) or not key.startswith(head + ".")}
    return state


def _first(keys: Sequence[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def load_into(model: nn.Module, state: dict[str, torch.Tensor], path: Path, arch_name: str) -> None:
    """Load ``state`` into ``model`` strictly; a :class:`WeightsError` lists missing, unexpected and
    mis-shaped keys and what to check (``path`` and ``arch_name`` only name them in the message)."""
    own = model.state_dict()
    # BatchNorm fills a missing num_batches_tracked itself (files from torch < 0.4.1 have none).
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_first(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_first(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es): {_first(shapes, 3)}")
        raise WeightsError(
            f"{path} does not fit architecture {arch_name!r}: {'; '.join(parts)}. Check the architecture "
            "name, that labels= (or the sidecar) gives as many labels as the file has outputs, and "
            "input_spec as many channels as its first convolution takes")
    model.load_state_dict(state, strict=False)


def head_outputs(state: Mapping[str, torch.Tensor], head: str) -> int | None:
    """Outputs of the linear layer ``head`` as the file has it, if it has it."""
    weight = state.get(f"{head}.weight")
    return int(weight.shape[0]) if weight is not None and weight.ndim == 2 else None


def stem_channels(state: Mapping[str, torch.Tensor], stem: str) -> int | None:
    """Input channels of the first convolution ``stem`` as the file has it, if it has it."""
    weight = state.get(f"{stem}.weight")
    return int(weight.shape[1]) if weight is not None and weight.ndim == 4 else None



def expected_keys(arch: Architecture) -> dict[str, None]:
    """The parameter names of an architecture, without allocating it."""
    return dict.fromkeys(_state_keys(arch.name))


@functools.cache
def _state_keys(name: str) -> tuple[str, ...]:
    arch = ARCHITECTURES[name]
    with torch.device("meta"):  # no memory, no initialization cost
        model = arch.build(1, arch.in_channels)
    return tuple(model.state_dict())

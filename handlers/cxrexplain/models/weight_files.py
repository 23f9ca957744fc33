"""Reading and writing weight files: local paths only, pickles refused unless allowed, metadata in a sidecar.

A weights file ``foo.pt`` may hold a state dict, a checkpoint dict holding one (under ``state_dict``,
``model_state_dict`` or ``model``) or, with ``allow_pickle=True``, a pickled module. Its metadata (labels,
input spec, operating points, CAM layer, version, the file's SHA-256) is plain JSON in ``foo.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import WeightsError

logger = logging.getLogger(__name__)

SIDECAR_FORMAT = "cxrexplain-weights/1"
_CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model")


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, read in chunks (weight files can be larger than one wants in memory twice)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def sidecar_path(weights: str | Path) -> Path:
    """``foo.pt`` -> ``foo.json``: where a weights file's metadata lives."""
    return Path(weights).with_suffix(".json")


def read_sidecar(weights: Path) -> dict[str, Any]:
    path = sidecar_path(weights)
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"cannot read the metadata sidecar {path} ({exc}); fix or remove it") from exc
    if not isinstance(meta, dict):
        raise WeightsError(f"the metadata sidecar {path} must hold a JSON object")
    return meta


def _load_object(path: Path, arch_name: str, map_location: Any, allow_pickle: bool) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):
            raise WeightsError(f"{path} (for architecture {arch_name!r}) is not a readable PyTorch file "
                               f"({exc}); it may be truncated or corrupt: copy it again") from exc
        if not allow_pickle:
            raise WeightsError(
                f"{path} (for architecture {arch_name!r}) holds pickled Python objects (a whole module or a "
                "checkpoint with non-tensor entries), and unpickling runs code from the file, so it was not "
                "loaded. If you trust the file, pass allow_pickle=True; better, convert it once to a plain "
                "state dict: python -c \"import torch; m = torch.load("
                f"'{path}', weights_only=False); m = m.state_dict() if hasattr(m, 'state_dict') else m; "
                f"torch.save(m, '{path.with_suffix('.state.pt')}')\""
            ) from exc
        logger.warning("unpickling %s with weights_only=False because allow_pickle=True", path)
        try:
            return torch.load(path, map_location=map_location, weights_only=False)
        except Exception as exc2:  # unpickling can fail in any way (missing classes, corrupt data)
            raise WeightsError(f"cannot unpickle {path} for architecture {arch_name!r}: {exc2}") from exc2
    except Exception as exc:  # torch raises RuntimeError, EOFError, ... for damaged archives
        raise WeightsError(f"{path} (for architecture {arch_name!r}) is not a readable PyTorch file ({exc}); "
                           "it may be truncated or corrupt: copy it again") from exc


def _unwrap(obj: Any, path: Path, arch_name: str) -> tuple[dict[str, torch.Tensor], nn.Module | None]:
    """The state dict inside whatever the file holds, and the module itself when it is a pickled module."""
    module = None
    if isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in _CHECKPOINT_KEYS if k in obj), None)
        if inner is None:
            raise WeightsError(f"{path} holds a dict without tensors at the top level nor any of the keys "
                               f"{', '.join(_CHECKPOINT_KEYS)} (keys: {', '.join(map(str, list(obj)[:8]))}); "
                               f"save model.state_dict() of a {arch_name!r} model instead")
        obj = inner
    if isinstance(obj, nn.Module):
        module, obj = obj, obj.state_dict()
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path} holds a {type(obj).__name__}, not a state dict, checkpoint or module; "
                           f"save model.state_dict() of a {arch_name!r} model instead")
    return {str(k): v for k, v in obj.items()}, module


@dataclass
class WeightsFile:
    """What :func:`read_weights` found: the state dict, the module when the file pickled one, the sidecar's
    metadata and the file's SHA-256 (all ``None`` but an empty ``meta`` when no file was given)."""

    path: Path | None = None
    state: dict[str, torch.Tensor] | None = None
    module: nn.Module | None = None
    meta: dict[str, Any] | None = None
    sha256: str | None = None


def read_weights(
    weights: str | Path | None, arch_name: str, map_location: Any, allow_pickle: bool
) -> WeightsFile:
    """Read a local weights file and its sidecar; ``arch_name`` only names the architecture in errors.

    Raises :class:`~cxrexplain.errors.WeightsError` for a missing, unreadable or refused (pickled) file and for
    a sidecar written for another file.
    """
    if weights is None:
        return WeightsFile(meta={})
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path} (expected for architecture {arch_name!r}). "
                           "Nothing is downloaded at run time: copy the file there or pass the right path")
    meta = read_sidecar(path)
    sha = file_sha256(path)
    if meta.get("sha256") and meta["sha256"] != sha:
        raise WeightsError(f"{sidecar_path(path)} was written for another file (sha256 "
                           f"{meta['sha256'][:12]}..., this file {sha[:12]}...); re-save the weights with "
                           "save_classifier or fix the sidecar")
    obj = _load_object(path, arch_name, map_location, allow_pickle)
    state, module = _unwrap(obj, path, arch_name)
    return WeightsFile(path, state, module, meta, sha)


def write_sidecar(path: Path, meta: dict[str, Any]) -> None:
    """Write ``meta`` as the sidecar of the weights file ``path``; NaN (JSON has none) becomes ``null``."""

    def plain(value: Any) -> Any:
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    sidecar_path(path).write_text(json.dumps(plain(meta), indent=2) + "\n")

"""An archive's ``serve.json``: which files to load, the cost caps, the default methods, torch threads, and the
dissection table the ``semantic`` method reads."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cxrexplain.semantic import DissectionTable

from .caps import CostCaps


def load_serve_config(model_dir: str | Path) -> dict[str, Any]:
    """``serve.json`` of an archive (empty when absent)."""
    path = Path(model_dir) / "serve.json"
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


def caps_from_config(config: Mapping[str, Any]) -> CostCaps:
    """:class:`CostCaps` from ``serve.json``'s ``caps`` and the ``CXREXPLAIN_<CAP>`` environment."""
    return CostCaps.from_mapping(config.get("caps") or {}, os.environ)


def load_dissection_table(model_dir: str | Path, config: Mapping[str, Any]) -> DissectionTable | None:
    """The table ``serve.json``'s ``semantic.table`` names (``None`` when the archive has none); raises
    ``ValueError`` or ``OSError`` saying which file is wrong."""
    semantic = config.get("semantic")
    if not semantic:
        return None
    path = Path(model_dir) / str(semantic.get("table", "dissection.json"))
    try:
        return DissectionTable.from_dict(json.loads(path.read_text()))
    except ValueError as exc:
        raise ValueError(f"{path.name}: {exc}") from exc

"""An archive's ``serve.json``: which files to load, the cost caps, the default methods, torch threads."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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

"""Stage an archive's files, run torch-model-archiver, and move the .mar into the store atomically."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HANDLER = ROOT / "handlers" / "cxrexplain_handler.py"
# What serving runs, and nothing else: the engine, image input, the serving layer and the shared render package.
# The lab (training, phantoms, evaluation) is never shipped.
SHIPPED = (ROOT / "handlers" / "cxrexplain", ROOT / "handlers" / "cxrexplain_imageio",
           ROOT / "handlers" / "cxrexplain_serving", ROOT / "client" / "cxrexplain_render")

# File names inside an archive (the handler reads the same names).
CLASSIFIER_WEIGHTS = "classifier.pt"
AUTOENCODER_WEIGHTS = "autoencoder.pt"
ONNX_MODEL = "model.onnx"
SERVE_CONFIG = "serve.json"
DISSECTION_TABLE = "dissection.json"  # the semantic method's table (export.dissection_table)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def stage_packages(dest: Path) -> None:
    """Copy the shipped packages without caches: they become importable from the archive root."""
    for package in SHIPPED:
        shutil.copytree(package, dest / package.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def build_mar(name: str, version: str, staging: Path, store: Path, config: Path) -> Path:
    """Run torch-model-archiver over ``staging`` and move the result to ``store/<name>.mar``.

    The archive is written in a temporary folder inside the store first, so an interrupted export never
    leaves a half-written ``.mar`` where TorchServe would load it.
    """
    store.mkdir(parents=True, exist_ok=True)
    archiver = Path(sys.executable).with_name("torch-model-archiver")
    with tempfile.TemporaryDirectory(dir=store, prefix=".export-") as tmp:
        subprocess.run(
            [str(archiver), "--model-name", name, "--version", version, "--handler", str(HANDLER),
             "--extra-files", str(staging), "--config-file", str(config), "--export-path", tmp,
             "--archive-format", "default", "--force"],
            check=True, capture_output=True, text=True,
        )
        built = Path(tmp) / f"{name}.mar"
        final = store / f"{name}.mar"
        built.replace(final)
    return final


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")

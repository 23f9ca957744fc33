"""Helpers for the tests that start a real TorchServe: archives built by the exporter from saved weights, PNG
bytes of a phantom, and the project's response parsed whatever its content type.

A plain module beside ``conftest.py`` (``tests/`` is on the path): ``from served import build_store, png_bytes``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml
from google.protobuf import json_format
from PIL import Image

from cxrexplain.models import save_autoencoder, save_classifier
from cxrexplain_client._proto import explain_pb2
from export import cli as export_cli


def png_bytes(image01: np.ndarray, bits: int = 8) -> bytes:
    """A unit-range image as PNG bytes, 8- or 16-bit grey."""
    buf = io.BytesIO()
    if bits == 16:
        Image.fromarray((image01 * 65535).astype(np.uint16)).save(buf, format="PNG")
    else:
        Image.fromarray((image01 * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def build_store(root: Path, models: list[dict[str, Any]], classifier=None, autoencoder=None) -> Path:
    """Save the weights the way users save theirs (``weights/clf.pt``, ``weights/ae.pt``), write ``models`` as a
    recipe and run ``cxrexplain-export`` on it; returns the model store."""
    if classifier is not None:
        save_classifier(classifier, root / "weights" / "clf.pt")
    if autoencoder is not None:
        save_autoencoder(autoencoder, root / "weights" / "ae.pt")
    (root / "recipe.yaml").write_text(yaml.safe_dump({"models": models}))
    store = root / "model_store"
    assert export_cli.main([str(root / "recipe.yaml"), "--store", str(store)]) == 0
    return store


def parse(response: httpx.Response) -> explain_pb2.ExplainResponse:
    """The project's response message from a REST answer, protobuf or JSON."""
    msg = explain_pb2.ExplainResponse()
    if response.headers.get("content-type", "").startswith("application/x-protobuf"):
        msg.ParseFromString(response.content)
    else:
        json_format.Parse(response.text, msg)
    return msg

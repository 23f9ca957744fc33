"""The model under evaluation: a bundle loaded here (weights + architecture + labels, as ``load_classifier`` takes
them) or an archive on a running server reached through the SDK. Both answer the same question, "the maps of
these methods for these findings of this image, at the model's input size, and where that square lies".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrexplain import ClassifierBundle, Explainer
from cxrexplain.errors import CxrExplainError
from cxrexplain.methods.gradcam import resolve_layer
from cxrexplain.models import load_autoencoder, load_classifier
from cxrexplain.preprocess import Geometry, to_model_input
from cxrexplain.semantic import find_layer, unit_layer
from cxrexplain_imageio import decode_image
from cxrexplain_render import GeometryLike

from .data import EvalImage

Maps = dict[str, dict[str, np.ndarray]]  # finding -> method -> (S, S) raw map


class Unreadable(Exception):
    """This image cannot be explained (decoding or the server refused it); it is skipped and counted."""


class NeedsInsides(Exception):
    """A subcommand needs the model's parameters and activations, which a server does not expose."""


def prepare(bundle: ClassifierBundle, item: EvalImage) -> tuple[torch.Tensor, Geometry]:
    """Model input (1, C, S, S) of an image and its geometry, as the server would preprocess it."""
    spec = bundle.input_spec
    if item.pixels is not None:
        return to_model_input(item.pixels, spec)
    try:
        decoded = decode_image(item.read_bytes(), target_size=spec.size)
    except (CxrExplainError, OSError) as exc:
        raise Unreadable(f"{item.name}: {exc}") from exc
    return to_model_input(decoded.pixels, spec, original_size=(decoded.height, decoded.width),
                          reduction=decoded.reduction)


@dataclass
class LocalModel:
    """A bundle explained in this process; the subcommands that need the model's insides use ``explainer``."""

    explainer: Explainer
    layer: str | None = None  # a module path or fx node; None: the CAM layer

    @property
    def bundle(self) -> ClassifierBundle:
        return self.explainer.bundle

    @property
    def labels(self) -> list[str]:
        return list(self.bundle.labels)

    @property
    def size(self) -> int:
        return int(self.bundle.input_spec.size)

    def layer_node(self) -> str:
        """The fx node ``--layer`` names (default: the CAM layer)."""
        return resolve_layer(self.bundle.traced, self.layer) if self.layer else self.bundle.cam_node

    def unit_layer(self) -> str:
        """The module path (in ``model.named_modules()``) the unit analyses hook: ``--layer`` when it names a
        module; for an fx node, or by default the CAM layer, the module whose output that node reads (CAM's node
        is often a functional ReLU after the module, ``features.norm5`` in a DenseNet)."""
        if self.layer and self.layer not in self.bundle.traced.nodes:
            find_layer(self.bundle.module, self.layer)  # an unknown path raises, naming the model's modules
            return self.layer
        return unit_layer(self.bundle, self.layer_node())

    def method_options(self) -> dict[str, dict[str, Any]]:
        return {"gradcam": {"layer": self.layer_node()}, "integrated_gradients": {"steps": 32}}

    def prepare(self, item: EvalImage) -> tuple[torch.Tensor, Geometry]:
        return prepare(self.bundle, item)

    def maps(self, item: EvalImage, findings: Sequence[str], methods: Sequence[str]) -> tuple[GeometryLike, Maps]:
        x, geometry = self.prepare(item)
        result = self.explainer.explain(x.expand(len(findings), -1, -1, -1), methods=list(methods),
                                        targets=list(findings), options=self.method_options())
        return geometry, {f: {m: result.heatmaps[m][i].numpy() for m in methods} for i, f in enumerate(findings)}


@dataclass
class ServedModel:
    """An archive on a running server, explained through :class:`cxrexplain_client.ExplainClient`."""

    client: Any  # ExplainClient: imported lazily so a local run needs no client
    name: str
    labels: list[str]
    size: int
    layer: str | None = None

    def maps(self, item: EvalImage, findings: Sequence[str], methods: Sequence[str]) -> tuple[GeometryLike, Maps]:
        from cxrexplain_client import InvalidInput

        options: dict[str, Any] = {"heatmap_dtype": "float32"}
        if self.layer and "gradcam" in methods:
            options["method_options"] = {"gradcam": {"layer": self.layer}}
        try:
            ex = self.client.explain(item.read_bytes(), self.name, methods=list(methods), targets=list(findings),
                                     **options)
        except InvalidInput as exc:
            raise Unreadable(f"{item.name}: the server refused it: {exc}") from exc
        out = {f: {m: np.asarray(ex.result(f).heatmaps[m], dtype=np.float64) for m in methods} for f in findings}
        return ex.result(findings[0]).geometry, out


Model = LocalModel | ServedModel


def load_model(architecture: str | None, weights: Path | None, labels: Sequence[str] | None,
               autoencoder: Path | None = None, device: str | None = None, layer: str | None = None,
               url: str | None = None, name: str | None = None, token_file: Path | None = None) -> Model:
    """The model the command line names: ``--weights`` (with ``--architecture``/``--labels`` or the JSON sidecar)
    or ``--url`` + ``--model``."""
    if url:
        if not name:
            raise ValueError("--url needs --model NAME: the archive's registered name")
        from cxrexplain_client import ExplainClient

        client = ExplainClient(url, token_file=token_file, timeout=600)
        desc = client.describe(name)
        return ServedModel(client, name, list(desc.labels), int(desc.input_spec.get("size", 224)), layer)
    if weights is None and architecture is None:
        raise ValueError("name the model: --weights W [--architecture A --labels L1,L2,...], or --url U --model NAME")
    bundle = load_classifier(architecture, weights=weights, labels=list(labels) if labels else None)
    ae = load_autoencoder(None, weights=autoencoder) if autoencoder else None
    model = LocalModel(Explainer(bundle, autoencoder=ae, device=device), layer)
    model.layer_node()  # an unknown --layer fails here, before any image is read
    return model


def require_local(model: Model, command: str) -> LocalModel:
    """``model`` when it is loaded here; otherwise a :class:`NeedsInsides` saying what to pass."""
    if isinstance(model, LocalModel):
        return model
    raise NeedsInsides(f"{command} needs the model's insides (its parameters and layer activations), which a server "
                       "does not expose: give the bundle instead, --weights W [--architecture A --labels ...]")

"""Model bundles: a module plus everything needed to use it without guessing (labels, input spec, ...)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, cast

import torch
import torch.nn as nn

from .errors import UnknownLabel
from .graph import TracedModel
from .spec import TORCHVISION, InputSpec
from .xrv_densenet import op_norm


@dataclass
class ClassifierBundle:
    """A classifier and its metadata.

    ``op_thresholds`` are the per-label operating points (probability above which a finding is called
    positive; 0.5 when the weights do not ship any). ``cam_layer`` names the fx node CAM and Grad-CAM read;
    ``None`` means "the map pooled by the global-average-pool head", found by tracing.

    ``op_norm``: the model's published output is torchxrayvision's ``op_norm(σ(logit), op_thresholds)`` (each
    operating point moved to 0.5; :func:`~cxrexplain.xrv_densenet.op_norm`), not σ(logit). True for
    torchxrayvision weights (``xrv-densenet121``, or a file with an ``op_threshs`` buffer); False for every
    other model, whose operating points (e.g. the demo's Youden-J points) only mark positives. Latent Shift
    works in :meth:`outputs`' units ([Cohen2021]'s f); findings report σ(logit) against ``op_thresholds`` for
    every model (the same positives: ``op_norm`` is increasing and maps t to 0.5).
    """

    module: nn.Module
    labels: list[str]
    input_spec: InputSpec = TORCHVISION
    architecture: str = "custom"
    op_thresholds: list[float] | None = None
    cam_layer: str | None = None
    version: str = "0"
    sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    op_norm: bool = False

    def __post_init__(self) -> None:
        self.module.eval()
        if self.op_thresholds is None:
            self.op_thresholds = [0.5] * len(self.labels)
        if len(self.op_thresholds) != len(self.labels):
            raise ValueError(f"{len(self.op_thresholds)} operating points for {len(self.labels)} labels")

    def outputs(self, logits: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The model's published output from its logits, differentiably: σ(logit), or with ``op_norm``
        torchxrayvision's ``op_norm(σ(logit), t)``.

        ``labels``: None for (N, L) logits; else an (N,) index of the label each entry of (N,) ``logits`` is.
        """
        p = torch.sigmoid(logits)
        if not self.op_norm:
            return p
        t = torch.tensor(self.op_thresholds or [0.5] * len(self.labels), device=logits.device)
        return op_norm(p, t if labels is None else t[labels])

    @cached_property
    def traced(self) -> TracedModel:
        return TracedModel(self.module)

    @property
    def cam_node(self) -> str:
        """The fx node CAM reads: ``cam_layer``, else the map the GAP + linear head pools (raises
        :class:`UnsupportedModel` for other heads)."""
        return self.cam_layer or self.traced.cam_head().feature_node

    def label_index(self, target: str | int) -> int:
        """Index of a label given by name (case-insensitive) or index; raises :class:`UnknownLabel`."""
        if isinstance(target, int) or (isinstance(target, str) and target.lstrip("-").isdigit()):
            index = int(target)
            if 0 <= index < len(self.labels):
                return index
            raise UnknownLabel(f"label index {index} out of range: this model has {len(self.labels)} labels")
        lowered = {name.lower(): i for i, name in enumerate(self.labels)}
        key = str(target).strip().lower()
        if key in lowered:
            return lowered[key]
        raise UnknownLabel(f"unknown label {target!r}; this model's labels are: {', '.join(self.labels)}")


@dataclass
class AutoencoderBundle:
    """An autoencoder with ``encode(x) -> z`` and ``decode(z) -> x`` in its own input space."""

    module: nn.Module
    input_spec: InputSpec
    architecture: str = "custom"
    version: str = "0"
    sha256: str | None = None

    def __post_init__(self) -> None:
        require_encode_decode(self.module)
        self.module.eval()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """E(x) in the autoencoder's own input space."""
        return cast(Callable[[torch.Tensor], torch.Tensor], self.module.encode)(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """D(z), in the autoencoder's own input space."""
        return cast(Callable[[torch.Tensor], torch.Tensor], self.module.decode)(z)


def require_encode_decode(module: nn.Module) -> None:
    """Raise a :class:`TypeError` saying what to pass unless ``module`` has callable ``encode`` and ``decode``."""
    missing = [name for name in ("encode", "decode") if not callable(getattr(module, name, None))]
    if missing:
        raise TypeError(
            f"an autoencoder needs callable encode(x) -> z and decode(z) -> x; {type(module).__name__} has no "
            f"{' and no '.join(repr(name) for name in missing)}: pass a module with both, or an AutoencoderBundle "
            "from load_autoencoder")

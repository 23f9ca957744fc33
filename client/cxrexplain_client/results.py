"""What the client returns: plain dataclasses with numpy arrays, built from the wire messages by ``codec``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

import cxrexplain_render as render

from .display import to_display_image

if TYPE_CHECKING:
    from ._proto import explain_pb2


@dataclass(frozen=True)
class Finding:
    """One label's prediction: ``positive`` when ``probability`` is above the label's operating point."""

    label: str
    probability: float
    operating_point: float
    positive: bool


@dataclass(frozen=True)
class Geometry:
    """Where the model's square input lies in the original image (centre-crop square, in original pixels)."""

    original_height: int
    original_width: int
    crop_top: int
    crop_left: int
    crop_size: int
    model_size: int


@dataclass
class LatentShiftResult:
    """Latent Shift counterfactual for one target: frames (K, H, W) in [0, 1] display space, one lambda and
    one target probability per frame, and the autoencoder's reconstruction gap f(x) - f(D(E(x)))."""

    target: str
    frames: np.ndarray
    lambdas: np.ndarray
    frame_probabilities: np.ndarray
    reconstruction_gap: float
    map_kind: str = ""
    direction: str = ""
    upper_bound_reached: bool = True
    gif: bytes | None = None

    def to_gif(self, duration_ms: int = 120) -> bytes:
        """The animation as GIF bytes (the server's own GIF when it sent one)."""
        if self.gif:
            return self.gif
        return render.frames_to_gif(self.frames, duration_ms=duration_ms)

    def save_gif(self, path: str | os.PathLike[str], duration_ms: int = 120) -> Path:
        """Write the frames as an animated GIF and return the path."""
        out = Path(path)
        out.write_bytes(self.to_gif(duration_ms))
        return out


@dataclass(frozen=True)
class SemanticUnit:
    """One unit of the ``semantic`` answer: its channel ``unit`` in the layer, its contribution ``score`` to
    the target, the ``concept`` the archive's dissection labels it by with that ``iou`` (``detector``: at
    least the table's threshold, 0.04), and its (H, W) ``map`` divided by its maximum, at the input size."""

    unit: int
    score: float
    concept: str
    iou: float
    detector: bool
    map: np.ndarray


@dataclass
class SemanticResult:
    """The ``semantic`` method's answer for one target: the top units of ``layer``, highest score first."""

    target: str
    layer: str
    units: list[SemanticUnit]


@dataclass
class TargetResult:
    """Everything explained for one target of one image.

    ``heatmaps[method]`` is an (H, W) float32 map at the model's input resolution: raw and signed for
    ``array`` responses, display-normalized in [0, 1] for ``png`` responses (``normalized`` is then True).
    ``semantic`` holds the ``semantic`` method's units (their concepts, IoUs and maps) when it was asked for.
    """

    target: str
    heatmaps: dict[str, np.ndarray] = field(default_factory=dict)
    latent_shift: LatentShiftResult | None = None
    geometry: Geometry | None = None
    semantic: SemanticResult | None = None
    normalized: dict[str, bool] = field(default_factory=dict)

    def overlay(self, method: str, image: Any, alpha: float = render.DEFAULT_ALPHA) -> Image.Image:
        """Colour overlay of ``heatmaps[method]`` on the original ``image``.

        Parameters
        ----------
        method
            Which heatmap to show.
        image
            The image that was explained: path, bytes, numpy array, PIL image or pydicom Dataset.
        alpha
            Opacity of the colour where the map is at its maximum; cold areas stay clear.

        Returns
        -------
        PIL.Image.Image
            RGB, the size of ``image``: :func:`cxrexplain_render.overlay` of the map through this result's
            geometry, the same picture the server's render path draws.
        """
        return render.overlay(
            to_display_image(image),
            self._heatmap(method),
            alpha=alpha,
            geometry=self.geometry,
            normalized=self.normalized.get(method, False),
        )

    def to_dicom(
        self, source_dataset: Any, method: str, alpha: float = render.DEFAULT_ALPHA, **kwargs: Any
    ) -> Any:
        """A derived Secondary Capture of ``method``'s overlay on the source image, in the source's study.

        Parameters
        ----------
        source_dataset
            The pydicom Dataset that was explained; the new instance joins its study and references it.
            Only Patient ID and Name are copied from it.
        method
            Which heatmap to show.
        alpha
            Overlay opacity.
        **kwargs
            Passed to :func:`cxrexplain_render.secondary_capture` (``series_number``, ``instance_number``,
            ``manufacturer``, ``burn_in``, ...).

        Returns
        -------
        pydicom.Dataset
            A ``highdicom.sc.SCImage``, DERIVED, "NOT FOR DIAGNOSTIC USE" burned in and in Image Comments.
            Needs the ``[dicom]`` extra: ``pip install 'cxrexplain-client[dicom]'``.
        """
        picture = self.overlay(method, source_dataset, alpha=alpha)
        return render.secondary_capture(
            source_dataset,
            picture,
            f"cxrexplain {method} {self.target}",
            derivation_description=f"Overlay of the {method} explanation heatmap for '{self.target}' on the "
            "source image",
            **kwargs,
        )

    def _heatmap(self, method: str) -> np.ndarray:
        if method in self.heatmaps:
            return self.heatmaps[method]
        if method == "latent_shift" and self.latent_shift is not None and len(self.latent_shift.frames):
            frames = self.latent_shift.frames
            return np.abs(frames - frames[0]).max(axis=0)  # the `max` map, when the server sent frames only
        raise KeyError(f"no '{method}' heatmap for target {self.target!r}; have {sorted(self.heatmaps)}")


@dataclass
class Explanation:
    """The answer for one image: findings, and per target the heatmaps and the counterfactual.

    Every response is marked ``not_for_diagnostic_use``.
    """

    request_id: str
    model_name: str
    model_version: str
    not_for_diagnostic_use: bool
    findings: list[Finding]
    targets: list[str]
    results: dict[str, TargetResult]
    geometry: Geometry | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    raw: explain_pb2.ExplainResponse | None = field(default=None, repr=False)

    @property
    def probabilities(self) -> dict[str, float]:
        """Label -> probability."""
        return {f.label: f.probability for f in self.findings}

    @property
    def positive(self) -> list[Finding]:
        """Findings above their operating points."""
        return [f for f in self.findings if f.positive]

    def result(self, target: str | None = None) -> TargetResult:
        """The result for ``target`` (the only one when there is just one)."""
        if target is None:
            if len(self.results) != 1:
                raise KeyError(f"name a target; this explanation has {sorted(self.results)}")
            return next(iter(self.results.values()))
        if target not in self.results:
            raise KeyError(f"no result for target {target!r}; have {sorted(self.results)}")
        return self.results[target]

    def overlay(
        self, method: str, image: Any, target: str | None = None, alpha: float = render.DEFAULT_ALPHA
    ) -> Image.Image:
        """Shortcut for ``result(target).overlay(method, image)``."""
        return self.result(target).overlay(method, image, alpha=alpha)

    def to_dicom(self, source_dataset: Any, method: str, target: str | None = None, **kwargs: Any) -> Any:
        """Shortcut for ``result(target).to_dicom(source_dataset, method)``."""
        return self.result(target).to_dicom(source_dataset, method, **kwargs)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary (no arrays): findings, targets, methods, latent-shift numbers."""
        out: dict[str, Any] = {
            "request_id": self.request_id,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "not_for_diagnostic_use": self.not_for_diagnostic_use,
            "findings": [f.__dict__ for f in self.findings],
            "targets": {},
            "timings_ms": dict(self.timings_ms),
        }
        for name, res in self.results.items():
            entry: dict[str, Any] = {"methods": sorted(res.heatmaps)}
            if res.latent_shift is not None:
                ls = res.latent_shift
                entry["latent_shift"] = {
                    "lambdas": [float(v) for v in ls.lambdas],
                    "frame_probabilities": [float(v) for v in ls.frame_probabilities],
                    "reconstruction_gap": float(ls.reconstruction_gap),
                    "frames": int(len(ls.frames)),
                    "upper_bound_reached": ls.upper_bound_reached,
                }
            if res.semantic is not None:
                units = [
                    {k: getattr(u, k) for k in ("unit", "score", "concept", "iou", "detector")}
                    for u in res.semantic.units
                ]
                entry["semantic"] = {"layer": res.semantic.layer, "units": units}
            out["targets"][name] = entry
        return out


@dataclass(frozen=True)
class ModelDescription:
    """What a model is and what it can do, as its handler describes it (``describe=true``)."""

    name: str
    version: str
    architecture: str
    labels: list[str]
    operating_points: list[float]
    input_spec: dict[str, Any]
    methods: list[str]
    has_autoencoder: bool
    intended_use: str
    weights_sha256: str


@dataclass(frozen=True)
class ModelInfo:
    """One registered model, as TorchServe's management API lists it."""

    name: str
    url: str


@dataclass(frozen=True)
class Health:
    """The server's ``/ping`` answer."""

    status: str

    @property
    def healthy(self) -> bool:
        return self.status.lower() == "healthy"


@dataclass
class StreamPart:
    """One message of a streamed explanation.

    ``kind`` is ``findings``, ``heatmap``, ``latent_shift``, ``semantic`` or ``end``; ``explanation`` is
    everything received so far (after the ``last`` part it equals the unary answer).
    """

    kind: str
    last: bool
    findings: list[Finding]
    heatmaps: list[tuple[str, str, np.ndarray]]  # (target, method, map)
    latent_shifts: list[LatentShiftResult]
    explanation: Explanation
    raw: explain_pb2.ExplainResponse | None = field(default=None, repr=False)

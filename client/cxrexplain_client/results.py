"""What the client returns: plain dataclasses with numpy arrays, built from the wire messages by ``codec``."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

import cxrexplain_render as render

from .display import to_display_image
from .errors import OutputNotWritable

if TYPE_CHECKING:
    from ._proto import explain_pb2

MAX_RECONSTRUCTION_GAP = 0.1
"""Largest |f(x) - f(D(E(x)))| (probability) up to which a latent-shift counterfactual is shown as trusted.

The server reports the gap ([Cohen2021] App. K) and sets no bound; this is the SDK's. When the autoencoder's
reconstruction alone moves the finding's probability by more than 0.1, the frames show the autoencoder's
failure as much as the classifier's evidence (the README's demo: +0.89). Pass another bound where a model
warrants it (``trusted(max_gap)``, the CLI's ``--max-reconstruction-gap``)."""


def safe_name(name: str) -> str:
    """A label or method as a file-name part: letters, digits, ``-_.`` kept, anything else ``_``."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


@contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Turn the OS's refusal to write ``path`` into :class:`OutputNotWritable`, saying what to do."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise OutputNotWritable(
            f"cannot write {path}: {reason}; pass an output folder you can write to", path=str(path)
        ) from exc


def _write(path: Path, writer: Callable[[Path], object]) -> Path:
    with _writing(path):
        writer(path)
    return path


def _folder(directory: str | os.PathLike[str]) -> Path:
    out = Path(directory)
    with _writing(out):
        out.mkdir(parents=True, exist_ok=True)
    return out


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
        gif = self.to_gif(duration_ms)
        return _write(Path(path), lambda p: p.write_bytes(gif))

    def trusted(self, max_gap: float = MAX_RECONSTRUCTION_GAP) -> bool:
        """Whether the reconstruction gap is within ``max_gap`` (see :data:`MAX_RECONSTRUCTION_GAP`)."""
        return abs(float(self.reconstruction_gap)) <= max_gap


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

    def save(
        self, directory: str | os.PathLike[str], image: Any, alpha: float = render.DEFAULT_ALPHA
    ) -> list[Path]:
        """Write this target's pictures and arrays into ``directory`` (created when missing).

        Parameters
        ----------
        directory
            Output folder.
        image
            The image that was explained (as for :meth:`overlay`).
        alpha
            Overlay opacity.

        Returns
        -------
        list[Path]
            ``<target>_<method>.png`` (the overlay, :meth:`overlay`'s picture) and ``<target>_<method>.npy``
            (the map as received: raw and signed, or display-normalized for ``png`` responses) per method;
            with a latent shift, ``<target>_latent_shift.gif`` and ``<target>_latent_shift_frames.npy``.

        Raises
        ------
        OutputNotWritable
            The folder or a file in it cannot be written.
        """
        out = _folder(directory)
        base = to_display_image(image)  # decoded once for every overlay
        stem = safe_name(self.target)
        written: list[Path] = []
        for method, heatmap in self.heatmaps.items():
            picture = self.overlay(method, base, alpha=alpha)
            written.append(_write(out / f"{stem}_{safe_name(method)}.png", picture.save))
            written.append(_write(out / f"{stem}_{safe_name(method)}.npy", partial(np.save, arr=heatmap)))
        ls = self.latent_shift
        if ls is not None and len(ls.frames):
            written.append(ls.save_gif(out / f"{stem}_latent_shift.gif"))
            written.append(_write(out / f"{stem}_latent_shift_frames.npy", partial(np.save, arr=ls.frames)))
        return written

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

    def save(
        self, directory: str | os.PathLike[str], image: Any, alpha: float = render.DEFAULT_ALPHA
    ) -> list[Path]:
        """Write every target's files (:meth:`TargetResult.save`) and ``summary.json`` into ``directory``.

        Parameters
        ----------
        directory
            Output folder, created when missing. Nothing about the input (its file name, its patient) goes
            into a name or a file: names come from targets and methods.
        image
            The image that was explained (path, bytes, array, PIL image or pydicom Dataset).
        alpha
            Overlay opacity.

        Returns
        -------
        list[Path]
            The paths written, ``summary.json`` (:meth:`summary`) last.

        Raises
        ------
        OutputNotWritable
            The folder or a file in it cannot be written.
        """
        base = to_display_image(image)
        written = [path for res in self.results.values() for path in res.save(directory, base, alpha=alpha)]
        text = json.dumps(self.summary(), indent=2) + "\n"
        summary = _folder(directory) / "summary.json"
        written.append(_write(summary, lambda p: p.write_text(text, encoding="utf-8")))
        return written

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary (no arrays): findings, targets, methods, latent-shift numbers, timings."""
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
                    "trusted": ls.trusted(),
                    "max_reconstruction_gap": MAX_RECONSTRUCTION_GAP,
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

"""Every DICOM object of one explanation, in the source's study: what the gateway sends back to a PACS."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from cxrexplain_client.results import Explanation, LatentShiftResult, ModelDescription

from .cine import latent_shift_cine
from .pmap import parametric_map
from .source import NOT_FOR_DIAGNOSTIC_USE, Algorithm, SourceLink, mark_derived
from .sr import findings_sr

OUTPUTS = ("sr", "parametric_map", "secondary_capture", "latent_shift_cine")
"""The kinds of object, by the names the gateway's configuration uses (``outputs:``)."""


@dataclass
class DicomResults:
    """The objects written for one source image, one list per kind (each kind is one new series)."""

    sr: list[Dataset] = field(default_factory=list)
    parametric_maps: list[Dataset] = field(default_factory=list)
    secondary_captures: list[Dataset] = field(default_factory=list)
    latent_shift_cines: list[Dataset] = field(default_factory=list)

    def __iter__(self) -> Iterator[Dataset]:
        """The cines first: the SR references their frames, so a receiver that checks references has them."""
        yield from self.latent_shift_cines
        yield from self.parametric_maps
        yield from self.secondary_captures
        yield from self.sr


def dicom_results(
    source: Dataset,
    explanation: Explanation,
    description: ModelDescription | None = None,
    outputs: Collection[str] = OUTPUTS,
    *,
    frame_time_ms: float = 120.0,
) -> DicomResults:
    """The SR, a Parametric Map and an overlay Secondary Capture per method and target, and a cine per latent
    shift, for one explained source image.

    Parameters
    ----------
    source
        The pydicom Dataset that was explained (with its pixel data: the overlays are drawn on it).
    explanation
        The SDK's answer for it; raw maps (``heatmap_format="array"``, the SDK's default) for Parametric Maps.
    description
        The model's description (``client.describe(model)``): adds the weights' sha256 to the algorithm's
        identification.
    outputs
        Which kinds to write (:data:`OUTPUTS`).
    frame_time_ms
        Frame Time of the cines.

    Returns
    -------
    DicomResults
        New series in the source's study; every object names the model (Contributing Equipment) and
        references the source.

    Raises
    ------
    ValueError
        An unknown output kind; display-normalized maps asked for as Parametric Maps; an explanation whose
        geometry is not the source's; a description of another model version.
    """
    unknown = sorted(set(outputs) - set(OUTPUTS))
    if unknown:
        raise ValueError(f"unknown DICOM outputs {unknown}: choose from {list(OUTPUTS)}")
    link = SourceLink.from_dataset(source)
    algorithm = Algorithm.from_results(explanation, description)
    out = DicomResults()
    maps = [
        (target, res, method) for target, res in explanation.results.items()
        for method in sorted(res.heatmaps)
    ]
    if "parametric_map" in outputs:
        series = generate_uid()
        for number, (target, res, method) in enumerate(maps, start=1):
            if res.normalized.get(method, False) or res.geometry is None:
                raise ValueError(
                    f"the {method} map for {target!r} is display-normalized or has no geometry: a Parametric "
                    "Map holds the raw map; request heatmap_format='array'"
                )
            out.parametric_maps.append(
                parametric_map(link, res.heatmaps[method], res.geometry, method, target, algorithm,
                               series_instance_uid=series, instance_number=number)
            )
    if "secondary_capture" in outputs:
        series = generate_uid()
        for number, (_, res, method) in enumerate(maps, start=1):
            sc = res.to_dicom(source, method, series_instance_uid=series, instance_number=number)
            # The series' description, not one map's: the overlays of this explanation share the series.
            sc.SeriesDescription = f"cxrexplain overlays - {NOT_FOR_DIAGNOSTIC_USE}"
            mark_derived(sc, link, algorithm)
            out.secondary_captures.append(sc)
    shifts = [res.latent_shift for res in explanation.results.values() if _has_frames(res.latent_shift)]
    cines: list[tuple[LatentShiftResult, Dataset]] = []
    if "latent_shift_cine" in outputs:
        series = generate_uid()
        for number, ls in enumerate(shifts, start=1):
            assert ls is not None  # filtered above; for the type checker
            cine = latent_shift_cine(
                link, ls, algorithm, frame_time_ms=frame_time_ms, series_instance_uid=series,
                instance_number=number,
            )
            cines.append((ls, cine))
            out.latent_shift_cines.append(cine)
    if "sr" in outputs:
        out.sr.append(findings_sr(link, explanation, algorithm, cines))
    return out


def save(datasets: Sequence[Dataset] | DicomResults, directory: str | Path) -> list[Path]:
    """Write each dataset as ``<SOP Instance UID>.dcm`` (never a name from patient data) under ``directory``.

    Returns
    -------
    list[pathlib.Path]
        The files written, in the order given.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _has_frames(ls: LatentShiftResult | None) -> bool:
    return ls is not None and len(ls.frames) > 0

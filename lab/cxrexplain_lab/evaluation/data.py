"""Evaluation data in the formats users have: a folder of images with box CSVs and mask folders, or phantoms.

* ``--images DIR``: PNG, JPEG or DICOM files (searched recursively: NIH ships ``images_001/images/...``),
  decoded by :mod:`cxrexplain_imageio`, the server's own decoder.
* ``--boxes CSV``: NIH ``BBox_List_2017.csv`` as distributed (``Image Index,Finding Label,Bbox [x,y,w,h],,,,,,``:
  x, y, w, h in four columns, trailing empty ones) or the RSNA pneumonia CSV (``patientId,x,y,width,height,
  Target``; label ``Pneumonia``; rows with Target 0 carry no box). Coordinates are original pixels.
* ``--masks DIR``: ``DIR/<concept>/<image file name>.png`` (or ``<image stem>.png``), non-zero = inside.
* ``--phantom N``: the project's phantom set at the model's input size, with its findings' boxes and masks and
  its anatomy masks.

A box or mask naming an image that is not there, or a label the model does not have, and an image that cannot
be decoded, are listed, skipped and counted in :class:`Problems` (the summary prints them).
Boxes and masks stay in original pixels here; :func:`to_model_space` maps them through the bundle's resize
policy (the :class:`~cxrexplain.preprocess.Geometry` of the image), where the metrics are computed.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cxrexplain_lab.phantom import PhantomDataset
from cxrexplain_render import GeometryLike

FloatBox = tuple[float, float, float, float]  # (x0, y0, x1, y1) in original pixels, x1/y1 exclusive
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".dcm", ".dicom"})
# NIH's BBox_List_2017.csv says "Infiltrate" where the NIH labels (and CheXNet's head) say "Infiltration".
DEFAULT_ALIASES: Mapping[str, str] = {"Infiltrate": "Infiltration"}
HELD_OUT_SEED = 90_210  # training draws from seed*2+1000 and validation from seed*2+1001 (cxrexplain_lab.train)


class DataError(ValueError):
    """The data cannot be evaluated at all (nothing usable, an unreadable CSV); the message says what to fix."""


@dataclass
class Problems:
    """What was skipped and why, counted per kind, for the summary."""

    entries: list[tuple[str, str]] = field(default_factory=list)  # (kind, message)

    def add(self, kind: str, message: str) -> None:
        """Record a skip once: ``report``'s subcommands read the same images, each meeting the same problems."""
        if (kind, message) not in self.entries:
            self.entries.append((kind, message))

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for kind, _ in self.entries:
            out[kind] = out.get(kind, 0) + 1
        return out

    def markdown(self, limit: int = 20) -> str:
        if not self.entries:
            return "Nothing skipped."
        counts = ", ".join(f"{n} {kind}" for kind, n in self.counts().items())
        lines = [f"Skipped: {counts}.", ""]
        lines += [f"- {kind}: {message}" for kind, message in self.entries[:limit]]
        if len(self.entries) > limit:
            lines.append(f"- ... and {len(self.entries) - limit} more")
        return "\n".join(lines)


@dataclass
class EvalImage:
    """One image and its annotations (original pixels). Phantoms carry their pixels; files are read on demand."""

    name: str
    path: Path | None = None
    pixels: np.ndarray | None = None
    boxes: dict[str, list[FloatBox]] = field(default_factory=dict)  # finding (model label) -> boxes
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # finding or concept -> (H, W) bool
    labels: np.ndarray | None = None  # the full label vector, where known (phantoms)

    @property
    def findings(self) -> list[str]:
        """Model labels annotated on this image (by a box, or a mask named like a label)."""
        return sorted(set(self.boxes) | {c for c in self.masks if c in self.label_masks})

    label_masks: frozenset[str] = frozenset()

    def read_bytes(self) -> bytes:
        """The image as a file's bytes (what the SDK sends); phantoms become a 16-bit PNG."""
        if self.path is not None:
            return self.path.read_bytes()
        assert self.pixels is not None
        buf = io.BytesIO()
        Image.fromarray(np.round(self.pixels * 65535).astype(np.uint16)).save(buf, format="PNG")
        return buf.getvalue()


@dataclass
class EvalSet:
    """The images to evaluate, the model labels they were matched against, and what was skipped."""

    images: list[EvalImage]
    problems: Problems
    source: str

    @property
    def annotated(self) -> list[EvalImage]:
        return [im for im in self.images if im.findings]


def parse_aliases(pairs: Iterable[str]) -> dict[str, str]:
    """``["Infiltrate=Infiltration", ...]`` over the defaults; ``X=`` removes an alias."""
    out = dict(DEFAULT_ALIASES)
    for pair in pairs:
        source, sep, target = pair.partition("=")
        if not sep or not source.strip():
            raise DataError(f"--alias takes CSV_LABEL=MODEL_LABEL (for example Infiltrate=Infiltration), got {pair!r}")
        if target.strip():
            out[source.strip()] = target.strip()
        else:
            out.pop(source.strip(), None)
    return out


def read_box_csv(path: Path) -> list[tuple[str, str, FloatBox | None]]:
    """Rows ``(image key, label, box or None)`` of an NIH or RSNA box CSV (told apart by the header).

    NIH image keys are file names (``00013118_008.png``); RSNA keys are patient ids, matched against file stems.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise DataError(f"cannot read the box CSV {path}: {exc}") from exc
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise DataError(f"{path} is empty: expected NIH's BBox_List_2017.csv or RSNA's stage_2_train_labels.csv")
    header = [h.strip() for h in rows[0]]
    out: list[tuple[str, str, FloatBox | None]] = []
    if header[:2] == ["Image Index", "Finding Label"]:
        for line, row in enumerate(rows[1:], start=2):
            if not any(cell.strip() for cell in row):
                continue
            try:
                x, y, w, h = (float(v) for v in row[2:6])
            except ValueError as exc:
                raise DataError(f"{path}:{line}: expected x, y, w, h numbers in columns 3-6, got {row[2:6]}") from exc
            out.append((row[0].strip(), row[1].strip(), (x, y, x + w, y + h)))
        return out
    if header[:6] == ["patientId", "x", "y", "width", "height", "Target"]:
        for line, row in enumerate(rows[1:], start=2):
            if not any(cell.strip() for cell in row):
                continue
            if row[5].strip() in ("0", ""):
                out.append((row[0].strip(), "Pneumonia", None))  # a negative: no box
                continue
            try:
                x, y, w, h = (float(v) for v in row[1:5])
            except ValueError as exc:
                raise DataError(f"{path}:{line}: expected x, y, width, height numbers, got {row[1:5]}") from exc
            out.append((row[0].strip(), "Pneumonia", (x, y, x + w, y + h)))
        return out
    raise DataError(f"{path}: unknown header {','.join(header[:6])!r}; expected NIH's 'Image Index,Finding Label,"
                    "Bbox [x,y,w,h],,,,,,' or RSNA's 'patientId,x,y,width,height,Target'")


def _index(images: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    files = sorted(p for p in images.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    by_name = {p.name: p for p in files}
    by_stem = {p.stem: p for p in files}
    return by_name, by_stem


def _resolve_label(label: str, labels: Sequence[str], aliases: Mapping[str, str]) -> str | None:
    lowered = {name.lower(): name for name in labels}
    return lowered.get(aliases.get(label, label).lower())


def load_folder(images: Path, labels: Sequence[str], boxes: Path | None = None, masks: Path | None = None,
                aliases: Mapping[str, str] = DEFAULT_ALIASES) -> EvalSet:
    """The images under ``images`` with the boxes of ``boxes`` and the masks under ``masks``.

    Raises
    ------
    DataError
        The folder does not exist or holds no image; a CSV cannot be read.
    """
    if not images.is_dir():
        raise DataError(f"--images {images} is not a folder: give the folder that holds the PNG/JPEG/DICOM files")
    by_name, by_stem = _index(images)
    if not by_name:
        raise DataError(f"no PNG, JPEG or DICOM file under {images}")
    problems = Problems()
    items = {p.name: EvalImage(name=p.name, path=p) for p in by_name.values()}
    label_masks: set[str] = set()
    if boxes is not None:
        for key, label, box in read_box_csv(boxes):
            path = by_name.get(key) or by_stem.get(key) or by_stem.get(Path(key).stem)
            if path is None:
                problems.add("missing image", f"{boxes.name} names {key!r} ({label}), not under {images}")
                continue
            model_label = _resolve_label(label, labels, aliases)
            if model_label is None:
                problems.add("unknown label", f"{key}: {label!r} is not a label of the model ({', '.join(labels)});"
                             f" map it with --alias {label}=<model label>")
                continue
            if box is not None:
                items[path.name].boxes.setdefault(model_label, []).append(box)
    if masks is not None:
        if not masks.is_dir():
            raise DataError(f"--masks {masks} is not a folder: lay masks out as DIR/<concept>/<image file name>.png")
        for concept_dir in sorted(p for p in masks.iterdir() if p.is_dir()):
            concept = _resolve_label(concept_dir.name, labels, aliases) or concept_dir.name
            if concept in labels:
                label_masks.add(concept)
            for mask_path in sorted(concept_dir.glob("*.png")):
                stem = mask_path.name[: -len(".png")]
                path = by_name.get(stem) or by_stem.get(stem) or by_stem.get(Path(stem).stem)
                if path is None:
                    problems.add("missing image", f"mask {concept_dir.name}/{mask_path.name} names an image not "
                                 f"under {images}")
                    continue
                try:
                    with Image.open(mask_path) as im:
                        items[path.name].masks[concept] = np.asarray(im.convert("L")) > 0
                except OSError as exc:
                    problems.add("unreadable mask", f"{mask_path}: {exc}")
    for item in items.values():
        item.label_masks = frozenset(label_masks)
    source = f"{len(items)} images under {images}" + (f", boxes from {boxes.name}" if boxes else "") + (
        f", masks from {masks}" if masks else "")
    return EvalSet(images=list(items.values()), problems=problems, source=source)


def load_phantoms(n: int, size: int, labels: Sequence[str], seed: int = HELD_OUT_SEED) -> EvalSet:
    """``n`` held-out phantoms (a seed training never used) at ``size``: boxes and masks of each finding present
    that the model has as a label, and the anatomy masks (lungs, heart) as concepts."""
    data = PhantomDataset(n, size=size, seed=seed)
    items = []
    known = set(labels)
    for i in range(n):
        s = data.sample(i)
        findings = {k: v for k, v in s.masks.items() if k in known}
        item = EvalImage(name=f"phantom-{i:05d}", pixels=s.image, labels=s.labels,
                         boxes={k: [_float_box(s.boxes[k])] for k in findings},
                         masks={**findings, **s.anatomy})
        item.label_masks = frozenset(findings)
        items.append(item)
    return EvalSet(images=items, problems=Problems(), source=f"{n} held-out phantoms (seed {seed}) at {size} px")


def _float_box(box: Sequence[float]) -> FloatBox:
    x0, y0, x1, y1 = (float(v) for v in box)
    return x0, y0, x1, y1


def to_model_space(box: FloatBox, geometry: GeometryLike) -> tuple[int, int, int, int] | None:
    """An original-pixel box in the model input's pixels (the resize policy's crop and scale); ``None`` when it
    falls entirely outside the centre crop."""
    x0, y0, x1, y1 = box
    if geometry.crop_size:  # centre crop, then a square resize
        sx = sy = geometry.model_size / geometry.crop_size
        x0, x1 = x0 - geometry.crop_left, x1 - geometry.crop_left
        y0, y1 = y0 - geometry.crop_top, y1 - geometry.crop_top
    else:  # stretch
        sx, sy = geometry.model_size / geometry.original_width, geometry.model_size / geometry.original_height
    s = geometry.model_size
    out = (int(np.floor(np.clip(x0 * sx, 0, s))), int(np.floor(np.clip(y0 * sy, 0, s))),
           int(np.ceil(np.clip(x1 * sx, 0, s))), int(np.ceil(np.clip(y1 * sy, 0, s))))
    return out if out[2] > out[0] and out[3] > out[1] else None


def mask_to_model_space(mask: np.ndarray, geometry: GeometryLike) -> np.ndarray:
    """An original-pixel mask cropped and resized as the image was (bilinear, then > 0.5)."""
    m = np.asarray(mask, dtype=np.float32)
    if m.shape != (geometry.original_height, geometry.original_width):
        raise DataError(f"a mask of shape {m.shape} for an image of {geometry.original_height}x"
                        f"{geometry.original_width}: masks have the image's size")
    if geometry.crop_size:
        c = geometry.crop_size
        m = m[geometry.crop_top : geometry.crop_top + c, geometry.crop_left : geometry.crop_left + c]
    s = geometry.model_size
    if m.shape != (s, s):
        t = F.interpolate(torch.from_numpy(np.ascontiguousarray(m))[None, None], size=(s, s), mode="bilinear",
                          align_corners=False)
        m = t[0, 0].numpy()
    return m > 0.5

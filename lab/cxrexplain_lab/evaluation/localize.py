"""``cxrexplain-eval localize``: how well each method's map falls on the annotated lesions.

For every image and every annotated finding the model has as a label, each method explains that finding, and the
map (at the model's input size; boxes and masks mapped there through the bundle's resize policy) is scored by

* ``iou`` at T = 0.1 ... 0.5 ([Nam2021] Table 2): the map normalized (``--normalization``: ``positive``,
  negatives to zero and divided by the max, as [Nam2021]; or ``minmax``, as [Khakzar2022]'s authors), pixels >= T,
  IoU with the union of the finding's boxes (its mask when it has no box);
* ``best_case_iou`` ([Cohen2021] §3.4): the map cut at its p-th largest value, p the lesion's size (its mask, else
  its boxes), ties kept, zeros never; gradient maps as |map|, relevance maps (CAM, LRP, RAP) as their positive part;
* ``iobb`` and ``ior`` ([Khakzar2022] §3): soft IoBB and IoR of the min-max normalized map.

Every table has a ``random`` row (a uniformly random map): the level to beat. Runs on a bundle here or through
the SDK against an archive on a running server.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from cxrexplain_lab import metrics
from cxrexplain_render import GeometryLike

from . import plots
from .command import Section, Session, Subcommand
from .data import EvalImage, mask_to_model_space, to_model_space
from .model import LocalModel, Model, Unreadable

METHODS = ("cam", "gradcam", "lrp", "rap", "saliency", "guided_backprop", "integrated_gradients", "latent_shift")
# Gradient signs say which way a pixel pushes, not whether it matters: [Cohen2021] takes |map| for them. For CAM,
# LRP and RAP negative means evidence against (RAP: irrelevant), so their positive part is the explanation's region.
ABSOLUTE = frozenset({"saliency", "guided_backprop", "integrated_gradients", "latent_shift"})
RANDOM = "random"
ALL = "all"
Scores = dict[tuple[str, str, str, float | None], list[float]]  # (method, finding, metric, T) -> values


def regions(item: EvalImage, finding: str, geometry: GeometryLike) -> tuple[np.ndarray, np.ndarray] | None:
    """(box region, lesion mask) of a finding in model pixels; ``None`` when it falls outside the model's crop."""
    s = geometry.model_size
    box_region = np.zeros((s, s), dtype=bool)
    for box in item.boxes.get(finding, []):
        mapped = to_model_space(box, geometry)
        if mapped is not None:
            box_region |= metrics.box_mask(mapped, (s, s))
    mask = mask_to_model_space(item.masks[finding], geometry) if finding in item.masks else None
    if not box_region.any():
        box_region = mask if mask is not None else box_region
    lesion = mask if mask is not None and mask.any() else box_region
    return (box_region, lesion) if box_region.any() and lesion.any() else None


def score_map(heatmap: np.ndarray, method: str, box_region: np.ndarray, lesion: np.ndarray,
              normalization: metrics.Normalization) -> dict[tuple[str, float | None], float]:
    """Every metric of one map for one finding."""
    out: dict[tuple[str, float | None], float] = {}
    ious = metrics.iou_table(heatmap[None], [box_region], normalization=normalization)[0]
    out.update({("iou", float(t)): float(v) for t, v in zip(metrics.IOU_THRESHOLDS, ious, strict=True)})
    region = np.abs(heatmap) if method in ABSOLUTE else np.clip(heatmap, 0, None)
    out[("best_case_iou", None)] = metrics.best_case_iou(region, lesion)
    iobb, ior = metrics.soft_iobb_ior(heatmap, [box_region], box_region.shape)
    out[("iobb", None)], out[("ior", None)] = iobb, ior
    return out


def localize(model: Model, images: Sequence[EvalImage], methods: Sequence[str], session: Session,
             normalization: metrics.Normalization = "positive", seed: int = 0) -> Scores:
    """The scores of every (method, finding) pair over ``images``; unreadable images and findings outside the
    model's crop are recorded in the session's problems."""
    scores: Scores = defaultdict(list)
    chance = np.random.default_rng(seed)  # the random row's maps
    problems = session.data.problems
    for item in session.progress(images, "localize", total=len(images)):
        findings = [f for f in item.findings if f in model.labels]
        if not findings:
            continue
        try:
            geometry, maps = model.maps(item, findings, methods)
        except Unreadable as exc:
            problems.add("unreadable image", str(exc))
            continue
        for finding in findings:
            found = regions(item, finding, geometry)
            if found is None:
                problems.add("box outside the crop", f"{item.name}: every {finding} box lies outside the model's "
                             "centre crop")
                continue
            s = geometry.model_size
            per_method = {**maps[finding], RANDOM: chance.random((s, s))}
            for method, heatmap in per_method.items():
                for (metric, t), value in score_map(heatmap, method, *found, normalization).items():
                    scores[(method, finding, metric, t)].append(value)
                    scores[(method, ALL, metric, t)].append(value)
    return scores


def auroc_rows(model: LocalModel, images: Sequence[EvalImage]) -> dict[str, float]:
    """AUROC per label where every image's full label vector is known (phantoms)."""
    import torch

    x = torch.cat([model.prepare(im)[0] for im in images])
    probs = torch.cat([model.explainer.predict(b) for b in x.split(64)]).numpy()
    labels = np.stack([im.labels for im in images if im.labels is not None])
    values = np.atleast_1d(metrics.auroc(probs, labels))
    return dict(zip(model.labels, (float(v) for v in values), strict=True))


def table2(scores: Scores, methods: Sequence[str], findings: Sequence[str]) -> str:
    """[Nam2021] Table 2's shape: rows T x method, one column per finding, then all findings."""
    cols = [*findings, ALL]
    lines = ["| T | method | " + " | ".join(cols) + " |", "| --- | --- |" + " --- |" * len(cols)]
    for t in metrics.IOU_THRESHOLDS:
        for i, method in enumerate(methods):
            cells = [f"{np.mean(v):.3f}" if (v := scores.get((method, f, "iou", t))) else "" for f in cols]
            lines.append(f"| {t:.1f} |" if i == 0 else "| |")
            lines[-1] += f" {method} | " + " | ".join(cells) + " |"
    return "\n".join(lines)


def run(session: Session) -> Section:
    args = session.args
    model, data = session.model, session.data
    methods = session.methods
    scores = localize(model, data.annotated, methods, session, args.normalization, args.seed)
    if not scores:
        raise ValueError(f"nothing to localize in {data.source}: no image has a box or mask of a model label "
                         f"({', '.join(model.labels)}); see the skipped entries:\n{data.problems.markdown()}")
    rows = [(m, f, metric, "" if t is None else t, f"{np.mean(v):.6f}", len(v))
            for (m, f, metric, t), v in sorted(scores.items(), key=lambda kv: tuple(map(str, kv[0])))]
    csv_path = session.write_csv("localization.csv", ["method", "finding", "metric", "T", "mean", "n"], rows)
    shown = [*methods, RANDOM]
    findings = sorted({f for (_, f, _, _) in scores if f != ALL})
    curves = {m: [float(np.mean(scores[(m, ALL, "iou", t)])) for t in metrics.IOU_THRESHOLDS] for m in shown}
    plot = plots.iou_against_t(curves, metrics.IOU_THRESHOLDS, session.out / "localization_iou.png",
                               f"IoU against T ({args.normalization} normalization), {data.source}")
    n_pairs = len(scores[(RANDOM, ALL, "best_case_iou", None)])
    md = [f"{n_pairs} annotated findings; maps normalized `{args.normalization}`; `random` is a uniformly random "
          "map, the level to beat.", "", "Mean IoU of the thresholded map with the lesion box ([Nam2021] Table 2):",
          "", table2(scores, shown, findings), "",
          "All findings: best-case IoU ([Cohen2021] §3.4), soft IoBB and IoR ([Khakzar2022]):", "",
          "| method | best-case IoU | soft IoBB | soft IoR |", "| --- | --- | --- | --- |"]
    for m in shown:
        cells = [f"{np.mean(scores[(m, ALL, k, None)]):.3f}" for k in ("best_case_iou", "iobb", "ior")]
        md.append(f"| {m} | " + " | ".join(cells) + " |")
    if isinstance(model, LocalModel) and data.images and all(im.labels is not None for im in data.images):
        auroc = auroc_rows(model, data.images)
        md += ["", "| finding | " + " | ".join(auroc) + " |", "| --- |" + " --- |" * len(auroc),
               "| AUROC | " + " | ".join(f"{v:.3f}" for v in auroc.values()) + " |"]
    md += ["", f"![IoU against T]({plot.name})"]
    return Section("Localization", "\n".join(md), [csv_path, plot])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--normalization", choices=metrics.NORMALIZATIONS, default="positive",
                        help="how maps reach [0, 1] before thresholding: positive ([Nam2021]) or minmax "
                             "([Khakzar2022]'s authors)")


COMMAND = Subcommand("localize", "IoU at T, best-case IoU and soft IoBB/IoR of each method's map against the lesions",
                     run, add_arguments, needs_insides=False)

"""``cxrexplain-eval dissect``: Network Dissection of one layer ([Khakzar2021] eq. 5; :mod:`cxrexplain_lab.dissection`).

The concepts are the data's annotations in the model's pixels: each finding's lesion (its mask, else its boxes)
and every other mask (``--masks DIR/<concept>/``; the phantoms' lungs and heart). ``dissection.csv`` has one row
per unit and concept; the summary counts each concept's detectors (units labelled with it at IoU >= 0.04) beside
its best unit's IoU: a unit on at 0.5 % of all pixels cannot reach 0.04 against a concept covering more than
12.5 % of every image (a lung), so a count of zero there says little on its own.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cxrexplain.semantic import capture_output
from cxrexplain_lab.dissection import DETECTOR_IOU, QUANTILE, DissectionResult, dissect
from cxrexplain_lab.units import AnnotatedImage

from . import plots
from .annotated import annotated_images
from .command import Section, Session, Subcommand
from .model import require_local


def run(session: Session) -> Section:
    model = require_local(session.model, "dissect")
    args = session.args
    layer = model.unit_layer()
    data = annotated_images(session.data, model.bundle,
                            progress=lambda items: session.progress(items, "read", total=len(session.data.images)))
    result = dissect(model.bundle.module.eval(), layer, data, quantile=args.quantile, detector_iou=args.detector_iou,
                     progress=lambda batches: session.progress(batches, "dissect"))
    rows = [(r["layer"], r["unit"], r["concept"], f"{r['iou']:.6f}", int(bool(r["detector"]))) for r in result.rows()]
    csv_path = session.write_csv("dissection.csv", ["layer", "unit", "concept", "iou", "detector"], rows)
    counts, best = result.detector_counts(), result.best_units()
    plot = plots.detectors_per_concept(counts, best, session.out / "dissection_detectors.png",
                                       f"Network Dissection of {layer}, {len(data)} images")
    units = plots.unit_maps(best_unit_views(model.bundle.module, data, result), session.out / "dissection_units.png")
    md = [f"Layer `{layer}` ({len(result.thresholds)} units) over {len(data)} images; T_k at the top "
          f"{result.quantile:g} of each unit's activations, IoU summed over the images that contain the concept, "
          f"a detector at IoU >= {result.detector_iou:g}. A concept covering more than "
          f"{result.quantile / result.detector_iou:.1%} of every image cannot have a detector: read the best IoU.",
          "", "| concept | images | detectors | best unit | best IoU |", "| --- | --- | --- | --- | --- |"]
    for c, name in enumerate(result.concepts):
        unit, iou = best.get(name, (None, float("nan")))
        md.append(f"| {name} | {int(result.images_with[c])} | {counts[name]} | {'' if unit is None else unit} | "
                  f"{iou:.3f} |")
    md += ["", f"![detectors per concept]({plot.name})", "", f"![each concept's best unit]({units.name})"]
    return Section("Network Dissection", "\n".join(md), [csv_path, plot, units])


def best_unit_views(module: nn.Module, data: Sequence[AnnotatedImage], result: DissectionResult,
                    limit: int = 8, candidates: int = 64) -> list[plots.UnitView]:
    """For each concept's best unit (at most ``limit`` concepts): the unit's map upsampled to the mask's size as
    eq. 5 compares it, with ``T_k`` and the concept's mask, on the image (of the first ``candidates`` containing
    the concept) where the unit's M_k covers most of the concept."""
    cpu, device = torch.device("cpu"), next(module.parameters()).device
    views = []
    for name, (unit, iou) in list(result.best_units().items())[:limit]:
        chosen = None
        for item in [im for im in data if name in im.concept_masks(cpu)][:candidates]:
            mask = item.concept_masks(cpu)[name]
            with torch.no_grad(), capture_output(module, result.layer) as seen:
                module(item.image[None].to(device))
            up = F.interpolate(seen[-1][:, unit : unit + 1].float(), size=tuple(mask.shape), mode="bilinear",
                               align_corners=False)[0, 0].cpu()
            hit = int(((up >= result.thresholds[unit]) & mask).sum())
            if chosen is None or hit > chosen[0]:
                chosen = (hit, item, up, mask)
        assert chosen is not None  # best_units names only concepts some image contains
        _, item, up, mask = chosen
        views.append(plots.UnitView(f"{name}: unit {unit}, IoU {iou:.3f}", item.image[0].cpu().numpy(), up.numpy(),
                                    float(result.thresholds[unit]), mask.numpy()))
    return views


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quantile", type=float, default=QUANTILE,
                        help=f"share of each unit's activations above T_k (default {QUANTILE}, [Khakzar2021])")
    parser.add_argument("--detector-iou", type=float, default=DETECTOR_IOU,
                        help=f"IoU from which a unit detects its concept (default {DETECTOR_IOU})")


COMMAND = Subcommand("dissect", "Network Dissection: each unit of --layer labelled by the concept its top "
                     "activations overlap best, detectors counted per concept", run, add_arguments)

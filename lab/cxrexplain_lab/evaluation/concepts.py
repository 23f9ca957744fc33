"""``cxrexplain-eval concepts``: the disjoint and unique concept counts of [Khakzar2022] §4 for one layer
(:mod:`cxrexplain_lab.concepts`), the regions being the findings' boxes in the model's pixels.

``tau_c`` is taken over every readable image (the thresholds are a property of the channel on the data); the
counts run over the images with a box, divided by their number.
"""

from __future__ import annotations

import argparse

from cxrexplain_lab.concepts import concept_counts

from .annotated import annotated_images
from .command import Section, Session, Subcommand
from .model import require_local


def run(session: Session) -> Section:
    model = require_local(session.model, "concepts")
    args = session.args
    layer = model.unit_layer()
    data = annotated_images(session.data, model.bundle, boxes_only=True,
                            progress=lambda items: session.progress(items, "read", total=len(session.data.images)))
    counts = concept_counts(model.bundle.module.eval(), layer, data, q=args.concept_q,
                            progress=lambda batches: session.progress(batches, "concepts"))
    if not counts.images:
        raise ValueError(f"no image in {session.data.source} has a box of a model label: the concept counts count "
                         "components in boxes")
    csv_path = session.write_csv("concepts.csv", ["layer", "q", "channels", "images", "disjoint", "unique"],
                                 [(layer, counts.q, len(counts.thresholds), counts.images, f"{counts.disjoint:.4f}",
                                   f"{counts.unique:.4f}")])
    md = [f"Layer `{layer}`, each channel thresholded at its top q = {counts.q:g} over {len(data)} images; "
          f"8-connected components of the upsampled maps counted where they touch a box, over the {counts.images} "
          "images with a box ([Khakzar2022] Tab. 2's shape).", "",
          "| layer | q | disjoint concepts | unique concepts |", "| --- | --- | --- | --- |",
          f"| {layer} | {counts.q:g} | {counts.disjoint:.2f} | {counts.unique:.2f} |"]
    return Section("Concept counts", "\n".join(md), [csv_path])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--concept-q", type=float, default=0.01,
                        help="top share of each channel's activations kept (default 0.01, T-DenseNet in "
                             "[Khakzar2022]; 0.04 for its ResNet-50)")


COMMAND = Subcommand("concepts", "disjoint and unique concept counts: components of each channel's top "
                     "activations that fall in the findings' boxes", run, add_arguments)

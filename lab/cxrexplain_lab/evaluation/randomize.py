"""``cxrexplain-eval randomize``: cascading randomization ([Cohen2021] §4.5, App. H; :mod:`cxrexplain_lab.sanity`).

The first ``--randomize-n`` images (40 in [Cohen2021] App. H) that carry an annotated finding are explained for
that finding (for images without one: the model's top finding), the model is randomized block by block from the
output backwards, and each method's curve is the mean Spearman correlation of |map| with the original. Needs the
model's parameters: not available against a server.
"""

from __future__ import annotations

import argparse

import torch

from cxrexplain_lab.sanity import cascading_randomization

from . import plots
from .command import Section, Session, Subcommand
from .model import Unreadable, require_local


def run(session: Session) -> Section:
    model = require_local(session.model, "randomize")
    data = session.data
    n = session.args.randomize_n
    picked = data.annotated or data.images
    xs: list[torch.Tensor] = []
    targets: list[str] = []
    for item in picked:
        if len(xs) == n:
            break
        try:
            x, _ = model.prepare(item)
        except Unreadable as exc:
            data.problems.add("unreadable image", str(exc))
            continue
        xs.append(x)
        findings = [f for f in item.findings if f in model.labels]
        targets.append(findings[0] if findings else model.labels[int(model.explainer.predict(x)[0].argmax())])
    if not xs:
        raise ValueError(f"no readable image in {data.source} to randomize on")
    methods = session.methods
    curves = cascading_randomization(model.bundle, torch.cat(xs), targets, methods,
                                     autoencoder=model.explainer.autoencoder, options=model.method_options(),
                                     seed=session.args.seed + 1000, device=str(model.explainer.device),
                                     progress=lambda steps: session.progress(steps, "randomize"))
    rows = [(m, i + 1, step, f"{curves.mean(m)[i]:.6f}", f"{curves.std(m)[i]:.6f}", len(xs))
            for m in methods for i, step in enumerate(curves.steps)]
    csv_path = session.write_csv("randomization.csv", ["method", "step", "randomized_up_to", "spearman_mean",
                                                       "spearman_std", "n"], rows)
    mean = {m: curves.mean(m) for m in methods}
    plot = plots.randomization_curves(curves.steps, mean, {m: curves.std(m) for m in methods},
                                      session.out / "randomization.png",
                                      f"Cascading randomization, {len(xs)} images")
    short = [s.removeprefix("features.") for s in curves.steps]
    md = [f"Spearman rank correlation of |map| with the original as the model is re-initialized from the output "
          f"backwards, cumulatively ([Cohen2021] §4.5, Fig. 5); mean over {len(xs)} images (randomization.csv has "
          "the standard deviations). A method that reads the model falls towards 0.", "",
          "| method | " + " | ".join(short) + " |", "| --- |" + " --- |" * len(short)]
    md += [f"| {m} | " + " | ".join(f"{v:.2f}" for v in mean[m]) + " |" for m in methods]
    md += ["", f"![randomization curves]({plot.name})"]
    return Section("Cascading randomization", "\n".join(md), [csv_path, plot])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--randomize-n", type=int, default=40,
                        help="images the randomization runs on (default 40, as [Cohen2021] App. H)")


COMMAND = Subcommand("randomize", "cascading randomization: each method's correlation with its original map as the "
                     "model is randomized from the output backwards", run, add_arguments)


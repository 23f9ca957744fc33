"""``cxrexplain-eval``: how good are a classifier and its explanations on held-out phantoms with known boxes?

    cxrexplain-eval --weights .cache/demo-weights/cxr_densenet.pt --autoencoder .cache/demo-weights/cxr_ae.pt

AUROC per finding on a held-out split (a seed the training never saw), then, for every image and every finding
present in it, each method's map against the planted box: IoU of the normalized map thresholded at
T = 0.1 ... 0.5 ([Nam2021] Table 2) and the best-case IoU of [Cohen2021] §3.4 (the map cut at its p-th largest
value, p = the finding's mask size, ties kept, zero pixels never selected).
Prints Markdown tables and writes JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrexplain import Explainer
from cxrexplain.models import load_autoencoder, load_classifier
from cxrexplain_lab import metrics
from cxrexplain_lab.phantom import PhantomDataset

METHODS = ("cam", "gradcam", "lrp", "rap", "saliency", "guided_backprop", "integrated_gradients", "latent_shift")
# Gradient signs say which way a pixel pushes, not whether it matters: [Cohen2021] takes |map| for them. For CAM,
# LRP and RAP negative means evidence against (RAP: irrelevant), so their positive part is the explanation's region.
ABSOLUTE = frozenset({"saliency", "guided_backprop", "integrated_gradients", "latent_shift"})
HELD_OUT_SEED = 90_210  # training draws from seed*2+1000 and validation from seed*2+1001 (cxrexplain_lab.train)


def evaluate(explainer: Explainer, n: int, methods: tuple[str, ...], seed: int = HELD_OUT_SEED,
             batch_size: int = 8) -> dict[str, Any]:
    """AUROC per label and localization per method on ``n`` held-out phantoms at the model's input size."""
    spec = explainer.bundle.input_spec
    data = PhantomDataset(n, size=spec.size, seed=seed)
    images = torch.stack([data[i][0] for i in range(n)])
    labels = data.label_matrix()
    probs = torch.cat([explainer.predict(spec.from_unit(b)) for b in images.split(64)]).numpy()
    auroc = metrics.auroc(probs, labels)
    rows = [(i, j) for i in range(n) for j in range(labels.shape[1]) if labels[i, j] > 0]
    ious: dict[str, list[np.ndarray]] = defaultdict(list)
    best: dict[str, list[float]] = defaultdict(list)
    chance = torch.Generator().manual_seed(seed)  # a random map's best-case IoU: the level to beat
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        x = spec.from_unit(images[[i for i, _ in chunk]])
        result = explainer.explain(x, methods=list(methods), targets=[j for _, j in chunk])
        samples = [data.sample(i) for i, _ in chunk]
        names = [explainer.labels[j] for _, j in chunk]
        boxes = [s.boxes[name] for s, name in zip(samples, names, strict=True)]
        noise = torch.rand(x.shape[0], *x.shape[-2:], generator=chance)
        for method, maps in {**result.heatmaps, "random": noise}.items():
            ious[method].append(metrics.iou_table(maps, boxes))
            for m, s, name in zip(maps, samples, names, strict=True):
                region = m.abs() if method in ABSOLUTE else m.clamp(min=0)
                best[method].append(metrics.best_case_iou(region, s.masks[name]))
    return {
        "n_images": n,
        "n_findings": len(rows),
        "auroc": {name: float(a) for name, a in zip(explainer.labels, np.atleast_1d(auroc), strict=True)},
        "iou": {m: np.concatenate(v).mean(axis=0).tolist() for m, v in ious.items()},
        "best_case_iou": {m: float(np.mean(v)) for m, v in best.items()},
        "thresholds": list(metrics.IOU_THRESHOLDS),
    }


def markdown(report: dict[str, Any]) -> str:
    """The two tables the README shows."""
    lines = ["| finding | " + " | ".join(report["auroc"]) + " |",
             "| --- |" + " --- |" * len(report["auroc"]),
             "| AUROC | " + " | ".join(f"{a:.3f}" for a in report["auroc"].values()) + " |", ""]
    ts = report["thresholds"]
    lines += ["| method | " + " | ".join(f"IoU T={t:.1f}" for t in ts) + " | best-case IoU |",
              "| --- |" + " --- |" * (len(ts) + 1)]
    for method, values in report["iou"].items():
        cells = " | ".join(f"{v:.3f}" for v in values)
        lines.append(f"| {method} | {cells} | {report['best_case_iou'][method]:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cxrexplain-eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, required=True, help="classifier weights (with a .json sidecar)")
    parser.add_argument("--autoencoder", type=Path, help="autoencoder weights, for latent_shift")
    parser.add_argument("--n", type=int, default=200, help="held-out phantoms (default 200)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    methods = tuple(m for m in args.methods.split(",") if m)
    autoencoder = load_autoencoder(None, weights=args.autoencoder) if args.autoencoder else None
    if autoencoder is None:
        methods = tuple(m for m in methods if m != "latent_shift")
    explainer = Explainer(load_classifier(None, weights=args.weights), autoencoder=autoencoder, device=args.device)
    report = evaluate(explainer, args.n, methods)
    print(markdown(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

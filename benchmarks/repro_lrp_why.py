"""Why LRP / RAP do not beat CAM at low T on phantoms ([Nam2021] Table 2): controlled variants on one model.

    PYTHONPATH=handlers:lab python -m benchmarks.repro_lrp_why --weights W --phantom 100 --out DIR

For each held-out phantom finding, every variant's map is scored like ``cxrexplain-eval localize`` does (IoU at
T under both normalizations, best-case IoU, soft IoR), plus two diagnostics that explain IoU at T: the share of
the image at or above T (``area@T``; the box covers ``box_area``) and the IoU after blurring the map (Gaussian,
sigma = 1/16 of the image), which tells a sparse-but-well-placed map from a misplaced one. Variants: LRP
alpha1-beta0 and alpha2-beta1 with each BatchNorm rule, RAP, CAM, saliency, and a uniformly random map.
Writes ``why.csv`` (variant, metric, T, mean, n).
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from cxrexplain import Explainer
from cxrexplain.methods.cam import CAM
from cxrexplain.methods.gradients import Saliency
from cxrexplain.methods.lrp import LRP
from cxrexplain.methods.rap import RAP
from cxrexplain.models import load_classifier
from cxrexplain.preprocess import Geometry
from cxrexplain_lab import metrics
from cxrexplain_lab.evaluation.data import load_phantoms
from cxrexplain_lab.evaluation.localize import regions

VARIANTS = {
    "cam": lambda: CAM(),
    "saliency": lambda: Saliency(),
    "lrp_a1b0_pass": lambda: LRP(alpha=1.0, beta=0.0, batchnorm="pass"),
    "lrp_a1b0_zennit": lambda: LRP(alpha=1.0, beta=0.0, batchnorm="zennit"),
    "lrp_a2b1_pass": lambda: LRP(alpha=2.0, beta=1.0, batchnorm="pass"),
    "rap_pass": lambda: RAP(batchnorm="pass"),
    "rap_zennit": lambda: RAP(batchnorm="zennit"),
}


def score(m: np.ndarray, variant: str, box: np.ndarray, lesion: np.ndarray, out: dict, blur: float) -> None:
    region = np.abs(m) if variant == "saliency" else m  # [Cohen2021] takes |gradient|
    for norm in metrics.NORMALIZATIONS:
        n = metrics.normalize(region, norm)  # type: ignore[arg-type]
        for t in metrics.IOU_THRESHOLDS:
            above = (n >= t) & (n > 0)
            out[(variant, f"iou_{norm}", t)].append(float((above & box).sum() / (above | box).sum()))
            out[(variant, f"area_{norm}", t)].append(float(above.mean()))
    blurred = gaussian_filter(np.clip(region, 0, None), blur)
    for t, v in zip(metrics.IOU_THRESHOLDS, metrics.iou_table(blurred[None], [box])[0], strict=True):
        out[(variant, "iou_positive_blurred", t)].append(float(v))
    out[(variant, "best_case_iou", "")].append(metrics.best_case_iou(np.clip(region, 0, None), lesion))
    out[(variant, "ior", "")].append(metrics.soft_iobb_ior(region, [box], box.shape)[1])
    pos = np.clip(region, 0, None)
    out[(variant, "positive_mass_in_box", "")].append(float(pos[box].sum() / pos.sum()) if pos.sum() > 0 else 0.0)
    if variant == "random":
        out[("-", "box_area", "")].append(float(box.mean()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", type=Path, required=True)
    p.add_argument("--phantom", type=int, default=100)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    bundle = load_classifier(None, weights=args.weights)
    explainer = Explainer(bundle)
    size = int(bundle.input_spec.size)
    data = load_phantoms(args.phantom, size, bundle.labels)
    chance = np.random.default_rng(0)
    out: dict = defaultdict(list)
    for item in data.images:
        findings = [f for f in item.findings if f in bundle.labels]
        if not findings:
            continue
        x = torch.from_numpy(item.pixels).float()[None, None].expand(len(findings), -1, -1, -1)
        # One call per variant: the explainer keys each method instance by its own name.
        maps = {k: explainer.explain(x, methods={(m := f()).name: m}, targets=findings).heatmaps[m.name]
                for k, f in VARIANTS.items()}
        for i, finding in enumerate(findings):
            found = regions(item, finding, Geometry(size, size, 0, 0, size, size))  # phantoms: model pixels
            if found is None:
                continue
            box, lesion = found
            for k in VARIANTS:
                score(maps[k][i].numpy().astype(np.float64), k, box, lesion, out, size / 16)
            score(chance.random((size, size)), "random", box, lesion, out, size / 16)
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "why.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["variant", "metric", "T", "mean", "n"])
        for (variant, metric, t), v in sorted(out.items(), key=lambda kv: tuple(map(str, kv[0]))):
            w.writerow([variant, metric, t, f"{np.mean(v):.4f}", len(v)])
    plot(args.out / "why.csv", args.out / "why.png")
    print(f"wrote {args.out / 'why.csv'}, {args.out / 'why.png'}")
    return 0


def plot(csv_path: Path, png: Path) -> None:
    """IoU against T (positive normalization) beside the share of the image kept at T, from ``why.csv``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(csv_path.open()))
    box = next(float(r["mean"]) for r in rows if r["metric"] == "box_area")
    ts = metrics.IOU_THRESHOLDS
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    for variant, metric, style in [("cam", "iou_positive", "-"), ("saliency", "iou_positive", "-"),
                                   ("lrp_a1b0_pass", "iou_positive", "-"), ("lrp_a1b0_zennit", "iou_positive", ":"),
                                   ("lrp_a2b1_pass", "iou_positive", ":"), ("rap_pass", "iou_positive", "-"),
                                   ("lrp_a1b0_pass", "iou_positive_blurred", "--"),
                                   ("rap_pass", "iou_positive_blurred", "--"), ("random", "iou_positive", "-")]:
        get = {float(r["T"]): float(r["mean"]) for r in rows if r["variant"] == variant and r["metric"] == metric}
        a.plot(ts, [get[t] for t in ts], style, marker="o", label=f"{variant}{' blurred' if 'blur' in metric else ''}")
        if metric == "iou_positive" and style == "-":
            area = {float(r["T"]): float(r["mean"]) for r in rows
                    if r["variant"] == variant and r["metric"] == "area_positive"}
            b.semilogy(ts, [area[t] for t in ts], marker="o", label=variant)
    b.axhline(box, color="k", ls="--", label="mean box area")
    a.set(xlabel="T", ylabel="mean IoU with the box", title="IoU at T (positive normalization)")
    b.set(xlabel="T", ylabel="share of the image >= T", title="how much of the map survives T")
    a.legend(fontsize=7)
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())

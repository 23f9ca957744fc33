"""Re-make docs/reproduction/: the papers' claims checked on the phantom set (docs/reproduction.md).

    PYTHONPATH=handlers:lab:client:. python -m benchmarks.reproduce [--out docs/reproduction] [--work /tmp/repro]

Trains one 64 px demo classifier per loss of [Khakzar2022] (same seed and schedule; cached under
.cache/repro-cache), then runs ``cxrexplain-eval`` on held-out phantoms: ``localize`` (IoU at T, IoBB, IoR),
``concepts`` and ``dissect`` per loss; ``randomize`` and ``benchmarks.repro_lrp_why`` on the 96 px demo model.
Copies the CSVs and plots to ``--out`` and writes ``losses.csv`` / ``losses.png`` (IoBB and counts per loss).
41 min wall on a shared 2-core CPU (9 trainings of 70-590 s each is most of it).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks import repro_lrp_why as why

LOSSES = ("bce", "wbce", "focal", "cb_focal")
DEMO = Path(".cache/demo-weights/cxr_densenet.pt")  # the 96 px demo classifier (make demo-weights)
TRAIN = ["--size", "64", "--n-train", "800", "--epochs", "4", "--skip-autoencoder", "--cache", ".cache/repro-cache"]
METHODS = "cam,gradcam,saliency,lrp,rap"
SEEDS = (0, 1)
UNIT_LAYER = "features.denseblock2"  # 8x8 at 64 px: the T-DenseNet cut of [Khakzar2022] §3 in the demo layout


def sh(*args: str | Path) -> None:
    print("+", " ".join(map(str, args)), flush=True)
    subprocess.run([str(a) for a in args], check=True)


def evaluate(sub: str, weights: Path, out: Path, *extra: str) -> None:
    if not (out / "summary.md").exists():  # a rerun resumes
        sh(sys.executable, "-m", "cxrexplain_lab.evaluation", sub, "--weights", weights, "--out", out, "--quiet",
           *extra)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("docs/reproduction"))
    p.add_argument("--work", type=Path, default=Path("/tmp/repro"))
    p.add_argument("--phantom", type=int, default=100)
    args = p.parse_args(argv)
    w, n = args.work, str(args.phantom)
    evaluate("randomize", DEMO, w / "out/rand96", "--phantom", "40", "--randomize-n", "10", "--methods",
             "cam,gradcam,saliency,guided_backprop,lrp,rap")
    evaluate("localize", DEMO, w / "out/demo96_loc", "--phantom", n, "--methods", METHODS)
    rows = []
    for seed in SEEDS:
        for loss in LOSSES:
            model, out = w / f"models/s{seed}/{loss}/cxr_densenet.pt", w / f"out/s{seed}/{loss}"
            if not model.exists():
                sh(sys.executable, "-m", "cxrexplain_lab.train_demo", "--out", model.parent, "--loss", loss,
                   "--seed", str(seed), *TRAIN)
            # seed 1 only measures the spread of the per-loss figures: CAM is all it localizes
            evaluate("localize", model, out / "loc", "--phantom", n, "--methods", METHODS if seed == 0 else "cam")
            evaluate("concepts", model, out / "concepts", "--phantom", n, "--layer", UNIT_LAYER)
            evaluate("dissect", model, out / "dissect", "--phantom", n, "--layer", UNIT_LAYER)
            rows.append({"seed": str(seed), **summarize(loss, out, model)})
    write_losses(rows, args.out)
    # the 64 px schedule at 96 px: separates the input size from the training length
    short96 = w / "models/s0/bce96/cxr_densenet.pt"
    if not short96.exists():
        sh(sys.executable, "-m", "cxrexplain_lab.train_demo", "--out", short96.parent, "--loss", "bce",
           *TRAIN[:1], "96", *TRAIN[2:])
    for tag, weights in [("why96", DEMO), ("why64", w / "models/s0/bce/cxr_densenet.pt"), ("why96short", short96)]:
        if not (w / f"out/{tag}/why.csv").exists():
            sh(sys.executable, "-m", "benchmarks.repro_lrp_why", "--weights", weights, "--phantom", "40",
               "--out", w / f"out/{tag}")
        why.plot(w / f"out/{tag}/why.csv", args.out / f"{tag}.png")
        shutil.copyfile(w / f"out/{tag}/why.csv", args.out / f"{tag}.csv")
    for src, dst in [("rand96/randomization.csv", "randomization_demo96.csv"),
                     ("rand96/randomization.png", "randomization_demo96.png"),
                     ("demo96_loc/localization.csv", "demo96_localization.csv"),
                     ("demo96_loc/localization_iou.png", "demo96_localization_iou.png"),
                     *[(f"s0/{lo}/{k}/{f}", f"{lo}_{f}") for lo in LOSSES for k, f in
                       [("loc", "localization.csv"), ("loc", "localization_iou.png"), ("concepts", "concepts.csv"),
                        ("dissect", "dissection.csv"), ("dissect", "dissection_detectors.png")]]]:
        shutil.copyfile(w / "out" / src, args.out / dst)
    return 0


def summarize(loss: str, out: Path, model: Path) -> dict[str, str]:
    loc = {(r["method"], r["finding"], r["metric"], r["T"]): r["mean"]
           for r in csv.DictReader((out / "loc/localization.csv").open())}
    conc = next(csv.DictReader((out / "concepts/concepts.csv").open()))
    diss = list(csv.DictReader((out / "dissect/dissection.csv").open()))
    findings = {finding for (_, finding, _, _) in loc} - {"all"}
    # detectors of the findings' concepts (pathology-related, as [Khakzar2022] counts), then of any concept
    detectors = sum(r["detector"].strip() == "1" and r["concept"] in findings for r in diss)
    sidecar = json.loads(model.with_suffix(".json").read_text())
    return dict(loss=loss, cam_iobb=loc[("cam", "all", "iobb", "")], cam_ior=loc[("cam", "all", "ior", "")],
                random_iobb=loc[("random", "all", "iobb", "")], cam_iou_05=loc[("cam", "all", "iou", "0.5")],
                disjoint=conc["disjoint"], unique=conc["unique"],
                finding_detectors=str(detectors), any_detectors=str(sum(r["detector"].strip() == "1" for r in diss)),
                heldout_auroc=f"{sum(sidecar['heldout_auroc'].values()) / len(sidecar['heldout_auroc']):.3f}")


def write_losses(rows: list[dict[str, str]], out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    with (out / "losses.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for ax, key in zip(axes, ("cam_iobb", "unique", "finding_detectors"), strict=True):
        for seed in sorted({r["seed"] for r in rows}):  # one marker per seed: the spread a loss must beat
            mine = [r for r in rows if r["seed"] == seed]
            ax.plot([r["loss"] for r in mine], [float(r[key]) for r in mine], "o", label=f"seed {seed}")
        ax.set_title(key)
    axes[0].axhline(float(rows[0]["random_iobb"]), color="gray", ls="--", label="random map")
    axes[0].legend(fontsize=7)
    fig.suptitle("[Khakzar2022] on 64 px phantom models: CAM soft IoBB, unique concepts, dissection detectors")
    fig.tight_layout()
    fig.savefig(out / "losses.png", dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())

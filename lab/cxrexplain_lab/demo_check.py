"""Does a pair of demo models make the case for the methods? Measured from the weights on held-out phantoms.

    python -m cxrexplain_lab.demo_check [--weights .cache/demo-weights] [--n 100] [--json out.json]

Loads ``cxr_densenet.pt`` and ``cxr_ae.pt`` (with their JSON sidecars, as ``make archives`` does) and reports,
on ``--n`` phantoms of a seed no training saw (``train_demo``'s held-out seed, 5000 + 2 * seed):

- AUROC per finding;
- the reconstruction gap on positive findings, mean |f(x) - f(D(E(x)))| with f the finding's probability
  ([Cohen2021] App. K): a counterfactual built from a reconstruction that has lost the finding shows nothing;
- for every detected finding (present, and at or above its operating point), the span of the latent-shift
  frames' probabilities (max - min, the engine's latent shift with default options), and the fraction whose
  span reaches ``--span`` (0.3);
- the CAM map's resolution (the last feature maps CAM weighs) at the model's input size.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrexplain import Explainer
from cxrexplain.models import load_autoencoder, load_classifier

from . import metrics
from .phantom import FINDINGS, PhantomDataset

HELDOUT_SEED = 5000  # train_demo's held-out test seed (5000 + 2 * seed): neither training nor validation saw it


def check(weights: Path, n: int = 100, seed: int = 0, span: float = 0.3, batch: int = 8) -> dict[str, Any]:
    """The figures of the module docstring for the models in ``weights`` (a folder)."""
    clf = load_classifier(None, weights / "cxr_densenet.pt", map_location="cpu")
    ae = load_autoencoder(None, weights / "cxr_ae.pt", map_location="cpu")
    explainer = Explainer(clf, ae, device="cpu")
    size = int(clf.input_spec.size or 0)
    data = PhantomDataset(n, size=size, seed=HELDOUT_SEED + 2 * seed)
    images = torch.stack([data[i][0] for i in range(n)])
    labels = data.label_matrix()
    x = clf.input_spec.from_unit(images)
    with torch.no_grad():
        probs = torch.cat([explainer.predict(c) for c in x.split(64)]).numpy()
        rec = torch.cat([ae.decode(ae.encode(ae.input_spec.from_unit(c))) for c in images.split(64)])
        rec_probs = torch.cat([explainer.predict(clf.input_spec.from_unit(ae.input_spec.to_unit(c)))
                               for c in rec.split(64)]).numpy()
        features = clf.traced.run(x[:1], (clf.cam_node,))[1][clf.cam_node]
    positive = labels > 0.5
    gaps = np.abs(probs - rec_probs)
    gap_per = {f: float(gaps[positive[:, k], k].mean()) for k, f in enumerate(FINDINGS) if positive[:, k].any()}

    thresholds = np.asarray(clf.op_thresholds)
    rows, cols = np.nonzero(positive & (probs >= thresholds))
    spans: list[float] = []
    for start in range(0, len(rows), batch):
        r, c = rows[start:start + batch], cols[start:start + batch]
        result = explainer.explain(x[torch.as_tensor(r)], ["latent_shift"], targets=[int(k) for k in c])
        assert result.latent_shift is not None
        fp = result.latent_shift.frame_probabilities
        spans += (fp.max(dim=1).values - fp.min(dim=1).values).tolist()
    span_arr = np.asarray(spans)
    span_per = {f: float((span_arr[cols == k] >= span).mean()) for k, f in enumerate(FINDINGS) if (cols == k).any()}
    auroc = np.atleast_1d(metrics.auroc(probs, labels))
    return dict(
        weights=str(weights), n=n, size=size, classifier=clf.architecture, autoencoder=ae.architecture,
        auroc={f: float(a) for f, a in zip(FINDINGS, auroc, strict=True)},
        positives=int(positive.sum()), gap_mean=float(gaps[positive].mean()), gap_per_finding=gap_per,
        detected=len(rows), span_threshold=span, span_fraction=float((span_arr >= span).mean()) if spans else None,
        span_median=float(np.median(span_arr)) if spans else None, span_fraction_per_finding=span_per,
        cam_layer=clf.cam_node, cam_map=list(features.shape[-2:]),
    )


def markdown(r: dict[str, Any]) -> str:
    """The figures as a short Markdown table."""
    lines = [f"{r['classifier']} + {r['autoencoder']} at {r['size']} px, {r['n']} held-out phantoms "
             f"({r['positives']} positive findings, {r['detected']} detected)", "",
             "| finding | " + " | ".join(FINDINGS) + " | all |", "| --- " * (len(FINDINGS) + 2) + "|"]
    lines.append("| AUROC | " + " | ".join(f"{r['auroc'][f]:.3f}" for f in FINDINGS) + " | |")
    lines.append("| mean \\|f(x) − f(D(E(x)))\\| on positives | "
                 + " | ".join(f"{r['gap_per_finding'].get(f, float('nan')):.3f}" for f in FINDINGS)
                 + f" | {r['gap_mean']:.3f} |")
    lines.append(f"| detected with frames spanning ≥ {r['span_threshold']} | "
                 + " | ".join(f"{r['span_fraction_per_finding'].get(f, float('nan')):.2f}" for f in FINDINGS)
                 + f" | {r['span_fraction']:.2f} |")
    lines.append("")
    lines.append(f"CAM map: {r['cam_map'][0]}×{r['cam_map'][1]} ({r['cam_layer']}); median frame span "
                 f"{r['span_median']:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cxrexplain_lab.demo_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", type=Path, default=Path(".cache/demo-weights"),
                   help="folder with cxr_densenet.pt/.json and cxr_ae.pt/.json (make demo-models writes it)")
    p.add_argument("--n", type=int, default=100, help="held-out phantoms (default 100)")
    p.add_argument("--seed", type=int, default=0, help="the training seed; the held-out seed follows from it")
    p.add_argument("--span", type=float, default=0.3, help="frame-probability span that counts (default 0.3)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    args = p.parse_args(argv)
    for name in ("cxr_densenet.pt", "cxr_ae.pt"):
        if not (args.weights / name).exists():
            p.error(f"{args.weights / name} is missing: run `make demo-models` or "
                    "`python -m cxrexplain_lab.train_demo --out DIR` first")
    torch.set_num_threads(args.threads)
    result = check(args.weights, n=args.n, seed=args.seed, span=args.span)
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

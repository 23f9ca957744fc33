"""Train the demo models on the phantom set and write weights + metadata sidecars for the exporter.

    python -m cxrexplain_lab.train_demo --out .cache/demo-weights [--size 96] [--seed 0] [--preset demo]

writes ``cxr_densenet.pt`` / ``cxr_densenet.json`` (the classifier: labels, input spec, operating points chosen
on a validation split by Youden's J, held-out AUROC per label, training config, seed) and ``cxr_ae.pt`` /
``cxr_ae.json`` (the autoencoder that backs latent shift: input spec, held-out reconstruction MAE). Training is
``cxrexplain_lab.demo_models.demo_classifier`` / ``demo_autoencoder``, the same code the test fixtures use, with the
served demo's settings (``cxrexplain_lab.demo_models.DEMO``: a classifier with 12x12 last maps at 96 px, an autoencoder
trained to keep its findings); ``--preset fixtures`` trains the tests' recipe instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from cxrexplain_lab import metrics
from cxrexplain_lab.demo_models import DEMO, DemoConfig, demo_autoencoder, demo_classifier
from cxrexplain_lab.phantom import FINDINGS, PhantomDataset
from cxrexplain_lab.train import predict

CLASSIFIER_NAME = "cxr_densenet"
AUTOENCODER_NAME = "cxr_ae"

log = logging.getLogger("cxrexplain_lab.train_demo")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cxrexplain_lab.train_demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="output folder for <name>.pt and <name>.json")
    p.add_argument("--preset", choices=["demo", "fixtures"], default="demo",
                   help="demo: the served demo's models (cxrexplain_lab.demo_models.DEMO, default); fixtures: the test "
                        "fixtures' recipe (DemoConfig())")
    p.add_argument("--size", type=int, default=None, help="input resolution in pixels (default: the preset's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=None, help="training phantoms (default: DemoConfig's)")
    p.add_argument("--epochs", type=int, default=None, help="classifier epochs (default: DemoConfig's)")
    p.add_argument("--ae-epochs", type=int, default=None, help="autoencoder epochs (default: the preset's)")
    p.add_argument("--ae-n-train", type=int, default=None, help="autoencoder training phantoms (default: the preset's)")
    p.add_argument("--ae-loss", default=None, choices=["l1", "mse", "elastic"],
                   help="autoencoder reconstruction loss (default: the preset's)")
    p.add_argument("--ae-consistency", type=float, default=None,
                   help="weight of the classifier-consistency term (default: the preset's; 0 turns it off)")
    p.add_argument("--loss", default=None, choices=["bce", "wbce", "focal", "cb_focal"],
                   help="classifier loss (default: the preset's, bce)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--skip-autoencoder", action="store_true")
    p.add_argument("--cache", type=Path, default=None,
                   help="reuse models trained before with the same config and sources (a folder)")
    return p


def _write(out: Path, name: str, module: torch.nn.Module, meta: dict) -> None:
    torch.save(module.state_dict(), out / f"{name}.pt")
    (out / f"{name}.json").write_text(json.dumps(meta, indent=2))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    overrides = {k: v for k, v in dict(n_train=args.n_train, epochs=args.epochs, ae_epochs=args.ae_epochs,
                                       ae_n_train=args.ae_n_train, ae_loss=args.ae_loss,
                                       ae_consistency=args.ae_consistency,
                                       size=args.size, loss=args.loss).items() if v is not None}
    config = replace(DEMO if args.preset == "demo" else DemoConfig(), seed=args.seed, **overrides)
    args.out.mkdir(parents=True, exist_ok=True)

    log.info("training the demo classifier at %d px on %d phantoms (%d epochs)", config.size, config.n_train,
             config.epochs)
    start = time.perf_counter()
    clf, meta = demo_classifier(config, cache_dir=args.cache, progress=True)
    # Held-out AUROC on phantoms neither training nor the operating-point split saw.
    test_set = PhantomDataset(1000, size=config.size, seed=config.seed * 2 + 5000, prevalence=config.prevalence)
    probs, labels = predict(clf.module, clf.input_spec, test_set)
    test_auroc = dict(zip(FINDINGS, (float(a) for a in np.atleast_1d(metrics.auroc(probs, labels))), strict=True))
    sidecar = dict(
        kind="classifier", architecture=config.arch, labels=list(FINDINGS), input_spec=clf.input_spec.to_dict(),
        op_thresholds=clf.op_thresholds, op_threshold_rule="youden_j_on_validation_split",
        heldout_auroc=test_auroc, validation_auroc=meta["val_auroc"], training=meta["report"]["config"],
        train_seconds=meta["report"]["seconds"], config=config.to_dict(), seed=config.seed,
        trained_on="procedural phantoms (cxrexplain_lab.phantom); not for diagnostic use",
    )
    _write(args.out, CLASSIFIER_NAME, clf.module, sidecar)
    log.info("classifier done in %.0f s; held-out AUROC %s", time.perf_counter() - start,
             ", ".join(f"{k} {v:.3f}" for k, v in test_auroc.items()))

    if not args.skip_autoencoder:
        log.info("training the demo autoencoder (%s, %d epochs)", config.ae_arch, config.ae_epochs)
        start = time.perf_counter()
        ae, ae_meta = demo_autoencoder(config, cache_dir=args.cache, progress=True)
        _write(args.out, AUTOENCODER_NAME, ae.module, dict(
            kind="autoencoder", architecture=config.ae_arch, input_spec=ae.input_spec.to_dict(),
            heldout_mae=ae_meta["val_mae"], training=ae_meta["report"]["config"],
            train_seconds=ae_meta["report"]["seconds"], config=config.to_dict(), seed=config.seed,
        ))
        log.info("autoencoder done in %.0f s; held-out reconstruction MAE %.4f", time.perf_counter() - start,
                 ae_meta["val_mae"])
    log.info("wrote %s", ", ".join(sorted(p.name for p in args.out.iterdir() if p.suffix in (".pt", ".json"))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The project's demo models: their configurations (the test fixtures' and the served demo's ``DEMO``), the
phantom splits they train on, and a cache keyed by the config and the sources that shape the weights.

:func:`demo_classifier` / :func:`demo_autoencoder` build, train (through :mod:`cxrexplain_lab.train`'s loops)
and cache them; the test fixtures, ``cxrexplain_lab.train_demo`` and the benchmarks all go through them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import cxrexplain
from cxrexplain.bundle import AutoencoderBundle, ClassifierBundle
from cxrexplain.spec import unit_spec

from . import metrics
from .phantom import FINDINGS, PhantomDataset
from .train import materialize, predict, train_autoencoder, train_classifier

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoConfig:
    """Everything that determines the demo models; a model's cache key hashes the fields it depends on."""

    size: int = 64
    n_train: int = 2400
    n_val: int = 600
    epochs: int = 7
    batch_size: int = 32
    lr: float = 2e-3
    loss: str = "bce"
    seed: int = 0
    prevalence: float = 0.3
    arch: str = "densenet_small"
    ae_arch: str = "resnet_ae_small"
    ae_n_train: int = 1200
    ae_epochs: int = 6
    ae_lr: float = 2e-3
    ae_loss: str = "l1"
    ae_consistency: float = 0.0  # > 0: train the autoencoder to keep this config's classifier's predictions

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fields_for(self, kind: str) -> dict[str, Any]:
        """The fields one model depends on (so retuning the autoencoder keeps the classifier's cache)."""
        shared = ("size", "n_val", "batch_size", "seed", "prevalence")
        own = ("n_train", "epochs", "lr", "loss", "arch") if kind == "classifier" else (
            "ae_arch", "ae_n_train", "ae_epochs", "ae_lr", "ae_loss", "ae_consistency")
        return {k: getattr(self, k) for k in shared + own}


# The served demo (`make demo-models`, `python -m cxrexplain_lab.train_demo`): models that show what the methods can
# do, where the fixtures' DemoConfig() is what the tests were written against. A classifier whose last maps are
# 12x12 at 96 px (``densenet_fine``, T-DenseNet's truncation) so CAM can outline a lesion. The autoencoder keeps
# the fixtures' recipe: the classifier-consistency term (``ae_consistency``) made it worse as tried (weights 1.0
# with the elastic loss and 0.1 with L1: held-out MAE 0.26 / 0.24 against 0.074, reconstruction gap 0.43 / 0.40
# against 0.28), so it stays off. Measured in BENCHMARKS.md "Demo models" (``python -m cxrexplain_lab.demo_check``).
DEMO = DemoConfig(size=96, arch="densenet_fine")


_HERE = Path(__file__).resolve().parent
_ENGINE = Path(cxrexplain.__file__).resolve().parent


def cache_key(config: DemoConfig, kind: str) -> str:
    """Hash of the config and the sources that shape the trained weights: a change retrains."""
    h = hashlib.sha256(json.dumps({"kind": kind, **config.fields_for(kind)}, sort_keys=True).encode())
    if kind == "autoencoder" and config.ae_consistency > 0:  # trained against this config's classifier
        h.update(cache_key(config, "classifier").encode())
    sources = [_HERE / "phantom.py", _HERE / "train.py", _HERE / "demo_models.py", _ENGINE / "spec.py"]
    # The classifier architectures (not weight loading) and the autoencoder's layers shape the weights.
    sources += ([_HERE / "losses.py", _ENGINE / "models" / "architectures.py"] if kind == "classifier"
                else [_ENGINE / "autoencoder.py"])
    for path in sources:
        h.update(path.read_bytes() if path.exists() else b"")
    h.update(torch.__version__.encode())
    return h.hexdigest()[:16]


def demo_datasets(config: DemoConfig) -> tuple[PhantomDataset, PhantomDataset]:
    """The train and validation phantom sets of a demo config (disjoint seeds)."""
    train = PhantomDataset(config.n_train, size=config.size, seed=config.seed * 2 + 1000,
                           prevalence=config.prevalence)
    val = PhantomDataset(config.n_val, size=config.size, seed=config.seed * 2 + 1001, prevalence=config.prevalence)
    return train, val


def operating_points(probs: np.ndarray, labels: np.ndarray) -> list[float]:
    """Per-label operating points maximizing Youden's J (sensitivity + specificity - 1) on a validation split."""
    return [float(metrics.youden_threshold(probs[:, k], labels[:, k])) for k in range(probs.shape[1])]


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    if path.suffix == ".json":
        tmp.write_text(json.dumps(obj, indent=2))
    else:
        torch.save(obj, tmp)
    tmp.replace(path)


def demo_classifier(config: DemoConfig = DemoConfig(), cache_dir: str | Path | None = None,
                    progress: bool = False, device: str | torch.device | None = None
                    ) -> tuple[ClassifierBundle, dict[str, Any]]:
    """The phantom-trained demo classifier and its metadata, loaded from ``cache_dir`` when trained before.

    Returns
    -------
    (ClassifierBundle, dict)
        The bundle (labels :data:`FINDINGS`, ``unit_spec(1, size)``, Youden operating points) and metadata:
        ``val_auroc`` per label, ``op_thresholds``, ``report`` (training figures), ``config``, ``cache_key``.
    """
    from cxrexplain.models import build_classifier

    spec = unit_spec(1, config.size)
    module = build_classifier(config.arch, num_labels=len(FINDINGS), in_channels=1)
    key = cache_key(config, "classifier")
    paths = _cache_paths(cache_dir, f"classifier-{key}")
    if paths and paths[0].exists() and paths[1].exists():
        module.load_state_dict(torch.load(paths[0], map_location="cpu", weights_only=True))
        meta = json.loads(paths[1].read_text())
    else:
        torch.manual_seed(config.seed)
        module = build_classifier(config.arch, num_labels=len(FINDINGS), in_channels=1)
        train_set, val_set = demo_datasets(config)
        val_cached = materialize(val_set, progress, "rendering val set")
        report = train_classifier(module, spec, train_set, epochs=config.epochs, batch_size=config.batch_size,
                                  lr=config.lr, loss=config.loss, seed=config.seed, progress=progress,
                                  val_dataset=val_cached, device=device, labels=list(FINDINGS))
        probs, ys = predict(module, spec, val_cached, device=device)
        meta = dict(kind="classifier", labels=list(FINDINGS), input_spec=spec.to_dict(), architecture=config.arch,
                    op_thresholds=operating_points(probs, ys), val_auroc=report.val_auroc,
                    report=report.to_dict(), config=config.to_dict(), cache_key=key)
        if paths:
            _save_atomic(module.cpu().state_dict(), paths[0])
            _save_atomic(meta, paths[1])
    module.cpu().eval()
    bundle = ClassifierBundle(module=module, labels=list(FINDINGS), input_spec=spec, architecture=config.arch,
                              op_thresholds=list(meta["op_thresholds"]), version=key,
                              extra={"val_auroc": meta["val_auroc"], "trained_on": "phantom"})
    return bundle, meta


def demo_autoencoder(config: DemoConfig = DemoConfig(), cache_dir: str | Path | None = None,
                     progress: bool = False, device: str | torch.device | None = None
                     ) -> tuple[AutoencoderBundle, dict[str, Any]]:
    """The phantom-trained demo autoencoder (``cxrexplain.autoencoder.build_autoencoder(config.ae_arch)``).

    With ``config.ae_consistency`` > 0 it is trained against :func:`demo_classifier`'s model of the same config
    (trained first, or read from the same cache).
    """
    from cxrexplain.autoencoder import build_autoencoder

    spec = unit_spec(1, config.size)
    key = cache_key(config, "autoencoder")
    paths = _cache_paths(cache_dir, f"autoencoder-{key}")
    if paths and paths[0].exists() and paths[1].exists():
        module = build_autoencoder(config.ae_arch)
        module.load_state_dict(torch.load(paths[0], map_location="cpu", weights_only=True))
        meta = json.loads(paths[1].read_text())
    else:
        torch.manual_seed(config.seed)
        module = build_autoencoder(config.ae_arch)
        train_set, val_set = demo_datasets(config)
        train_set = PhantomDataset(config.ae_n_train, size=config.size, seed=train_set.seed,
                                   prevalence=config.prevalence)
        classifier = None
        if config.ae_consistency > 0:
            clf, _ = demo_classifier(config, cache_dir=cache_dir, progress=progress, device=device)
            classifier = (clf.module, clf.input_spec)
            torch.manual_seed(config.seed)  # the classifier's training drew from the global generator
            module = build_autoencoder(config.ae_arch)
        report = train_autoencoder(module, spec, train_set, epochs=config.ae_epochs, batch_size=config.batch_size,
                                   lr=config.ae_lr, loss=config.ae_loss, seed=config.seed, progress=progress,
                                   val_dataset=val_set, device=device, classifier=classifier,
                                   consistency=config.ae_consistency)
        meta = dict(kind="autoencoder", input_spec=spec.to_dict(), architecture=config.ae_arch,
                    val_mae=report.val_mae, report=report.to_dict(), config=config.to_dict(), cache_key=key)
        if paths:
            _save_atomic(module.cpu().state_dict(), paths[0])
            _save_atomic(meta, paths[1])
    module.cpu().eval()
    return AutoencoderBundle(module=module, input_spec=spec, architecture=config.ae_arch, version=key), meta


def _cache_paths(cache_dir: str | Path | None, stem: str) -> tuple[Path, Path] | None:
    if cache_dir is None:
        return None
    root = Path(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    return root / f"{stem}.pt", root / f"{stem}.json"

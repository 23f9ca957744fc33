"""Training the demo models on the phantom set: one classifier loop ([Khakzar2022]'s losses), one autoencoder loop.

Both loops take unit-space gray batches (N, 1, H, W) in [0, 1] from a data set and map them into the model's
input space with ``input_spec.from_unit``, so the same code trains a unit-space demo model or a model with
torchvision / torchxrayvision normalization. Runs are deterministic for a seed on one device: the global torch
seed, a seeded DataLoader generator (no worker processes) and a seeded augmentation generator.

:func:`demo_classifier` / :func:`demo_autoencoder` build, train and cache the project's demo models; the test
fixtures, ``cxrexplain_lab.train_demo`` and the benchmarks all go through them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm.auto import tqdm

import cxrexplain
from cxrexplain.bundle import AutoencoderBundle, ClassifierBundle
from cxrexplain.explainer import select_device
from cxrexplain.spec import InputSpec, unit_spec

from . import metrics
from .losses import make_loss
from .phantom import FINDINGS, PhantomDataset

log = logging.getLogger(__name__)


@dataclass
class TrainReport:
    """What a training run measured.

    ``epoch_losses`` is the mean training loss per epoch. With a validation set: ``val_auroc`` maps each label
    to its AUROC after the last epoch (classifier), ``val_history`` holds the per-epoch validation figure
    (mean AUROC, or reconstruction MAE for the autoencoder), ``val_mae`` the final reconstruction MAE.
    """

    epoch_losses: list[float] = field(default_factory=list)
    val_auroc: dict[str, float] = field(default_factory=dict)
    val_history: list[float] = field(default_factory=list)
    val_mae: float | None = None
    seconds: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------------ helpers


def materialize(dataset: Dataset, progress: bool = False, desc: str = "rendering") -> TensorDataset:
    """Render every item once into memory (phantoms are drawn on the fly; epochs then reuse the tensors)."""
    if isinstance(dataset, TensorDataset):
        return dataset
    items = [dataset[i] for i in tqdm(range(len(dataset)), desc=desc, disable=not progress, leave=False)]  # type: ignore[arg-type]
    images = torch.stack([torch.as_tensor(x) for x, _ in items])
    labels = torch.stack([torch.as_tensor(y, dtype=torch.float32) for _, y in items])
    return TensorDataset(images, labels)


def _labels_of(dataset: Dataset) -> torch.Tensor:
    if isinstance(dataset, PhantomDataset):
        return torch.from_numpy(dataset.label_matrix())
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1].float()
    return torch.stack([torch.as_tensor(dataset[i][1], dtype=torch.float32) for i in range(len(dataset))])  # type: ignore[arg-type]


def _augment(g: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Light augmentation in unit space: a shift of up to 4 % and a contrast/brightness jitter.

    Flips are left out on purpose: the heart's side is anatomy, not noise.
    """
    n, _, h, w = g.shape
    shift = torch.randint(-max(1, h // 25), max(1, h // 25) + 1, (2,), generator=gen)
    g = torch.roll(g, shifts=(int(shift[0]), int(shift[1])), dims=(-2, -1))
    contrast = 1.0 + 0.15 * (2 * torch.rand(n, 1, 1, 1, generator=gen) - 1)
    bright = 0.05 * (2 * torch.rand(n, 1, 1, 1, generator=gen) - 1)
    return ((g - 0.5) * contrast + 0.5 + bright).clamp(0.0, 1.0)


def _loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=0, generator=gen)


@torch.no_grad()
def predict(model: nn.Module, input_spec: InputSpec, dataset: Dataset, batch_size: int = 64,
            device: str | torch.device | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid probabilities and labels of a data set: ``(probs (N, L), labels (N, L))``."""
    dev = select_device(device)
    was_training = model.training
    model.eval().to(dev)
    probs, labels = [], []
    for g, y in _loader(dataset, batch_size, shuffle=False, seed=0):
        probs.append(torch.sigmoid(model(input_spec.from_unit(g.to(dev)))).cpu())
        labels.append(y)
    model.train(was_training)
    return torch.cat(probs).numpy(), torch.cat(labels).numpy()


def _seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed + 1)


# ------------------------------------------------------------------------------------------------ loops


def train_classifier(
    model: nn.Module,
    input_spec: InputSpec,
    dataset: Dataset,
    *,
    epochs: int,
    batch_size: int = 32,
    lr: float = 1e-3,
    loss: str = "bce",
    seed: int = 0,
    progress: bool = True,
    val_dataset: Dataset | None = None,
    device: str | torch.device | None = None,
    loss_params: dict[str, Any] | None = None,
    weight_decay: float = 1e-6,
    augment: bool = True,
    cache: bool = True,
    labels: list[str] | None = None,
) -> TrainReport:
    """Train a multi-label classifier in place with a loss of [Khakzar2022] eq. 2.

    Adam with weight decay and a cosine-annealed learning rate, as in [Khakzar2022] §4 (there: lr 4e-4, decay 1e-6).

    Parameters
    ----------
    model
        Maps ``input_spec.from_unit(g)`` to (N, L) logits.
    input_spec
        The model's input space.
    dataset
        Items ``(g (1, H, W) in [0, 1], labels (L,))``, e.g. :class:`~cxrexplain_lab.phantom.PhantomDataset`.
    epochs, batch_size, lr, weight_decay
        Optimization settings.
    loss
        ``"bce"``, ``"wbce"``, ``"focal"`` or ``"cb_focal"`` (:func:`cxrexplain_lab.losses.make_loss`); the class
        counts come from ``dataset``'s labels. ``loss_params`` go to the loss (alpha, gamma, beta).
    seed
        Seeds weight-independent randomness: shuffling, augmentation, dropout.
    progress
        Show a tqdm bar.
    val_dataset
        When given, per-label AUROC is measured after every epoch.
    device
        Default: CUDA when present.
    augment
        Light shift and contrast jitter (:func:`_augment`).
    cache
        Render the data sets into memory once (see :func:`materialize`).
    labels
        Label names for the report (default: the data set's ``labels`` attribute, else indices).
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    dev = select_device(device)
    aug_gen = _seed_everything(seed)
    names = list(labels or getattr(dataset, "labels", None) or [])
    criterion = make_loss(loss, label_frequencies=_labels_of(dataset) if loss in ("wbce", "cb_focal") else None,
                          **(loss_params or {})).to(dev)
    train_set = materialize(dataset, progress, "rendering train set") if cache else dataset
    val_set = materialize(val_dataset, progress, "rendering val set") if (cache and val_dataset) else val_dataset
    report = TrainReport(config=dict(kind="classifier", epochs=epochs, batch_size=batch_size, lr=lr, loss=loss,
                                     loss_params=loss_params or {}, seed=seed, weight_decay=weight_decay,
                                     augment=augment, n_train=len(train_set)))  # type: ignore[arg-type]

    def validate() -> dict[str, str]:
        nonlocal names
        if val_set is None:
            return {}
        probs, ys = predict(model, input_spec, val_set, device=dev)
        per_label = np.atleast_1d(metrics.auroc(probs, ys))
        report.val_history.append(float(np.nanmean(per_label)))
        if not names:
            names = [str(i) for i in range(len(per_label))]
        report.val_auroc = {n: float(a) for n, a in zip(names, per_label, strict=True)}
        return {"val_auroc": f"{report.val_history[-1]:.3f}"}

    return _fit(model, train_set, report, lambda g, y: criterion(model(input_spec.from_unit(g)), y), validate,
                epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed,
                augment=augment, aug_gen=aug_gen, device=dev, progress=progress)


def _reconstruct(ae: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return ae.decode(ae.encode(x))  # type: ignore[operator]


def train_autoencoder(
    ae: nn.Module,
    input_spec: InputSpec,
    dataset: Dataset,
    *,
    epochs: int,
    batch_size: int = 32,
    lr: float = 1e-3,
    loss: str = "l1",
    seed: int = 0,
    progress: bool = True,
    val_dataset: Dataset | None = None,
    device: str | torch.device | None = None,
    weight_decay: float = 0.0,
    augment: bool = True,
    cache: bool = True,
    classifier: tuple[nn.Module, InputSpec] | None = None,
    consistency: float = 0.0,
) -> TrainReport:
    """Train an autoencoder (``encode``/``decode``) in place on reconstruction in its own input space.

    ``loss`` is ``"l1"`` (mean absolute error, as the [Cohen2021] autoencoders report), ``"mse"`` or ``"elastic"``
    (their sum, the loss of the [Cohen2021] §4.1 autoencoder). With a validation set, the report holds the
    reconstruction MAE in unit space per epoch (``val_history``) and at the end.

    ``classifier`` (a frozen module and its input spec) with ``consistency`` > 0 adds a classifier-consistency
    term: ``consistency`` times the binary cross-entropy of f(D(E(x))) against the soft targets sigmoid(f(x)), all
    labels. Latent shift is "limited by the latent representation of the autoencoder. If the decoder is not
    expressive enough then it will not be able to correctly represent the features used by the classifier"
    ([Cohen2021] §3), and App. K measures the cost: predictions on positive images drop by 0.12 on average after
    reconstruction. The paper trains on reconstruction alone; this term is our addition for a small demo
    autoencoder that must keep small findings through its bottleneck. It ties the autoencoder to that classifier.
    Other parameters as in :func:`train_classifier`.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    losses: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
        "l1": F.l1_loss, "mse": F.mse_loss, "elastic": lambda a, b: F.l1_loss(a, b) + F.mse_loss(a, b)}
    if loss not in losses:
        raise ValueError(f"unknown reconstruction loss {loss!r}; choose 'l1', 'mse' or 'elastic'")
    if consistency > 0 and classifier is None:
        raise ValueError("consistency > 0 needs the classifier=(module, input_spec) whose predictions to keep")
    for name in ("encode", "decode"):
        if not callable(getattr(ae, name, None)):
            raise TypeError(f"an autoencoder needs an '{name}' method; {type(ae).__name__} has none")
    dev = select_device(device)
    aug_gen = _seed_everything(seed)
    train_set = materialize(dataset, progress, "rendering train set") if cache else dataset
    val_set = materialize(val_dataset, progress, "rendering val set") if (cache and val_dataset) else val_dataset
    report = TrainReport(config=dict(kind="autoencoder", epochs=epochs, batch_size=batch_size, lr=lr, loss=loss,
                                     seed=seed, weight_decay=weight_decay, augment=augment,
                                     n_train=len(train_set), consistency=consistency))  # type: ignore[arg-type]
    criterion = losses[loss]
    if classifier is not None and consistency > 0:
        clf, clf_spec = classifier
        clf.to(dev).eval()
        for p in clf.parameters():
            p.requires_grad_(False)

    def reconstruction_loss(g: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
        x = input_spec.from_unit(g)
        rec = _reconstruct(ae, x)
        value = criterion(rec, x)
        if classifier is not None and consistency > 0:
            with torch.no_grad():
                soft = torch.sigmoid(clf(clf_spec.from_unit(g)))
            logits = clf(clf_spec.from_unit(input_spec.to_unit(rec)))
            value = value + consistency * F.binary_cross_entropy_with_logits(logits, soft)
        return value

    def validate() -> dict[str, str]:
        if val_set is not None:
            report.val_mae = reconstruction_mae(ae, input_spec, val_set, device=dev)
            report.val_history.append(report.val_mae)
        return {}

    return _fit(ae, train_set, report, reconstruction_loss, validate, epochs=epochs, batch_size=batch_size, lr=lr,
                weight_decay=weight_decay, seed=seed, augment=augment, aug_gen=aug_gen, device=dev,
                progress=progress)


def _fit(
    module: nn.Module,
    train_set: Dataset,
    report: TrainReport,
    batch_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    validate: Callable[[], dict[str, str]],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    augment: bool,
    aug_gen: torch.Generator,
    device: torch.device,
    progress: bool,
) -> TrainReport:
    """The loop both trainers share: Adam, cosine-annealed learning rate, optional augmentation, a tqdm bar.

    ``batch_loss(g, y)`` maps a unit-space batch and its labels to the loss; ``validate()`` runs after each
    epoch, records into ``report`` and returns extra progress-bar fields.
    """
    kind = str(report.config["kind"])
    module.to(device)
    opt = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)
    loader = _loader(train_set, batch_size, shuffle=True, seed=seed)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * len(loader))
    start = time.perf_counter()
    bar = tqdm(total=epochs * len(loader), desc=kind, disable=not progress)
    for epoch in range(epochs):
        module.train()
        total, count = 0.0, 0
        for g, y in loader:
            g, y = g.to(device), y.to(device)
            if augment:
                g = _augment(g.cpu(), aug_gen).to(device)
            loss = batch_loss(g, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(g)
            count += len(g)
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{total / count:.4f}")
        report.epoch_losses.append(total / count)
        extra = validate()
        if extra:
            bar.set_postfix(epoch=epoch + 1, loss=f"{total / count:.4f}", **extra)
        log.info("%s epoch %d/%d: loss %.4f", kind, epoch + 1, epochs, report.epoch_losses[-1])
    bar.close()
    module.eval()
    report.seconds = time.perf_counter() - start
    return report


@torch.no_grad()
def reconstruction_mae(ae: nn.Module, input_spec: InputSpec, dataset: Dataset, batch_size: int = 64,
                       device: str | torch.device | None = None) -> float:
    """Mean absolute reconstruction error in unit space ([0, 1] gray) over a data set."""
    dev = select_device(device)
    was_training = ae.training
    ae.eval().to(dev)
    total, count = 0.0, 0
    for g, _ in _loader(dataset, batch_size, shuffle=False, seed=0):
        g = g.to(dev)
        rec = input_spec.to_unit(_reconstruct(ae, input_spec.from_unit(g)))
        total += float((rec - g).abs().sum())
        count += g.numel()
    ae.train(was_training)
    return total / count


# ------------------------------------------------------------------------------------------------ demo models


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
    sources = [_HERE / "phantom.py", _HERE / "train.py", _ENGINE / "spec.py"]
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

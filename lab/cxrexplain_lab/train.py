"""Training the demo models on the phantom set: one classifier loop ([Khakzar2022]'s losses), one autoencoder loop.

Both loops take unit-space gray batches (N, 1, H, W) in [0, 1] from a data set and map them into the model's
input space with ``input_spec.from_unit``, so the same code trains a unit-space demo model or a model with
torchvision / torchxrayvision normalization. Runs are deterministic for a seed on one device: the global torch
seed, a seeded DataLoader generator (no worker processes) and a seeded augmentation generator.

The demo models' configurations and their cache (what the test fixtures, ``cxrexplain_lab.train_demo`` and the
benchmarks train through these loops) are in :mod:`cxrexplain_lab.demo_models`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm.auto import tqdm

from cxrexplain.explainer import select_device
from cxrexplain.spec import InputSpec

from . import metrics
from .losses import make_loss
from .phantom import PhantomDataset

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

"""The trainer: determinism, reports, the losses wired in; the cached phantom fixtures reach their figures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from cxrexplain.autoencoder import build_autoencoder
from cxrexplain.models import build_classifier
from cxrexplain.spec import TORCHVISION, unit_spec
from cxrexplain_lab import metrics
from cxrexplain_lab.demo_models import DemoConfig, cache_key
from cxrexplain_lab.phantom import FINDINGS, PhantomDataset
from cxrexplain_lab.train import (
    materialize,
    predict,
    reconstruction_mae,
    train_autoencoder,
    train_classifier,
)


def _tiny_classifier(in_channels: int = 1) -> nn.Module:
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, len(FINDINGS)))


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_classifier_training_is_deterministic():
    data = PhantomDataset(24, size=32, seed=5)
    states = []
    for _ in range(2):
        torch.manual_seed(123)
        model = build_classifier("densenet_small", num_labels=len(FINDINGS), in_channels=1)
        report = train_classifier(model, unit_spec(1, 32), data, epochs=1, batch_size=8, seed=9, progress=False,
                                  device="cpu")
        states.append(_state(model))
        assert len(report.epoch_losses) == 1 and np.isfinite(report.epoch_losses[0])
    assert states[0].keys() == states[1].keys()
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k
    # A different seed shuffles and augments differently.
    torch.manual_seed(123)
    model = build_classifier("densenet_small", num_labels=len(FINDINGS), in_channels=1)
    train_classifier(model, unit_spec(1, 32), data, epochs=1, batch_size=8, seed=10, progress=False, device="cpu")
    assert not torch.equal(_state(model)["classifier.weight"], states[0]["classifier.weight"])


@pytest.mark.parametrize("loss", ["bce", "wbce", "focal", "cb_focal"])
def test_every_loss_trains_and_reports_auroc(loss):
    data = materialize(PhantomDataset(32, size=24, seed=1, prevalence=0.5))
    val = PhantomDataset(16, size=24, seed=2, prevalence=0.5)
    torch.manual_seed(0)
    model = _tiny_classifier(3)
    # A torchvision-style model: the trainer maps unit gray to 3-channel ImageNet-normalized input.
    report = train_classifier(model, TORCHVISION, data, epochs=2, batch_size=8, loss=loss, progress=False,
                              val_dataset=val, device="cpu", labels=list(FINDINGS))
    assert len(report.epoch_losses) == 2 and all(np.isfinite(report.epoch_losses))
    assert list(report.val_auroc) == list(FINDINGS) and len(report.val_history) == 2
    probs, labels = predict(model, TORCHVISION, val)
    np.testing.assert_allclose(list(report.val_auroc.values()), metrics.auroc(probs, labels))
    assert report.config["loss"] == loss and report.seconds > 0


def test_training_reduces_the_loss():
    data = PhantomDataset(64, size=32, seed=3, prevalence=0.5)
    torch.manual_seed(0)
    model = _tiny_classifier()
    report = train_classifier(model, unit_spec(1, 32), data, epochs=6, batch_size=16, lr=1e-2, progress=False,
                              device="cpu", augment=False)
    assert report.epoch_losses[-1] < report.epoch_losses[0]


class _TinyAE(nn.Module):
    """A two-layer conv autoencoder: enough to test the loop (the real one is trained by the fixture)."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(1, 8, 4, stride=2, padding=1), nn.ReLU())
        self.dec = nn.ConvTranspose2d(8, 1, 4, stride=2, padding=1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.enc(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.dec(z)


def test_autoencoder_training_reduces_reconstruction_error():
    data = materialize(PhantomDataset(32, size=32, seed=4))
    spec = unit_spec(1, 32)
    torch.manual_seed(0)
    ae = _TinyAE()
    report = train_autoencoder(ae, spec, data, epochs=3, batch_size=8, lr=1e-2, progress=False, val_dataset=data,
                               device="cpu")
    assert len(report.epoch_losses) == 3 and report.val_mae is not None
    assert report.epoch_losses[-1] < report.epoch_losses[0]
    assert report.val_history[-1] < report.val_history[0]
    assert report.val_mae == pytest.approx(reconstruction_mae(ae, spec, data))


@pytest.mark.slow
def test_autoencoder_training_runs_the_real_layout():
    torch.manual_seed(0)
    ae = build_autoencoder("resnet_ae_small")
    report = train_autoencoder(ae, unit_spec(1, 32), PhantomDataset(8, size=32, seed=4), epochs=1, batch_size=4,
                               progress=False, device="cpu")
    assert len(report.epoch_losses) == 1 and np.isfinite(report.epoch_losses[0])


def test_consistency_term_keeps_the_classifier_s_predictions_on_reconstructions():
    # The same autoencoder, seed and data, trained with and without the classifier-consistency term: with it,
    # the classifier's probabilities on D(E(x)) stay closer to those on x (what latent shift starts from).
    data = materialize(PhantomDataset(32, size=32, seed=4))
    spec = unit_spec(1, 32)
    torch.manual_seed(1)
    # Max-pooled, so small bright details that a blurry reconstruction loses move its outputs.
    clf = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(),
                        nn.Linear(8, len(FINDINGS)))
    train_classifier(clf, spec, data, epochs=5, batch_size=8, lr=2e-2, progress=False, device="cpu")
    gaps = []
    for weight in (0.0, 10.0):
        torch.manual_seed(0)
        ae = _TinyAE()
        report = train_autoencoder(ae, spec, data, epochs=3, batch_size=8, lr=1e-2, progress=False, device="cpu",
                                   augment=False, classifier=(clf, spec), consistency=weight)
        assert report.config["consistency"] == weight
        with torch.no_grad():
            g = data.tensors[0]
            gaps.append(float((torch.sigmoid(clf(ae.decode(ae.encode(g)))) - torch.sigmoid(clf(g))).abs().mean()))
    assert gaps[1] < 0.5 * gaps[0], gaps


def test_trainer_errors():
    data = PhantomDataset(4, size=16)
    with pytest.raises(ValueError, match="epochs"):
        train_classifier(_tiny_classifier(), unit_spec(1, 16), data, epochs=0, progress=False)
    with pytest.raises(ValueError, match="unknown loss"):
        train_classifier(_tiny_classifier(), unit_spec(1, 16), data, epochs=1, loss="hinge", progress=False)
    with pytest.raises(TypeError, match="encode"):
        train_autoencoder(_tiny_classifier(), unit_spec(1, 16), data, epochs=1, progress=False)
    with pytest.raises(ValueError, match="classifier"):
        train_autoencoder(_TinyAE(), unit_spec(1, 16), data, epochs=1, progress=False, consistency=1.0)


def test_cache_key_changes_with_config():
    assert cache_key(DemoConfig(), "classifier") == cache_key(DemoConfig(), "classifier")
    assert cache_key(DemoConfig(), "classifier") != cache_key(DemoConfig(epochs=1), "classifier")
    assert cache_key(DemoConfig(), "classifier") != cache_key(DemoConfig(), "autoencoder")
    # Each model hashes only the fields it depends on.
    assert cache_key(DemoConfig(), "autoencoder") == cache_key(DemoConfig(epochs=1), "autoencoder")
    assert cache_key(DemoConfig(), "classifier") == cache_key(DemoConfig(ae_epochs=1), "classifier")
    # An autoencoder trained against the classifier retrains when the classifier does.
    assert cache_key(DemoConfig(ae_consistency=1.0), "autoencoder") != cache_key(
        DemoConfig(ae_consistency=1.0, epochs=1), "autoencoder")


@pytest.mark.slow
def test_phantom_classifier_is_confident(phantom_classifier_meta, phantom_eval_set):
    bundle, meta = phantom_classifier_meta
    assert bundle.labels == list(FINDINGS)
    assert bundle.input_spec == unit_spec(1, 64)
    probs, labels = predict(bundle.module, bundle.input_spec, phantom_eval_set, device="cpu")
    auc = dict(zip(FINDINGS, metrics.auroc(probs, labels), strict=True))
    # The large findings are learned well at 64 px; the nodule (a few pixels) is the hard one.
    for name in ("Cardiomegaly", "Mass", "Effusion", "Pneumothorax"):
        assert auc[name] >= 0.9, (name, auc)
    assert auc["Nodule"] >= 0.7, auc
    assert all(0.0 < t < 1.0 for t in bundle.op_thresholds)
    assert set(meta["val_auroc"]) == set(FINDINGS)


@pytest.mark.slow
def test_phantom_autoencoder_reconstructs(phantom_autoencoder_meta, phantom_images):
    bundle, meta = phantom_autoencoder_meta
    with torch.no_grad():
        x = bundle.input_spec.from_unit(phantom_images)
        rec = bundle.input_spec.to_unit(bundle.module.decode(bundle.module.encode(x)))
    assert rec.shape == phantom_images.shape
    mae = float((rec - phantom_images).abs().mean())
    # A constant-mean image scores about 0.2 on phantoms; the autoencoder must do far better.
    baseline = float((phantom_images - phantom_images.mean()).abs().mean())
    assert mae < 0.5 * baseline, (mae, baseline)
    assert meta["val_mae"] < 0.5 * baseline

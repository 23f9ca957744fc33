"""Shared fixtures: phantom-trained demo models, trained once and cached on disk, and held-out phantoms.

The cache lives in ``<repo>/.cache/test-models/``, keyed by a hash of the training config and of the sources
that shape the weights (phantom.py, train.py, losses.py, spec.py, models/architectures.py / autoencoder.py):
editing any of them retrains on the next run. Training goes through ``cxrexplain_lab.demo_models.demo_classifier`` /
``demo_autoencoder``, the same code ``python -m cxrexplain_lab.train_demo`` and the benchmarks use.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from cxrexplain_lab.demo_models import DemoConfig, demo_autoencoder, demo_classifier
from cxrexplain_lab.phantom import FINDINGS, PhantomDataset, PhantomSample

CACHE_DIR = Path(__file__).parents[1] / ".cache" / "test-models"

# 64 px, 2400 training phantoms; see DemoConfig for the rest. Budget: a few minutes on 2 CPU threads.
TEST_CONFIG = DemoConfig(size=64)

log = logging.getLogger(__name__)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: trains or runs long (deselect with -m 'not slow')")
    config.addinivalue_line("markers", "serve: starts a real TorchServe (Java); needs torchserve installed")


@contextlib.contextmanager
def _cache_lock(name: str) -> Iterator[None]:
    """Serialize training across concurrent pytest processes: the second waits, then loads the cache."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / f"{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _train_with_threads(fn, *args, **kwargs):
    """Train (or load) on exactly 2 threads, then restore the caller's thread count.

    Exactly 2, whatever the tests before set: float reductions differ with the thread count, so a model trained
    on another count is another model, and the tests that read the fixtures must see the same one every run.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    start = time.perf_counter()
    try:
        with _cache_lock(fn.__name__):
            return fn(*args, **kwargs)
    finally:
        torch.set_num_threads(threads)
        log.info("%s ready in %.1f s", fn.__name__, time.perf_counter() - start)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a module's tests (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``),
    restored afterwards, so no module changes the thread count of the modules after it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def phantom_config() -> DemoConfig:
    """The config the phantom fixtures are trained with (64 px)."""
    return TEST_CONFIG


@pytest.fixture(scope="session")
def phantom_classifier_meta(phantom_config):
    """``(ClassifierBundle, metadata)``: metadata holds ``val_auroc`` per label, ``op_thresholds``, ``report``."""
    return _train_with_threads(demo_classifier, phantom_config, cache_dir=CACHE_DIR, progress=False, device="cpu")


@pytest.fixture(scope="session")
def phantom_classifier(phantom_classifier_meta):
    """A ``ClassifierBundle``: ``densenet_small`` on 1-channel unit-space 64 px phantoms, labels FINDINGS."""
    return phantom_classifier_meta[0]


@pytest.fixture(scope="session")
def phantom_autoencoder_meta(phantom_config):
    """``(AutoencoderBundle, metadata)``: metadata holds ``val_mae`` (unit space) and the training report."""
    return _train_with_threads(demo_autoencoder, phantom_config, cache_dir=CACHE_DIR, progress=False, device="cpu")


@pytest.fixture(scope="session")
def phantom_autoencoder(phantom_autoencoder_meta):
    """An ``AutoencoderBundle``: ``resnet_ae_small`` trained on 64 px phantoms in unit space."""
    return phantom_autoencoder_meta[0]


@pytest.fixture(scope="session")
def phantom_batch(phantom_config) -> list[PhantomSample]:
    """Eight held-out 64 px phantoms (seeds unseen in training), each with at least one finding, so every
    finding appears with its box and mask. ``torch.stack([torch.from_numpy(s.image)[None] for s in batch])``
    gives the (8, 1, 64, 64) unit-space batch."""
    from cxrexplain_lab.phantom import make_phantom

    picks = [["Cardiomegaly"], ["Nodule"], ["Mass"], ["Effusion"], ["Pneumothorax"], ["Cardiomegaly", "Effusion"],
             ["Mass", "Pneumothorax"], ["Nodule", "Cardiomegaly"]]
    return [make_phantom(900_000 + i, size=phantom_config.size, findings=f) for i, f in enumerate(picks)]


@pytest.fixture(scope="session")
def phantom_images(phantom_batch) -> torch.Tensor:
    """The :func:`phantom_batch` images as an (8, 1, H, W) float32 tensor in [0, 1]."""
    return torch.stack([torch.from_numpy(s.image)[None] for s in phantom_batch])


@pytest.fixture(scope="session")
def phantom_eval_set(phantom_config) -> PhantomDataset:
    """A held-out phantom set (400 items, 64 px) for AUROC checks."""
    return PhantomDataset(400, size=phantom_config.size, seed=777_001, prevalence=0.3)


__all__ = ["CACHE_DIR", "FINDINGS", "TEST_CONFIG"]

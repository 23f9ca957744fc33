"""Cascading randomization sanity check (Adebayo et al. 2018, as replicated in [Cohen2021] §4.5 and App. H).

The trained phantom classifier (``densenet_small``, 64 px) is re-initialized block by block from the output
backwards; after each step every method explains the same held-out phantoms again, and the Spearman rank
correlation between the absolute value of each new map and of the original is averaged over the images ([Cohen2021]
App. H takes absolute values of all maps because latent-shift maps are absolute by construction).

Asserted: CAM, Grad-CAM, saliency, integrated gradients and latent shift decorrelate (the correlation after
randomizing everything is below the one after randomizing only the classifier, or that one is already below
0.3; and below 0.9 from the last dense block on). LRP, RAP and guided backprop are not asserted here:
modified-backprop rules are known to be weakly sensitive to the parameters (Adebayo et al.; [Cohen2021] Fig. 5 shows
it for guided backprop), so there is no property of theirs to hold them to.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

from cxrexplain import AutoencoderBundle, ClassifierBundle, Explainer
from cxrexplain_lab.metrics import spearman

ASSERTED = ["cam", "gradcam", "saliency", "integrated_gradients", "latent_shift"]
OPTIONS = {"integrated_gradients": {"steps": 32}}

# Cumulative cascade, output first. norm5 belongs to the last dense block's step and norm0 to the stem's.
CASCADE = [
    ("classifier", ["classifier"]),
    ("denseblock4", ["features.denseblock4", "features.norm5"]),
    ("transition3", ["features.transition3"]),
    ("denseblock3", ["features.denseblock3"]),
    ("transition2", ["features.transition2"]),
    ("denseblock2", ["features.denseblock2"]),
    ("transition1", ["features.transition1"]),
    ("denseblock1", ["features.denseblock1"]),
    ("conv0", ["features.conv0", "features.norm0"]),
]

# Trains the phantom fixtures on first use (cached afterwards), then ~10 explanations per method.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each row's flattened maps; 0 where a map is constant.

    A constant map (Grad-CAM's ReLU can leave all zeros once the weights are random) ranks no pixel above
    another, so it keeps none of the original ranking: its correlation counts as 0 rather than NaN.
    """
    rho = np.asarray(spearman(a, b, batch=True), dtype=np.float64)
    return np.nan_to_num(rho, nan=0.0)


def randomize(module: nn.Module, paths: list[str], seed: int) -> None:
    """Re-initialize every layer under ``paths`` with PyTorch's default initialization (random for conv and
    linear weights; BatchNorm back to its identity affine and fresh running statistics)."""
    torch.manual_seed(seed)
    for path in paths:
        for layer in module.get_submodule(path).modules():
            if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                layer.reset_running_stats()
            reset = getattr(layer, "reset_parameters", None)
            if callable(reset):
                reset()


def run_cascade(bundle: ClassifierBundle, images: torch.Tensor, targets: list[str], methods: list[str],
                autoencoder: AutoencoderBundle | None = None) -> dict[str, list[float]]:
    """Mean Spearman correlation per method (keys) and cascade step (list entries)."""

    def explain(module: nn.Module) -> dict[str, np.ndarray]:
        copy_ = ClassifierBundle(module=module, labels=list(bundle.labels), input_spec=bundle.input_spec,
                                 cam_layer=bundle.cam_layer)
        ex = Explainer(copy_, autoencoder=autoencoder, device="cpu")
        return {name: ex.explain(images, methods=[name], targets=targets, options=OPTIONS).heatmaps[name]
                .abs().numpy() for name in methods}

    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, threads))
    try:
        original = explain(copy.deepcopy(bundle.module))
        module = copy.deepcopy(bundle.module)
        table: dict[str, list[float]] = {name: [] for name in methods}
        for step, (_, paths) in enumerate(CASCADE):
            randomize(module, paths, seed=1000 + step)
            maps = explain(copy.deepcopy(module))
            for name in methods:
                table[name].append(float(np.mean(spearman_rows(original[name], maps[name]))))
    finally:
        torch.set_num_threads(threads)
    return table


@pytest.fixture(scope="module")
def phantoms(request: pytest.FixtureRequest) -> tuple[ClassifierBundle, torch.Tensor, list[str]]:
    batch = request.getfixturevalue("phantom_batch")
    targets = [sample.present[0] for sample in batch]
    return request.getfixturevalue("phantom_classifier"), request.getfixturevalue("phantom_images"), targets


@pytest.fixture(scope="module")
def cascade(phantoms: tuple[ClassifierBundle, torch.Tensor, list[str]]) -> dict[str, list[float]]:
    """The classifier-only methods' figures."""
    return run_cascade(*phantoms, [m for m in ASSERTED if m != "latent_shift"])


@pytest.fixture(scope="module")
def cascade_latent_shift(phantoms: tuple[ClassifierBundle, torch.Tensor, list[str]],
                         request: pytest.FixtureRequest) -> dict[str, list[float]]:
    """Latent shift's figures (it needs the phantom autoencoder, trained separately)."""
    return run_cascade(*phantoms, ["latent_shift"], request.getfixturevalue("phantom_autoencoder"))


@pytest.mark.parametrize("method", ASSERTED)
def test_maps_decorrelate_as_the_model_is_randomized(request: pytest.FixtureRequest, method: str) -> None:
    table = request.getfixturevalue("cascade_latent_shift" if method == "latent_shift" else "cascade")
    values = table[method]
    assert all(np.isfinite(values)), values
    # Randomizing everything leaves less of the original map than randomizing the classifier alone, unless
    # the classifier alone already decorrelated it: CAM and Grad-CAM weight the feature maps by the (now
    # random) class weights, so their correlation drops to noise around zero at the first step and then
    # wanders (2x2 feature maps at 64 px: a handful of numbers per map, so that noise is large).
    assert values[-1] < values[0] or values[0] < 0.3, values
    # Once the last dense block is random too, the map is no longer the original one.
    assert max(values[1:]) < 0.9, values

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

import numpy as np
import pytest
import torch

from cxrexplain import AutoencoderBundle, ClassifierBundle
from cxrexplain_lab.sanity import cascade_blocks, cascading_randomization

ASSERTED = ["cam", "gradcam", "saliency", "integrated_gradients", "latent_shift"]
OPTIONS = {"integrated_gradients": {"steps": 32}}

# Trains the phantom fixtures on first use (cached afterwards), then ~10 explanations per method.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


def test_densenet_cascade_is_the_papers():
    """[Cohen2021] App. H's order: output first, norm5 with the last dense block, norm0 with the stem."""
    from cxrexplain.models import load_classifier

    steps = cascade_blocks(load_classifier("densenet_small", labels=["a", "b"]).module)
    assert [paths for _, paths in steps] == [
        ["classifier"], ["features.denseblock4", "features.norm5"], ["features.transition3"],
        ["features.denseblock3"], ["features.transition2"], ["features.denseblock2"], ["features.transition1"],
        ["features.denseblock1"], ["features.conv0", "features.norm0"]]


def run_cascade(bundle: ClassifierBundle, images: torch.Tensor, targets: list[str], methods: list[str],
                autoencoder: AutoencoderBundle | None = None) -> dict[str, list[float]]:
    """Mean Spearman correlation per method (keys) and cascade step (list entries), on 2 threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, threads))
    try:
        curves = cascading_randomization(bundle, images, targets, methods, autoencoder, OPTIONS)
    finally:
        torch.set_num_threads(threads)
    return {name: curves.mean(name).tolist() for name in methods}


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

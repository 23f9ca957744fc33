"""Cascading randomization, the sanity check of Adebayo et al. (2018) as [Cohen2021] §4.5 and App. H replicate it.

The classifier is re-initialized block by block from the output backwards (each step keeps the blocks already
randomized); after each step every method explains the same images again, and the Spearman rank correlation of
each new map's absolute value with the original's is computed per image ([Cohen2021] App. H: "absolute values are
taken of all attribution maps", since latent-shift maps are absolute by construction). A method whose maps
depend on what the model learned decorrelates; one that mostly reflects the image does not.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from cxrexplain import AutoencoderBundle, ClassifierBundle, Explainer

from .metrics import spearman

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def cascade_blocks(module: nn.Module) -> list[tuple[str, list[str]]]:
    """The randomization steps, output first: ``[(step name, [module paths]), ...]``.

    A block is a top-level child with parameters, or a child of a top-level container (torchvision's
    ``features`` / VGG's ``classifier``); a normalization layer joins the block before it (DenseNet's ``norm5``
    the last dense block, ``norm0`` the stem's ``conv0``; ResNet's ``bn1`` its ``conv1``), since it rescales that
    block's output rather than computing anything of its own. For torchvision's DenseNet this is the cascade of
    [Cohen2021] App. H: classifier, denseblock4, transition3, ..., conv0 (steps are named by their first path).
    """
    flat: list[tuple[str, nn.Module]] = []
    for name, child in module.named_children():
        if isinstance(child, _CONTAINERS):
            flat += [(f"{name}.{sub}", grandchild) for sub, grandchild in child.named_children()]
        else:
            flat.append((name, child))
    blocks: list[tuple[str, list[str]]] = []
    for path, child in flat:
        if not any(True for _ in child.parameters()) and not any(True for _ in child.buffers()):
            continue
        if isinstance(child, _NORMS) and blocks:
            blocks[-1][1].append(path)
        else:
            blocks.append((path, [path]))
    return blocks[::-1]


def reinitialize(module: nn.Module, paths: Iterable[str], seed: int) -> None:
    """Re-initialize every layer under ``paths`` with PyTorch's default initialization (random convolution and
    linear weights; BatchNorm back to its identity affine and fresh running statistics)."""
    torch.manual_seed(seed)
    for path in paths:
        for layer in module.get_submodule(path).modules():
            if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                layer.reset_running_stats()
            reset = getattr(layer, "reset_parameters", None)
            if callable(reset):
                reset()


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each row's flattened maps; 0 where a map is constant.

    A constant map (Grad-CAM's ReLU can leave all zeros once the weights are random) ranks no pixel above
    another, so it keeps none of the original ranking: it counts as 0 rather than NaN.
    """
    rho = np.asarray(spearman(a, b, batch=True), dtype=np.float64)
    return np.nan_to_num(rho, nan=0.0)


@dataclass
class RandomizationCurves:
    """Per method, the (steps, images) Spearman correlations with the original maps; ``steps`` names each step."""

    steps: list[str]
    rho: dict[str, np.ndarray]

    def mean(self, method: str) -> np.ndarray:
        return self.rho[method].mean(axis=1)

    def std(self, method: str) -> np.ndarray:
        return self.rho[method].std(axis=1)


def cascading_randomization(
    bundle: ClassifierBundle, x: torch.Tensor, targets: Sequence[str | int], methods: Sequence[str],
    autoencoder: AutoencoderBundle | None = None, options: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int = 1000, device: str | None = "cpu", progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
) -> RandomizationCurves:
    """Randomize ``bundle``'s blocks from the output backwards (:func:`cascade_blocks`) and correlate each method's
    maps with the original ones after each step. ``bundle`` itself is left untouched (the steps run on a copy).

    Parameters
    ----------
    bundle
        The trained classifier.
    x
        (N, C, H, W) images in the classifier's input space.
    targets
        One label per image: the finding each map explains.
    methods
        Wire names (``latent_shift`` needs ``autoencoder``).
    options
        Per-method options, as :meth:`Explainer.explain` takes them.
    seed
        Step ``i`` re-initializes with seed ``seed + i``.
    progress
        Wraps the steps (a progress bar).
    """

    def explain(module: nn.Module) -> dict[str, np.ndarray]:
        step_bundle = ClassifierBundle(module=module, labels=list(bundle.labels), input_spec=bundle.input_spec,
                                       cam_layer=bundle.cam_layer)
        ex = Explainer(step_bundle, autoencoder=autoencoder, device=device)
        result = ex.explain(x, methods=list(methods), targets=list(targets), options=options)
        return {name: result.heatmaps[name].abs().numpy() for name in methods}

    original = explain(copy.deepcopy(bundle.module))
    module = copy.deepcopy(bundle.module)
    steps = cascade_blocks(module)
    rho: dict[str, list[np.ndarray]] = {name: [] for name in methods}
    for i, (_, paths) in enumerate(progress(steps) if progress else steps):
        reinitialize(module, paths, seed=seed + i)
        maps = explain(copy.deepcopy(module))  # a fresh copy: the Explainer freezes and traces what it gets
        for name in methods:
            rho[name].append(spearman_rows(original[name], maps[name]))
    return RandomizationCurves(steps=[name for name, _ in steps], rho={k: np.stack(v) for k, v in rho.items()})

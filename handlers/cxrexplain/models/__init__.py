"""Classifiers and autoencoders: named architectures, and bundles loaded from (and saved to) local weight files.

- :mod:`.architectures`: the named classifier architectures (``build_classifier``) and :func:`find_head`.
- :mod:`.loading`: ``load_classifier`` / ``load_autoencoder`` and their ``save_`` counterparts.
- :mod:`.weight_files`: reading weight files (pickles refused unless allowed) and their JSON sidecars.
- :mod:`.checkpoint_keys`: matching a checkpoint's parameter names to a model's.

Weights are read from local paths only, in any of the forms found in the wild, with their metadata (labels,
input spec, operating points, CAM layer, version) as plain data in a JSON sidecar.
"""

from .architectures import (
    ALIASES,
    ARCHITECTURES,
    NIH_LABELS,
    Architecture,
    architecture,
    build_classifier,
    find_head,
)
from .loading import load_autoencoder, load_classifier, save_autoencoder, save_classifier
from .weight_files import SIDECAR_FORMAT, file_sha256, sidecar_path

__all__ = [
    "ALIASES",
    "ARCHITECTURES",
    "NIH_LABELS",
    "SIDECAR_FORMAT",
    "Architecture",
    "architecture",
    "build_classifier",
    "file_sha256",
    "find_head",
    "load_autoencoder",
    "load_classifier",
    "save_autoencoder",
    "save_classifier",
    "sidecar_path",
]

"""cxrexplain: a pure-PyTorch explanation engine for chest X-ray classifiers."""

from .allocator import keep_freed_memory
from .bundle import AutoencoderBundle, ClassifierBundle
from .errors import (
    AutoencoderRequired,
    CostCapExceeded,
    CxrExplainError,
    InvalidInput,
    InvalidOption,
    UnknownLabel,
    UnknownMethod,
    UnsupportedMediaType,
    UnsupportedModel,
    WeightsError,
)
from .explainer import Explainer, ExplanationResult, select_device
from .methods.latent_shift import LatentShiftResult
from .models import build_classifier, load_autoencoder, load_classifier, save_autoencoder, save_classifier
from .spec import TORCHVISION, XRV, InputSpec

__all__ = [
    "AutoencoderBundle",
    "AutoencoderRequired",
    "ClassifierBundle",
    "CostCapExceeded",
    "CxrExplainError",
    "Explainer",
    "ExplanationResult",
    "InputSpec",
    "InvalidInput",
    "InvalidOption",
    "LatentShiftResult",
    "TORCHVISION",
    "UnknownLabel",
    "UnknownMethod",
    "UnsupportedMediaType",
    "UnsupportedModel",
    "WeightsError",
    "XRV",
    "build_classifier",
    "keep_freed_memory",
    "load_autoencoder",
    "load_classifier",
    "save_autoencoder",
    "save_classifier",
    "select_device",
]

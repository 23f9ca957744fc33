"""Classifier architectures by name, and loading users' local weight files into bundles.

Architectures (``build_classifier``):

- ``densenet121`` / ``chexnet``: CheXNet (000), torchvision's DenseNet-121 with
  ``classifier = Linear(1024, L)``, the 14 NIH ChestX-ray14 labels by default.
- ``t_densenet121`` (``t-densenet``): T-DenseNet (002 §3): DenseNet-121 with the last two dense blocks and
  their transitions (transition2, transition3) discarded, so the last feature maps are 28x28 at 224 px
  (512 channels). We keep DenseNet's own head on what remains: BatchNorm (``features.norm5``, 512 features)
  + ReLU + global average pool + ``Linear(512, L)``; parameter names are torchvision's, so an ImageNet
  DenseNet-121 state dict fills blocks 1-2 unchanged.
- any torchvision ResNet / ResNeXt / Wide-ResNet / DenseNet / VGG by its torchvision name (``resnet50``,
  ``vgg16``, ``densenet169``, ``vgg16_bn``, ...), always built with ``weights=None`` (nothing is downloaded).
- ``xrv-densenet121``: torchxrayvision's res224 DenseNet-121 (see :mod:`cxrexplain.xrv_densenet`).
- ``densenet_small``: the demo model trained on the phantom set.

Weight files (``load_classifier``) are read from local paths only, in any of the forms found in the wild, with
their metadata (labels, input spec, operating points, CAM layer, version) as plain data in a JSON sidecar.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import pickle
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torchvision
from torchvision.models import DenseNet

from .bundle import AutoencoderBundle, ClassifierBundle
from .errors import WeightsError
from .spec import TORCHVISION, XRV, InputSpec, unit_spec
from .xrv_densenet import (
    XRV_ALL_OP_THRESHOLDS,
    XRV_LABELS,
    XRV_OP_THRESHS_KEY,
    clean_thresholds,
    xrv_densenet121,
)

logger = logging.getLogger(__name__)

# CheXNet's output order (NIH ChestX-ray14).
NIH_LABELS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
    "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)

SIDECAR_FORMAT = "cxrexplain-weights/1"
_CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model")
_TORCHVISION_FAMILIES = {"densenet": ("classifier", "features.conv0"), "resnet": ("fc", "conv1"),
                         "resnext": ("fc", "conv1"), "wide_resnet": ("fc", "conv1"),
                         "vgg": ("classifier.6", "features.0")}


@dataclass(frozen=True)
class Architecture:
    """What is known about a named architecture: how to build it and its defaults."""

    name: str
    build: Callable[[int, int], nn.Module]  # (num_labels, in_channels) -> module
    head: str  # dotted path of the final nn.Linear
    stem: str  # dotted path of the first nn.Conv2d
    labels: tuple[str, ...] | None = None
    op_thresholds: tuple[float, ...] | None = None
    in_channels: int = 3
    spec: Callable[[int], InputSpec] | None = None  # in_channels -> default input spec


def _replace(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _with_stem(model: nn.Module, stem: str, in_channels: int) -> nn.Module:
    """Swap the first convolution for one taking ``in_channels`` (same kernel, stride, padding)."""
    conv = model.get_submodule(stem)
    assert isinstance(conv, nn.Conv2d)
    if conv.in_channels != in_channels:
        _replace(model, stem, nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride,  # type: ignore[arg-type]
                                        conv.padding, bias=conv.bias is not None))  # type: ignore[arg-type]
    return model


def _densenet_small(num_labels: int, in_channels: int) -> nn.Module:
    """The demo classifier: DenseNet-121's layout (4 dense blocks, 3 transitions, GAP + linear) at a size
    that trains on a 2-core CPU in minutes."""
    model = DenseNet(growth_rate=12, block_config=(2, 2, 2, 2), num_init_features=24, bn_size=4,
                     num_classes=num_labels)
    if in_channels != 3:
        model.features.conv0 = nn.Conv2d(in_channels, 24, kernel_size=7, stride=2, padding=3, bias=False)
    return model


def _t_densenet121(num_labels: int, in_channels: int) -> nn.Module:
    """T-DenseNet (002 §3): DenseNet-121's stem, dense block 1, transition 1 and dense block 2 (12 layers);
    at 224 px the stem gives 56x56, transition 1 halves it to 28x28, so the pooled maps are 28x28x512."""
    model = DenseNet(growth_rate=32, block_config=(6, 12), num_init_features=64, bn_size=4,
                     num_classes=num_labels)
    return _with_stem(model, "features.conv0", in_channels)


def _torchvision_builder(name: str, stem: str) -> Callable[[int, int], nn.Module]:
    def build(num_labels: int, in_channels: int) -> nn.Module:
        # weights=None: torchvision never downloads, and num_classes sizes the head directly.
        model = torchvision.models.get_model(name, weights=None, num_classes=num_labels)
        return _with_stem(model, stem, in_channels)

    return build


def _torchvision_spec(in_channels: int) -> InputSpec:
    if in_channels == 3:
        return TORCHVISION
    # A gray torchvision-style model: ImageNet statistics averaged over the three channels.
    logger.warning("no input spec given for a %d-channel torchvision model: assuming [0, 1] pixels "
                   "normalized by the mean ImageNet statistics; pass input_spec= or a sidecar JSON",
                   in_channels)
    return InputSpec(channels=in_channels, mean=(0.449,) * in_channels, std=(0.226,) * in_channels,
                     name="torchvision")


def _xrv_spec(in_channels: int) -> InputSpec:
    if in_channels == 1:
        return XRV
    return InputSpec(channels=in_channels, size=224, value_range=(-1024.0, 1024.0), mean=(0.0,) * in_channels,
                     std=(1.0,) * in_channels, name="torchxrayvision")


def _registry() -> dict[str, Architecture]:
    archs: dict[str, Architecture] = {}
    for name in torchvision.models.list_models(module=torchvision.models):
        family = next((f for f in _TORCHVISION_FAMILIES if name.startswith(f)), None)
        if family is None:
            continue
        head, stem = _TORCHVISION_FAMILIES[family]
        archs[name] = Architecture(name, _torchvision_builder(name, stem), head, stem, labels=NIH_LABELS,
                                   spec=_torchvision_spec)
    archs["t_densenet121"] = Architecture("t_densenet121", _t_densenet121, "classifier", "features.conv0",
                                          labels=NIH_LABELS, spec=_torchvision_spec)
    archs["xrv-densenet121"] = Architecture("xrv-densenet121", xrv_densenet121, "classifier",
                                            "features.conv0", labels=XRV_LABELS,
                                            op_thresholds=XRV_ALL_OP_THRESHOLDS, in_channels=1,
                                            spec=_xrv_spec)
    archs["densenet_small"] = Architecture("densenet_small", _densenet_small, "classifier", "features.conv0",
                                           spec=lambda c: unit_spec(channels=c))
    return archs


ARCHITECTURES: dict[str, Architecture] = _registry()
ALIASES: dict[str, str] = {
    "chexnet": "densenet121", "t-densenet": "t_densenet121", "t-densenet121": "t_densenet121",
    "tdensenet": "t_densenet121", "xrv_densenet121": "xrv-densenet121",
    "densenet121-res224-all": "xrv-densenet121",
}


def architecture(name: str) -> Architecture:
    """Look up a named architecture (case-insensitive, aliases allowed); raises :class:`WeightsError`."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in ARCHITECTURES:
        known = sorted(ARCHITECTURES) + [f"{alias} (= {target})" for alias, target in sorted(ALIASES.items())]
        raise WeightsError(f"unknown architecture {name!r}; known: {', '.join(known)}; or pass an nn.Module")
    return ARCHITECTURES[key]


def build_classifier(arch: str, num_labels: int, in_channels: int | None = None) -> nn.Module:
    """An untrained classifier of a named architecture.

    Parameters
    ----------
    arch
        An architecture name (see the module docstring; ``architecture`` lists them in its error).
    num_labels
        Outputs of the final linear layer.
    in_channels
        Input channels; default: the architecture's own (1 for ``xrv-densenet121``, otherwise 3).

    Returns
    -------
    nn.Module
        A module in eval mode whose ``forward`` returns (N, num_labels) logits.
    """
    spec = architecture(arch)
    model = spec.build(num_labels, spec.in_channels if in_channels is None else in_channels)
    return model.eval()


# ----------------------------------------------------------------------------------------------------
# Reading weight files


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, read in chunks (weight files can be larger than one wants in memory twice)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def sidecar_path(weights: str | Path) -> Path:
    """``foo.pt`` -> ``foo.json``: where a weights file's metadata lives."""
    return Path(weights).with_suffix(".json")


def _read_sidecar(weights: Path) -> dict[str, Any]:
    path = sidecar_path(weights)
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"cannot read the metadata sidecar {path} ({exc}); fix or remove it") from exc
    if not isinstance(meta, dict):
        raise WeightsError(f"the metadata sidecar {path} must hold a JSON object")
    return meta


def _load_object(path: Path, arch_name: str, map_location: Any, allow_pickle: bool) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):
            raise WeightsError(f"{path} (for architecture {arch_name!r}) is not a readable PyTorch file "
                               f"({exc}); it may be truncated or corrupt: copy it again") from exc
        if not allow_pickle:
            raise WeightsError(
                f"{path} (for architecture {arch_name!r}) holds pickled Python objects (a whole module or a "
                "checkpoint with non-tensor entries), and unpickling runs code from the file, so it was not "
                "loaded. If you trust the file, pass allow_pickle=True; better, convert it once to a plain "
                "state dict: python -c \"import torch; m = torch.load("
                f"'{path}', weights_only=False); m = m.state_dict() if hasattr(m, 'state_dict') else m; "
                f"torch.save(m, '{path.with_suffix('.state.pt')}')\""
            ) from exc
        logger.warning("unpickling %s with weights_only=False because allow_pickle=True", path)
        try:
            return torch.load(path, map_location=map_location, weights_only=False)
        except Exception as exc2:  # unpickling can fail in any way (missing classes, corrupt data)
            raise WeightsError(f"cannot unpickle {path} for architecture {arch_name!r}: {exc2}") from exc2
    except Exception as exc:  # torch raises RuntimeError, EOFError, ... for damaged archives
        raise WeightsError(f"{path} (for architecture {arch_name!r}) is not a readable PyTorch file ({exc}); "
                           "it may be truncated or corrupt: copy it again") from exc


def _unwrap(obj: Any, path: Path, arch_name: str) -> tuple[dict[str, torch.Tensor], nn.Module | None]:
    """The state dict inside whatever the file holds, and the module itself when it is a pickled module."""
    module = None
    if isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in _CHECKPOINT_KEYS if k in obj), None)
        if inner is None:
            raise WeightsError(f"{path} holds a dict without tensors at the top level nor any of the keys "
                               f"{', '.join(_CHECKPOINT_KEYS)} (keys: {', '.join(map(str, list(obj)[:8]))}); "
                               f"save model.state_dict() of a {arch_name!r} model instead")
        obj = inner
    if isinstance(obj, nn.Module):
        module, obj = obj, obj.state_dict()
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path} holds a {type(obj).__name__}, not a state dict, checkpoint or module; "
                           f"save model.state_dict() of a {arch_name!r} model instead")
    return {str(k): v for k, v in obj.items()}, module


_CHEXNET_ERA = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))\.([12])\.")


def _normalize_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Undo DataParallel's ``module.`` prefixes and old DenseNet names (``norm.1`` -> ``norm1``)."""
    out = {}
    for key, value in state.items():
        while key.startswith("module."):
            key = key[len("module."):]
        key = key.replace(".module.", ".")
        out[_CHEXNET_ERA.sub(r"\1\2.", key)] = value
    return out


def _fit_keys(
    state: dict[str, torch.Tensor], target: Mapping[str, Any], head: str | None
) -> dict[str, torch.Tensor]:
    """Match a file's names to the model's.

    Names that already fit are kept as they are. Otherwise: DataParallel's ``module.`` prefixes and old
    DenseNet names are undone, a wrapper level all keys share is dropped (CheXNet's code keeps torchvision's
    DenseNet in ``self.densenet121``) and a ``Sequential(Linear, Sigmoid)`` head is read as its Linear.
    """
    needed = {key for key in target if not key.endswith("num_batches_tracked")}
    if needed <= set(state) <= set(target):
        return state
    state = _normalize_keys(state)
    for _ in range(2):
        if set(state) & set(target):
            break
        roots = {key.split(".", 1)[0] for key in state}
        if len(roots) != 1 or not all("." in key for key in state):
            break
        state = {key.split(".", 1)[1]: value for key, value in state.items()}
    if head and f"{head}.weight" in target and f"{head}.weight" not in state and f"{head}.0.weight" in state:
        prefix = f"{head}.0."
        state = {(head + "." + key[len(prefix):] if key.startswith(prefix) else key): value
                 for key, value in state.items() if key.startswith(prefix) or not key.startswith(head + ".")}
    return state


def _first(keys: Sequence[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], path: Path, arch_name: str) -> None:
    own = model.state_dict()
    # BatchNorm fills a missing num_batches_tracked itself (files from torch < 0.4.1 have none).
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_first(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_first(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es): {_first(shapes, 3)}")
        raise WeightsError(
            f"{path} does not fit architecture {arch_name!r}: {'; '.join(parts)}. Check the architecture "
            "name, that labels= (or the sidecar) gives as many labels as the file has outputs, and "
            "input_spec as many channels as its first convolution takes")
    model.load_state_dict(state, strict=False)


def _head_outputs(state: Mapping[str, torch.Tensor], head: str) -> int | None:
    weight = state.get(f"{head}.weight")
    return int(weight.shape[0]) if weight is not None and weight.ndim == 2 else None


def _stem_channels(state: Mapping[str, torch.Tensor], stem: str) -> int | None:
    weight = state.get(f"{stem}.weight")
    return int(weight.shape[1]) if weight is not None and weight.ndim == 4 else None


def _last_linear(module: nn.Module) -> nn.Linear | None:
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def _as_thresholds(values: Any) -> list[float] | None:
    if values is None:
        return None
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().flatten().tolist()
    return clean_thresholds([float("nan") if v is None else float(v) for v in values])


def _as_spec(value: InputSpec | Mapping[str, Any] | None) -> InputSpec | None:
    if value is None or isinstance(value, InputSpec):
        return value
    return InputSpec.from_dict(dict(value))


@dataclass
class _WeightsFile:
    path: Path | None = None
    state: dict[str, torch.Tensor] | None = None
    module: nn.Module | None = None
    meta: dict[str, Any] | None = None
    sha256: str | None = None


def _read_weights(
    weights: str | Path | None, arch_name: str, map_location: Any, allow_pickle: bool
) -> _WeightsFile:
    if weights is None:
        return _WeightsFile(meta={})
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path} (expected for architecture {arch_name!r}). "
                           "Nothing is downloaded at run time: copy the file there or pass the right path")
    meta = _read_sidecar(path)
    sha = file_sha256(path)
    if meta.get("sha256") and meta["sha256"] != sha:
        raise WeightsError(f"{sidecar_path(path)} was written for another file (sha256 "
                           f"{meta['sha256'][:12]}..., this file {sha[:12]}...); re-save the weights with "
                           "save_classifier or fix the sidecar")
    obj = _load_object(path, arch_name, map_location, allow_pickle)
    state, module = _unwrap(obj, path, arch_name)
    return _WeightsFile(path, state, module, meta, sha)


def load_classifier(
    arch_or_module: str | nn.Module | None,
    weights: str | Path | None = None,
    labels: Sequence[str] | None = None,
    input_spec: InputSpec | Mapping[str, Any] | None = None,
    op_thresholds: Sequence[float] | None = None,
    cam_layer: str | None = None,
    map_location: str | torch.device | None = None,
    version: str | None = None,
    *,
    allow_pickle: bool = False,
) -> ClassifierBundle:
    """Build a classifier, load local weights into it and bundle it with its metadata.

    Every metadata field comes from, in order: the argument, the sidecar ``<weights stem>.json`` beside the
    weights file, what the file itself shows (number of outputs, input channels, an ``op_threshs`` buffer),
    the architecture's defaults.

    Parameters
    ----------
    arch_or_module
        An architecture name (``"densenet121"``, ``"xrv-densenet121"``, ``"resnet50"``, ...), any
        ``nn.Module`` whose ``forward`` returns (N, L) logits, or ``None`` to take it from the sidecar.
    weights
        A local file: a state dict, a checkpoint dict holding one under ``state_dict`` /
        ``model_state_dict`` / ``model``, or a pickled module (only with ``allow_pickle=True``).
        ``module.`` prefixes (DataParallel), torchvision < 0.3 DenseNet names (``norm.1``) and CheXNet's
        wrapper are undone. ``None``: random weights.
    labels, input_spec, op_thresholds, cam_layer, version
        Override the sidecar and the defaults. ``version`` defaults to the first 12 hex digits of the file's
        SHA-256.
    map_location
        Where tensors are loaded (default CPU; the :class:`~cxrexplain.Explainer` moves the model).
    allow_pickle
        Unpickle files that hold Python objects. Unpickling runs code from the file: only for files you trust.

    Returns
    -------
    ClassifierBundle

    Raises
    ------
    WeightsError
        The file is missing, unreadable, refused (pickled objects), or does not fit the architecture; the
        architecture name is unknown.
    """
    if isinstance(arch_or_module, str):
        shown = architecture(arch_or_module).name  # an unknown name fails before any file is read
    else:
        shown = "from the sidecar" if arch_or_module is None else type(arch_or_module).__name__
    wf = _read_weights(weights, shown, map_location or "cpu", allow_pickle)
    meta = wf.meta or {}
    if arch_or_module is None:
        arch_or_module = meta.get("architecture") or (wf.module if wf.module is not None else None)
        if arch_or_module is None:
            raise WeightsError(f"no architecture given and no 'architecture' in the sidecar of {weights}: "
                               "pass one")
        if arch_or_module == "custom":
            raise WeightsError(f"{weights} was saved from a custom module: pass the module, "
                               "load_classifier(module, weights)")
    elif isinstance(arch_or_module, str) and meta.get("architecture") not in (None, "custom", shown):
        logger.warning("loading %s as %r although its sidecar says %r", weights, shown, meta["architecture"])
    labels = list(labels) if labels is not None else meta.get("labels")
    spec = _as_spec(input_spec) or _as_spec(meta.get("input_spec"))
    state = wf.state
    file_thresholds = None
    if state is not None:  # torchxrayvision keeps operating points in a buffer
        for key in [k for k in state if re.fullmatch(rf"(module\.)*{XRV_OP_THRESHS_KEY}", k)]:
            file_thresholds = _as_thresholds(state.pop(key))
    arch: Architecture | None = None

    if isinstance(arch_or_module, nn.Module):
        module, name = arch_or_module, "custom"
        if state is not None:
            _load_into(module, _fit_keys(state, module.state_dict(), None), wf.path or Path(),
                       type(module).__name__)
        if labels is None:
            linear = _last_linear(module)
            if linear is None:
                raise WeightsError(f"cannot tell how many outputs {type(module).__name__} has: "
                                   "pass labels=[...]")
            labels = [str(i) for i in range(linear.out_features)]
    else:
        arch = architecture(str(arch_or_module))
        name = arch.name
        if state is not None:
            state = _fit_keys(state, _expected_keys(arch), arch.head)
        outputs = _head_outputs(state, arch.head) if state is not None else None
        if labels is None:
            if arch.labels is not None and outputs in (None, len(arch.labels)):
                labels = list(arch.labels)
            elif outputs is not None:
                logger.warning("%s has %d outputs and no labels were given: naming them '0'..'%d'; "
                               "pass labels=", wf.path, outputs, outputs - 1)
                labels = [str(i) for i in range(outputs)]
            else:
                raise WeightsError(f"architecture {name!r} has no default labels: pass labels=[...]")
        channels = spec.channels if spec is not None else (
            (state is not None and _stem_channels(state, arch.stem)) or arch.in_channels)
        module = arch.build(len(labels), channels)
        if state is not None:
            _load_into(module, state, wf.path or Path(), name)
        if spec is None:
            spec = arch.spec(channels) if arch.spec is not None else TORCHVISION

    if op_thresholds is None:
        op_thresholds = meta.get("op_thresholds") or file_thresholds
        if op_thresholds is None and arch is not None and arch.op_thresholds and arch.labels == tuple(labels):
            op_thresholds = list(arch.op_thresholds)
    return ClassifierBundle(
        module=module.eval(),
        labels=[str(label) for label in labels],
        input_spec=spec or TORCHVISION,
        architecture=name,
        op_thresholds=_as_thresholds(op_thresholds),
        cam_layer=cam_layer if cam_layer is not None else meta.get("cam_layer"),
        version=str(version or meta.get("version") or (wf.sha256[:12] if wf.sha256 else "0")),
        sha256=wf.sha256,
        extra={"weights": str(wf.path)} if wf.path else {},
    )


def _expected_keys(arch: Architecture) -> dict[str, None]:
    """The parameter names of an architecture, without allocating it."""
    return dict.fromkeys(_state_keys(arch.name))


@functools.cache
def _state_keys(name: str) -> tuple[str, ...]:
    arch = ARCHITECTURES[name]
    with torch.device("meta"):  # no memory, no initialization cost
        model = arch.build(1, arch.in_channels)
    return tuple(model.state_dict())


def _write_sidecar(path: Path, meta: dict[str, Any]) -> None:
    def plain(value: Any) -> Any:
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    sidecar_path(path).write_text(json.dumps(plain(meta), indent=2) + "\n")


def save_classifier(bundle: ClassifierBundle, path: str | Path) -> Path:
    """Write a bundle as ``path`` (the state dict) and ``path.with_suffix('.json')`` (its metadata).

    Parameters
    ----------
    bundle
        The classifier to save.
    path
        The weights file to write, e.g. ``model.pt``; ``model.json`` is written beside it.

    Returns
    -------
    Path
        The weights file; ``load_classifier(None, path)`` reads both back.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in bundle.module.state_dict().items()}, path)
    meta = {
        "format": SIDECAR_FORMAT,
        "architecture": bundle.architecture,
        "labels": list(bundle.labels),
        "input_spec": bundle.input_spec.to_dict(),
        "op_thresholds": list(bundle.op_thresholds or []),
        "cam_layer": bundle.cam_layer,
        "sha256": file_sha256(path),
    }
    if bundle.version != "0":
        meta["version"] = bundle.version
    _write_sidecar(path, meta)
    return path


# ----------------------------------------------------------------------------------------------------
# Autoencoders


def load_autoencoder(
    arch: str | nn.Module | None,
    weights: str | Path | None = None,
    input_spec: InputSpec | Mapping[str, Any] | None = None,
    map_location: str | torch.device | None = None,
    version: str | None = None,
    *,
    allow_pickle: bool = False,
) -> AutoencoderBundle:
    """Build an autoencoder (``encode``/``decode``), load local weights into it and bundle it.

    Parameters
    ----------
    arch
        ``"resnet_ae101"`` (torchxrayvision's ResNetAE-101: ``101-elastic`` files load unchanged),
        ``"resnet_ae_small"`` (the demo), a module with ``encode``/``decode``, or ``None`` (from the sidecar).
    weights
        A local file in any form :func:`load_classifier` reads; ``None``: random weights.
    input_spec
        Overrides the sidecar and the default (XRV for ``resnet_ae101``, unit-space gray for the demo).
    map_location, version, allow_pickle
        As for :func:`load_classifier`.

    Returns
    -------
    AutoencoderBundle
    """
    from . import autoencoder as ae_module  # lazy: classifiers load without the autoencoder module

    shown = arch if isinstance(arch, str) else type(arch).__name__
    wf = _read_weights(weights, str(shown), map_location or "cpu", allow_pickle)
    meta = wf.meta or {}
    if arch is None:
        arch = meta.get("architecture")
        if arch is None or arch == "custom":
            raise WeightsError(f"no autoencoder architecture given for {weights} and none in its sidecar: "
                               "pass one")
    if isinstance(arch, nn.Module):
        module, name = arch, "custom"
    else:
        name = str(arch).strip().lower()
        module = ae_module.build_autoencoder(name)  # raises WeightsError listing the known names
    if wf.state is not None:
        _load_into(module, _fit_keys(wf.state, module.state_dict(), None), wf.path or Path(), name)
    spec = _as_spec(input_spec) or _as_spec(meta.get("input_spec"))
    if spec is None:
        spec = ae_module.autoencoder_spec(name) if name != "custom" else XRV
    return AutoencoderBundle(
        module=module.eval(),
        input_spec=spec,
        architecture=name,
        version=str(version or meta.get("version") or (wf.sha256[:12] if wf.sha256 else "0")),
        sha256=wf.sha256,
    )


def save_autoencoder(bundle: AutoencoderBundle, path: str | Path) -> Path:
    """Write an autoencoder bundle as a state dict plus its JSON sidecar; see :func:`save_classifier`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in bundle.module.state_dict().items()}, path)
    meta = {"format": SIDECAR_FORMAT, "architecture": bundle.architecture,
            "input_spec": bundle.input_spec.to_dict(), "sha256": file_sha256(path)}
    if bundle.version != "0":
        meta["version"] = bundle.version
    _write_sidecar(path, meta)
    return path

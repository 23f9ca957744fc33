"""Loading classifiers and autoencoders from local weight files into bundles, and saving bundles.

Every metadata field comes from, in order: the argument, the sidecar JSON beside the weights file, what the
file itself shows (number of outputs, input channels, an ``op_threshs`` buffer), the architecture's defaults.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..bundle import AutoencoderBundle, ClassifierBundle, require_encode_decode
from ..errors import WeightsError
from ..spec import TORCHVISION, InputSpec
from ..xrv_densenet import XRV_ARCHITECTURE, XRV_OP_THRESHS_KEY, clean_thresholds
from .architectures import Architecture, architecture, find_head
from .checkpoint_keys import expected_keys, fit_keys, head_outputs, load_into, stem_channels
from .weight_files import SIDECAR_FORMAT, file_sha256, read_weights, write_sidecar

logger = logging.getLogger(__name__)

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
    op_norm: bool | None = None,
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
    op_norm
        Whether the model's published output is torchxrayvision's ``op_norm(σ(logit), op_thresholds)``
        (:attr:`ClassifierBundle.op_norm`). Default: the sidecar's ``op_norm``, else True for torchxrayvision
        weights (architecture ``xrv-densenet121``, or a file with an ``op_threshs`` buffer), else False.

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
    wf = read_weights(weights, shown, map_location or "cpu", allow_pickle)
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
            load_into(module, fit_keys(state, module.state_dict(), None), wf.path or Path(),
                       type(module).__name__)
        if labels is None:
            linear = find_head(module)
            if linear is None:
                raise WeightsError(f"cannot tell how many outputs {type(module).__name__} has: "
                                   "pass labels=[...]")
            labels = [str(i) for i in range(linear.out_features)]
    else:
        arch = architecture(str(arch_or_module))
        name = arch.name
        if state is not None:
            state = fit_keys(state, expected_keys(arch), arch.head)
        outputs = head_outputs(state, arch.head) if state is not None else None
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
            (state is not None and stem_channels(state, arch.stem)) or arch.in_channels)
        module = arch.build(len(labels), channels)
        if state is not None:
            load_into(module, state, wf.path or Path(), name)
        if spec is None:
            spec = arch.spec(channels) if arch.spec is not None else TORCHVISION

    if op_thresholds is None:
        op_thresholds = meta.get("op_thresholds") or file_thresholds
        if op_thresholds is None and arch is not None and arch.op_thresholds and arch.labels == tuple(labels):
            op_thresholds = list(arch.op_thresholds)
    if op_norm is None:
        op_norm = meta.get("op_norm")
    if op_norm is None:  # torchxrayvision's operating points: its forward answers op_norm(σ(logit), t)
        op_norm = file_thresholds is not None or name == XRV_ARCHITECTURE
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
        op_norm=bool(op_norm),
    )

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
        "op_norm": bundle.op_norm,
        "sha256": file_sha256(path),
    }
    if bundle.version != "0":
        meta["version"] = bundle.version
    write_sidecar(path, meta)
    return path


def load_autoencoder(
    arch: str | nn.Module | None,
    weights: str | Path | None = None,
    input_spec: InputSpec | Mapping[str, Any] | None = None,
    map_location: str | torch.device | None = None,
    version: str | None = None,
    *,
    allow_pickle: bool = False,
    classifier_spec: InputSpec | None = None,
) -> AutoencoderBundle:
    """Build an autoencoder (``encode``/``decode``), load local weights into it and bundle it.

    The input spec comes from, in order: ``input_spec``, the sidecar, the autoencoder's own (a named
    architecture's, a :class:`~cxrexplain.autoencoder.ResNetAE` of a named layout, torchxrayvision's
    ResNetAE: XRV), then ``classifier_spec``: an autoencoder of your own is taken to work in the classifier's
    input space. (Before, such a module silently got torchxrayvision's spec.)

    Parameters
    ----------
    arch
        ``"resnet_ae101"`` (torchxrayvision's ResNetAE-101: ``101-elastic`` files load unchanged),
        ``"resnet_ae_small"`` (the demo), a module with ``encode``/``decode``, or ``None`` (from the sidecar).
    weights
        A local file in any form :func:`load_classifier` reads; ``None``: random weights.
    input_spec
        The space the autoencoder was trained in; overrides everything else.
    map_location, version, allow_pickle
        As for :func:`load_classifier`.
    classifier_spec
        The input spec of the classifier the autoencoder serves (``bundle.input_spec``): the default for a
        module of your own. :class:`~cxrexplain.Explainer` passes it when given a bare module.

    Returns
    -------
    AutoencoderBundle

    Raises
    ------
    TypeError
        ``arch`` is a module without callable ``encode`` and ``decode``.
    ValueError
        ``arch`` is a module of your own and no spec was given: pass ``input_spec=`` or ``classifier_spec=``.
    WeightsError
        As for :func:`load_classifier`; or an unknown architecture name.
    """
    from .. import autoencoder as ae_module  # lazy: classifiers load without the autoencoder module

    if isinstance(arch, nn.Module):
        require_encode_decode(arch)  # before any file is read
    shown = arch if isinstance(arch, str) else type(arch).__name__
    wf = read_weights(weights, str(shown), map_location or "cpu", allow_pickle)
    meta = wf.meta or {}
    if arch is None:
        arch = meta.get("architecture")
        if arch is None or arch == "custom":
            raise WeightsError(f"no autoencoder architecture given for {weights} and none in its sidecar: "
                               "pass one")
    if isinstance(arch, nn.Module):
        module, name = arch, "custom"
        own = ae_module.native_spec(module)
    else:
        name = str(arch).strip().lower()
        module = ae_module.build_autoencoder(name)  # raises WeightsError listing the known names
        own = ae_module.autoencoder_spec(name)
    if wf.state is not None:
        load_into(module, fit_keys(wf.state, module.state_dict(), None), wf.path or Path(), name)
    spec = _as_spec(input_spec) or _as_spec(meta.get("input_spec")) or own or classifier_spec
    if spec is None:
        raise ValueError(
            f"{type(module).__name__} is an autoencoder of your own and its input space is unknown: pass "
            "input_spec= (the InputSpec it was trained in), or classifier_spec=<classifier bundle>.input_spec "
            "if it works in the classifier's input space; Explainer(classifier, autoencoder=module) does the "
            "latter by itself")
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
    write_sidecar(path, meta)
    return path

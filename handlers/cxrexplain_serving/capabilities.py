"""Capability discovery: which methods this model can answer, and the model card ``describe`` returns."""

from __future__ import annotations

from cxrexplain.bundle import AutoencoderBundle, ClassifierBundle
from cxrexplain.errors import CxrExplainError, UnsupportedModel
from cxrexplain.methods import base as registry

from .wire import explain_pb2

INTENDED_USE = "Research use only: not for diagnostic use"


class AutoencoderUnavailable(CxrExplainError):
    """The archive has an autoencoder, but this worker could not load it: ``latent_shift`` is unavailable until
    the operator fixes the archive, while every other method serves (503, and no use retrying)."""

    http_status = 503
    code = "autoencoder_unavailable"


def available_methods(bundle: ClassifierBundle, autoencoder: AutoencoderBundle | None) -> list[str]:
    """The registered methods this classifier (and autoencoder) can run, sorted by wire name."""
    names = []
    for name in sorted(registry.REGISTRY):
        if name == "latent_shift" and autoencoder is None:
            continue
        if name == "semantic" and not bundle.extra.get("dissection"):
            continue
        if name == "cam":
            try:
                bundle.traced.cam_head()
            except UnsupportedModel:  # no GAP + linear head: CAM does not exist for this model
                continue
        names.append(name)
    return names


def model_description(bundle: ClassifierBundle, *, model_name: str, model_version: str, methods: list[str],
                      has_autoencoder: bool) -> explain_pb2.ModelDescription:
    """Labels, operating points, input spec, methods and intended use of the served model."""
    spec = bundle.input_spec
    return explain_pb2.ModelDescription(
        name=model_name,
        version=model_version,
        architecture=bundle.architecture,
        labels=list(bundle.labels),
        operating_points=[float(t) for t in bundle.op_thresholds or []],
        input_spec=explain_pb2.InputSpec(
            channels=spec.channels, size=spec.size, value_range=list(spec.value_range), mean=list(spec.mean),
            std=list(spec.std), resize=spec.resize),
        methods=list(methods),
        has_autoencoder=has_autoencoder,
        intended_use=INTENDED_USE,
        weights_sha256=bundle.sha256 or "",
    )

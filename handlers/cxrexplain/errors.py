"""One small exception hierarchy for the engine; the server maps ``http_status`` to the response code."""

from __future__ import annotations


class CxrExplainError(Exception):
    """Base of every error the engine raises on purpose."""

    http_status = 422
    code = "unprocessable"


class InvalidInput(CxrExplainError):
    """The input cannot be read as an image batch (wrong shape, channels, NaN/Inf, undecodable bytes)."""

    http_status = 400
    code = "invalid_input"


class UnsupportedMediaType(CxrExplainError):
    """The bytes are of a kind the service does not decode."""

    http_status = 415
    code = "unsupported_media_type"


class UnknownLabel(CxrExplainError):
    """A target names a label the model does not have, or an index out of range."""

    code = "unknown_label"


class UnknownMethod(CxrExplainError):
    """A method name that is not registered."""

    code = "unknown_method"


class UnsupportedModel(CxrExplainError):
    """The method cannot run on this model (no GAP+linear head for CAM, a layer type without a rule, ...)."""

    code = "unsupported_model"


class AutoencoderRequired(CxrExplainError):
    """Latent shift was asked of a model that has no autoencoder."""

    code = "autoencoder_required"


class CostCapExceeded(CxrExplainError):
    """The request would cost more than the configured cap."""

    code = "cost_cap_exceeded"


class InvalidOption(CxrExplainError):
    """A request option has a value the engine does not accept."""

    code = "invalid_option"


class WeightsError(CxrExplainError):
    """A weights file is missing or does not fit the architecture (raised at load time, not per request)."""

    http_status = 500
    code = "weights_error"


class DissectionRequired(CxrExplainError):
    """The ``semantic`` method was asked of a model without a dissection table (the exporter computes one)."""

    code = "dissection_required"

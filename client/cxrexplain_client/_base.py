"""Settings and pure helpers shared by :class:`ExplainClient` and :class:`AsyncExplainClient`."""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from ._proto import inference_pb2
from ._retry import USE_CLIENT_DEFAULT, RetryPolicy, _UseClientDefault
from .codec import EncodedImage, build_options, encode_image, grpc_input
from .errors import CxrExplainClientError, InvalidInput, error_from_grpc
from .results import Health, ModelInfo

Transport = Literal["rest", "grpc"]
TimeoutArg = float | None | _UseClientDefault

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_GRPC_TARGET = "127.0.0.1:7070"
DEFAULT_MANAGEMENT_URL = "http://127.0.0.1:8081"
DEFAULT_GRPC_MANAGEMENT_TARGET = "127.0.0.1:7071"
DEFAULT_TIMEOUT = 120.0  # TorchServe's default_response_timeout
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """Where the server is and how to talk to it (immutable; one per client)."""

    url: str
    grpc_target: str
    management_url: str
    grpc_management_target: str
    token: str | None
    management_token: str | None
    timeout: float | None
    policy: RetryPolicy
    transport: Transport
    max_message_bytes: int

    def pick_timeout(self, timeout: TimeoutArg) -> float | None:
        """The call's timeout: the client's when none was given, no limit when ``None`` was given."""
        return self.timeout if isinstance(timeout, _UseClientDefault) else timeout

    def pick_transport(self, transport: str | None) -> Transport:
        chosen = transport or self.transport
        if chosen not in ("rest", "grpc"):
            raise InvalidInput(f"transport must be 'rest' or 'grpc', got {chosen!r}")
        return "grpc" if chosen == "grpc" else "rest"


def make_settings(
    url: str,
    grpc_target: str,
    management_url: str,
    grpc_management_target: str,
    token: str | None,
    token_file: str | os.PathLike[str] | None,
    management_token: str | None,
    timeout: float | None,
    retries: int,
    retry_policy: RetryPolicy | None,
    transport: str,
    max_message_bytes: int,
) -> Settings:
    """Validate and resolve the client arguments (tokens from the key file or the environment)."""
    from .auth import resolve_token

    if transport not in ("rest", "grpc"):
        raise InvalidInput(f"transport must be 'rest' or 'grpc', got {transport!r}")
    policy = retry_policy if retry_policy is not None else RetryPolicy(retries=retries)
    inference_token = resolve_token(token, token_file, "inference")
    mgmt = (
        resolve_token(management_token, token_file, "management")
        if (management_token or token_file)
        else None
    )
    return Settings(
        url=url.rstrip("/"),
        grpc_target=grpc_target,
        management_url=management_url.rstrip("/"),
        grpc_management_target=grpc_management_target,
        token=inference_token,
        management_token=mgmt or resolve_token(None, None, "management") or inference_token,
        timeout=timeout,
        policy=policy,
        transport="grpc" if transport == "grpc" else "rest",
        max_message_bytes=max_message_bytes,
    )


def prepare(
    image: Any, options: dict[str, Any], describe: bool = False, stream: bool = False
) -> tuple[EncodedImage | None, dict[str, str]]:
    """Encode the image (if any) and the option fields of one request."""
    encoded = encode_image(image) if image is not None else None
    return encoded, build_options(**options, describe=describe, stream=stream)


def predictions_request(
    model: str, version: str | None, image: EncodedImage | None, options: dict[str, str]
) -> inference_pb2.PredictionsRequest:
    """The gRPC request: model, version, and the input map (image under ``data``, options by key)."""
    if not model:
        raise InvalidInput("a model name is required")
    return inference_pb2.PredictionsRequest(
        model_name=model, model_version=version or "", input=grpc_input(image, options)
    )


STREAM_SUFFIX = "-stream"


def stream_request(
    model: str, version: str | None, image: EncodedImage | None, options: dict[str, str]
) -> inference_pb2.PredictionsRequest:
    """The ``StreamPredictions2`` request: to ``model``'s streaming twin ``<model>-stream``
    (``cxrexplain-export`` writes it for ``stream: true``), with a fresh sequence id. TorchServe 0.12
    streams only from a model with sequence batching, which cannot answer unary calls (hence the twin), and
    refuses a stream without a sequence id."""
    twin = model if model.endswith(STREAM_SUFFIX) else model + STREAM_SUFFIX
    request = predictions_request(twin, version, image, options)
    request.sequence_id = uuid.uuid4().hex
    return request


def check_prediction_status(resp: inference_pb2.PredictionResponse) -> None:
    """Raise the error StreamPredictions2 reports inside a response (``status``), not as the call status."""
    if resp.HasField("status") and resp.status.code != 0:
        from .errors import GRPC_CODE_NAMES

        name = GRPC_CODE_NAMES.get(resp.status.code, "UNKNOWN")
        raise error_from_grpc(name, resp.status.message)


def parse_model_list(text: str | bytes) -> tuple[list[ModelInfo], int | None]:
    """TorchServe's model list JSON -> (models, next page token or None)."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise CxrExplainClientError(f"the model list is not JSON: {exc}") from exc
    models = [ModelInfo(m.get("modelName", ""), m.get("modelUrl", "")) for m in doc.get("models", [])]
    token = doc.get("nextPageToken")
    return models, int(token) if token not in (None, "") else None


def parse_health(text: str | bytes) -> Health:
    """``/ping`` JSON (``{"status": "Healthy"}``) -> :class:`Health`."""
    try:
        doc = json.loads(text)
    except ValueError:
        return Health(status=(text.decode() if isinstance(text, bytes) else text).strip() or "Unknown")
    return Health(status=str(doc.get("status", "Unknown")))


def option_kwargs(
    methods: Any,
    targets: Any,
    top_k: int | None,
    heatmap_format: str | None,
    heatmap_dtype: str | None,
    frames: int | None,
    latent_shift_map: str | None,
    direction: str | None,
) -> dict[str, Any]:
    """The explain options as keyword arguments for :func:`codec.build_options`."""
    return {
        "methods": methods,
        "targets": targets,
        "top_k": top_k,
        "heatmap_format": heatmap_format,
        "heatmap_dtype": heatmap_dtype,
        "frames": frames,
        "latent_shift_map": latent_shift_map,
        "direction": direction,
    }


__all__ = ["USE_CLIENT_DEFAULT", "Settings", "Transport", "make_settings"]

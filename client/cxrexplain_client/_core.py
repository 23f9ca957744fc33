"""The client core: what :class:`ExplainClient` and :class:`AsyncExplainClient` share.

Settings, request building (:class:`RestCall` / :class:`GrpcCall`: what to send, where, with which deadline,
token and request id), response parsing, error mapping and the paging of the model list live here (the retry
decisions next door, in :mod:`._attempts`), with no network I/O; each client only sends the calls and waits
(blocking or awaiting), as tritonclient's sync and aio clients share their request building and response
parsing.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import grpc
import grpc.aio
import httpx
from google.protobuf import empty_pb2

from . import codec
from ._proto import explain_pb2, inference_pb2, inference_pb2_grpc, management_pb2, management_pb2_grpc
from ._retry import USE_CLIENT_DEFAULT, RetryPolicy, _UseClientDefault, grpc_channel_options
from .auth import KeyKind
from .errors import (
    GRPC_CODE_NAMES,
    CxrExplainClientError,
    InvalidInput,
    Unauthorized,
    connection_error,
    error_from_grpc,
    timeout_error,
)
from .results import Health, ModelInfo, StreamPart

log = logging.getLogger(__name__)

Transport = Literal["rest", "grpc"]
TimeoutArg = float | None | _UseClientDefault

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_GRPC_TARGET = "127.0.0.1:7070"
DEFAULT_MANAGEMENT_URL = "http://127.0.0.1:8081"
DEFAULT_GRPC_MANAGEMENT_TARGET = "127.0.0.1:7071"
DEFAULT_TIMEOUT = 120.0  # TorchServe's default_response_timeout
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
STREAM_SUFFIX = "-stream"


@dataclass(frozen=True)
class Settings:
    """Where the server is and how to talk to it (immutable; one per client)."""

    url: str
    grpc_target: str
    management_url: str
    grpc_management_target: str
    token: str | None
    management_token: str | None
    token_file: str | os.PathLike[str] | None
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

    def channel_options(self) -> list[tuple[str, object]]:
        """gRPC channel options: reconnection backoff and message limits (the same for sync and aio)."""
        return grpc_channel_options(self.policy, self.max_message_bytes)


def make_settings(
    url: str,
    grpc_target: str,
    management_url: str,
    grpc_management_target: str,
    token: str | None,
    token_file: str | os.PathLike[str] | None,
    management_token: str | None,
    timeout: float | None,
    retries: int | None,
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
        token_file=token_file,
        timeout=timeout,
        policy=policy,
        transport="grpc" if transport == "grpc" else "rest",
        max_message_bytes=max_message_bytes,
    )


class ClientBase(ABC):
    """The constructor both clients share: it resolves the :class:`Settings` and builds the
    :class:`ClientCore`; each client's :meth:`_open` then creates its own I/O (an HTTP connection pool,
    lazily the gRPC channels). The parameters are documented on :class:`~cxrexplain_client.ExplainClient`."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        grpc_target: str = DEFAULT_GRPC_TARGET,
        *,
        token: str | None = None,
        token_file: str | os.PathLike[str] | None = None,
        management_url: str = DEFAULT_MANAGEMENT_URL,
        grpc_management_target: str = DEFAULT_GRPC_MANAGEMENT_TARGET,
        management_token: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        retries: int | None = None,
        retry_policy: RetryPolicy | None = None,
        transport: str = "rest",
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        settings = make_settings(
            url,
            grpc_target,
            management_url,
            grpc_management_target,
            token,
            token_file,
            management_token,
            timeout,
            retries,
            retry_policy,
            transport,
            max_message_bytes,
        )
        self._core = ClientCore(settings)
        self._open()

    @property
    def settings(self) -> Settings:
        """The client's settings (the tokens change when the key file is re-read)."""
        return self._core.settings

    @abstractmethod
    def _open(self) -> None:
        """Create the client's I/O resources (called once, at the end of the constructor)."""


# ------------------------------------------------------------------------------------------------ calls
@dataclass(frozen=True)
class RestCall:
    """One HTTP request to make: headers include the token (the ``management`` key when ``management``) and
    the request id (``X-Request-Id``, the same on every attempt); ``ok`` lists error statuses that are
    answers."""

    method: str
    url: str
    content: bytes | None
    headers: dict[str, str]
    timeout: float | None
    ok: tuple[int, ...] = ()
    request_id: str | None = None
    management: bool = False


@dataclass(frozen=True)
class GrpcCall:
    """One gRPC call to make: ``rpc`` names the stub method, ``management`` picks the channel (and key); a
    prediction carries its request id in the input map (``request_id``), the same on every attempt."""

    rpc: Literal["Predictions", "StreamPredictions2", "Ping", "ListModels"]
    request: Any
    target: str
    timeout: float | None
    metadata: list[tuple[str, str]]
    management: bool = False
    request_id: str | None = None


def predictions_request(
    model: str, version: str | None, image: codec.EncodedImage | None, fields: Mapping[str, str]
) -> inference_pb2.PredictionsRequest:
    """The gRPC request: model, version, and the input map (image under ``data``, options by key)."""
    if not model:
        raise InvalidInput("a model name is required")
    return inference_pb2.PredictionsRequest(
        model_name=model, model_version=version or "", input=codec.grpc_input(image, fields)
    )


class ClientCore:
    """Builds every call of a client from its :class:`Settings` and parses every answer; does no I/O."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def infer(
        self,
        image: Any,
        model: str,
        version: str | None,
        transport: str | None,
        timeout: TimeoutArg,
        options: dict[str, Any],
    ) -> RestCall | GrpcCall:
        """The call for a prediction, explanation or description: ``options`` are checked against the option
        schema (:func:`codec.build_options`) and the image is encoded before anything is sent."""
        fields = codec.build_options(**options)
        request_id = fields.get("request_id") or new_request_id()
        encoded = codec.encode_image(image) if image is not None else None
        deadline = self.settings.pick_timeout(timeout)
        if self.settings.pick_transport(transport) == "grpc":
            request = predictions_request(model, version, encoded, {**fields, "request_id": request_id})
            target = self.settings.grpc_target
            return GrpcCall("Predictions", request, target, deadline, self._metadata(), request_id=request_id)
        body = codec.rest_body(encoded, fields)
        auth = codec.auth_headers(self.settings.token)
        headers = {**body.headers, "Accept": codec.PROTOBUF_MEDIA_TYPE, REQUEST_ID_HEADER: request_id, **auth}
        url = self.settings.url + codec.rest_path(model, version)
        return RestCall("POST", url, body.content, headers, deadline, request_id=request_id)

    def stream(
        self, image: Any, model: str, version: str | None, timeout: TimeoutArg, options: dict[str, Any]
    ) -> GrpcCall:
        """The ``StreamPredictions2`` request: to ``model``'s streaming twin ``<model>-stream``
        (``cxrexplain-export`` writes it for ``stream: true``), with a fresh sequence id. TorchServe 0.12
        streams only from a model with sequence batching, which cannot answer unary calls (hence the twin),
        and refuses a stream without a sequence id."""
        fields = codec.build_options(**options, stream=True)
        encoded = codec.encode_image(image) if image is not None else None
        twin = model if model.endswith(STREAM_SUFFIX) else model + STREAM_SUFFIX
        request = predictions_request(twin, version, encoded, fields)
        request.sequence_id = uuid.uuid4().hex
        deadline = self.settings.pick_timeout(timeout)
        return GrpcCall("StreamPredictions2", request, self.settings.grpc_target, deadline, self._metadata())

    @staticmethod
    def restream(call: GrpcCall) -> GrpcCall:
        """``call`` (a stream) to send again: the same request and request id under a fresh sequence id, since
        TorchServe keeps a sequence bound to the worker that served it, which may be the one that died."""
        request = type(call.request)()
        request.CopyFrom(call.request)
        request.sequence_id = uuid.uuid4().hex
        return replace(call, request=request)

    def health(self, transport: str | None, timeout: TimeoutArg) -> RestCall | GrpcCall:
        """``/ping`` or gRPC ``Ping`` (TorchServe 0.12 wants the token here too)."""
        deadline = self.settings.pick_timeout(timeout)
        if self.settings.pick_transport(transport) == "grpc":
            return GrpcCall("Ping", empty_pb2.Empty(), self.settings.grpc_target, deadline, self._metadata())
        headers = codec.auth_headers(self.settings.token)
        # An unhealthy server answers /ping with 500 and a status body: that is the answer, not an error.
        return RestCall("GET", f"{self.settings.url}/ping", None, headers, deadline, ok=(500,))

    def model_pages(self, transport: str | None, limit: int, timeout: TimeoutArg) -> ModelPages:
        """The paging through the management API's model list."""
        return ModelPages(self.settings, self.settings.pick_transport(transport), limit, timeout)

    def _metadata(self) -> list[tuple[str, str]]:
        return codec.grpc_metadata(self.settings.token)

    def refresh_token(self, kind: KeyKind, stale: str | None) -> str | None:
        """Re-read the key file after the server refused ``stale``: the new key of ``kind`` (also used by
        every later call), or ``None`` when there is no key file or it still holds the refused key."""
        from .auth import read_key_file

        if self.settings.token_file is None:
            return None
        try:
            fresh = read_key_file(self.settings.token_file, kind)
        except Unauthorized as exc:
            log.warning("re-reading the key file failed: %s", exc)
            return None
        if fresh == stale:
            return None
        if kind == "management":
            self.settings = replace(self.settings, management_token=fresh)
        else:
            self.settings = replace(self.settings, token=fresh)
        log.info("the server refused the %s key; re-read %s", kind, self.settings.token_file)
        return fresh


REQUEST_ID_HEADER = "X-Request-Id"


def new_request_id() -> str:
    """A fresh request id (32 hex digits; fits the ``request_id`` option's pattern)."""
    return uuid.uuid4().hex


class ModelPages:
    """Pages of the model list: :meth:`next_call` asks for the next page, :meth:`add` reads its answer, until
    :attr:`done`; :attr:`models` holds every model seen."""

    def __init__(self, settings: Settings, transport: Transport, limit: int, timeout: TimeoutArg) -> None:
        self._settings = settings
        self._transport = transport
        self._limit = limit
        self._deadline = settings.pick_timeout(timeout)
        self._page: int | None = 0
        self.models: list[ModelInfo] = []

    @property
    def done(self) -> bool:
        return self._page is None

    def next_call(self) -> RestCall | GrpcCall:
        """The call for the next page."""
        page = self._page or 0
        token = self._settings.management_token
        if self._transport == "grpc":
            # TorchServe 0.12 lists nothing unless `limit` is set.
            request = management_pb2.ListModelsRequest(limit=self._limit, next_page_token=page)
            target = self._settings.grpc_management_target
            return GrpcCall("ListModels", request, target, self._deadline, codec.grpc_metadata(token), True)
        url = f"{self._settings.management_url}/models?limit={self._limit}&next_page_token={page}"
        return RestCall("GET", url, None, codec.auth_headers(token), self._deadline, management=True)

    def add(self, reply: httpx.Response | management_pb2.ManagementResponse) -> None:
        """Read one page's answer."""
        text = reply.content if isinstance(reply, httpx.Response) else reply.msg
        models, next_page = parse_model_list(text)
        self.models.extend(models)
        self._page = next_page if next_page and models else None


# ---------------------------------------------------------------------------------------------- answers
def explain_payload(reply: httpx.Response | inference_pb2.PredictionResponse) -> explain_pb2.ExplainResponse:
    """The ``ExplainResponse`` of a REST answer or a gRPC ``PredictionResponse`` (raising its ``status``)."""
    if isinstance(reply, httpx.Response):
        return codec.parse_payload(reply.content, reply.headers.get("content-type"))
    check_prediction_status(reply)
    return codec.parse_payload(reply.prediction)


def check_prediction_status(resp: inference_pb2.PredictionResponse) -> None:
    """Raise the error StreamPredictions2 reports inside a response (``status``), not as the call status."""
    if resp.HasField("status") and resp.status.code != 0:
        name = GRPC_CODE_NAMES.get(resp.status.code, "UNKNOWN")
        raise error_from_grpc(name, resp.status.message)


def stream_part(assembler: codec.StreamAssembler, resp: inference_pb2.PredictionResponse) -> StreamPart:
    """One streamed response as the part the user sees (merged into ``assembler``); raises its error."""
    check_prediction_status(resp)
    return assembler.add(codec.parse_payload(resp.prediction))


def stream_cut_short() -> CxrExplainClientError:
    """The error for a stream that ended before its ``last`` part."""
    return CxrExplainClientError("the stream ended before its last part; the server may have restarted")


def parse_model_list(text: str | bytes) -> tuple[list[ModelInfo], int | None]:
    """TorchServe's model list JSON -> (models, next page token or None)."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise CxrExplainClientError(f"the model list is not JSON: {exc}") from exc
    models = [ModelInfo(m.get("modelName", ""), m.get("modelUrl", "")) for m in doc.get("models", [])]
    token = doc.get("nextPageToken")
    return models, int(token) if token not in (None, "") else None


def parse_health(reply: httpx.Response | inference_pb2.TorchServeHealthResponse) -> Health:
    """``/ping`` JSON (``{"status": "Healthy"}``) or gRPC ``Ping``'s text -> :class:`Health`."""
    text: str | bytes = reply.content if isinstance(reply, httpx.Response) else reply.health
    try:
        doc = json.loads(text)
    except ValueError:
        return Health(status=(text.decode() if isinstance(text, bytes) else text).strip() or "Unknown")
    return Health(status=str(doc.get("status", "Unknown")))


# ----------------------------------------------------------------------------------------------- errors
def grpc_error(exc: grpc.RpcError, target: str, deadline: float | None) -> CxrExplainClientError:
    """The typed exception for a failed gRPC call, sync (``grpc.Call``) or aio (``AioRpcError``) alike."""
    if isinstance(exc, grpc.Call | grpc.aio.AioRpcError):
        code, details = exc.code(), exc.details()
    else:
        code, details = grpc.StatusCode.UNKNOWN, str(exc)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return timeout_error(target, deadline)
    if code == grpc.StatusCode.UNAVAILABLE and details and "connect" in details.lower():
        return connection_error(target, exc)
    return error_from_grpc(code.name, details)


__all__ = [
    "USE_CLIENT_DEFAULT",
    "ClientBase",
    "ClientCore",
    "Settings",
    "Transport",
    "make_settings",
    "predictions_request",
]


def grpc_stub(channel: Any, management: bool) -> Any:
    """The stub a call goes through: TorchServe's management service or its inference service (sync or aio
    channel alike)."""
    if management:
        return management_pb2_grpc.ManagementAPIsServiceStub(channel)
    return inference_pb2_grpc.InferenceAPIsServiceStub(channel)

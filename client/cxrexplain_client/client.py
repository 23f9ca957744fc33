"""The synchronous client: REST (httpx) and gRPC (grpcio) to a TorchServe running cxrexplain models."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any

import grpc
import httpx
from google.protobuf import empty_pb2

from . import codec
from ._base import (
    DEFAULT_GRPC_MANAGEMENT_TARGET,
    DEFAULT_GRPC_TARGET,
    DEFAULT_MANAGEMENT_URL,
    DEFAULT_TIMEOUT,
    DEFAULT_URL,
    MAX_MESSAGE_BYTES,
    Settings,
    TimeoutArg,
    check_prediction_status,
    make_settings,
    option_kwargs,
    parse_health,
    parse_model_list,
    predictions_request,
    prepare,
    stream_request,
)
from ._proto import inference_pb2, inference_pb2_grpc, management_pb2, management_pb2_grpc
from ._retry import USE_CLIENT_DEFAULT, RetryPolicy, grpc_channel_options
from .errors import CxrExplainClientError, connection_error, error_from_grpc, timeout_error
from .results import Explanation, Health, ModelDescription, ModelInfo, StreamPart

log = logging.getLogger(__name__)

Targets = Sequence[str | int] | str | int | None


class ExplainClient:
    """Synchronous client for cxrexplain models served by TorchServe.

    Parameters
    ----------
    url
        Inference REST endpoint (TorchServe ``inference_address``).
    grpc_target
        Inference gRPC ``host:port`` (TorchServe ``grpc_inference_port``).
    token, token_file
        Bearer token, or TorchServe's ``key_file.json`` to read the inference (and management) key from;
        default: the ``CXREXPLAIN_TOKEN`` environment variable.
    management_url, grpc_management_target, management_token
        The management API (loopback only by default in the service), used by :meth:`models`.
    timeout
        Seconds per call (``None``: no limit). Each method also takes ``timeout=``.
    retries
        Retries on an unavailable / overloaded server (HTTP 503, gRPC UNAVAILABLE, refused connection).
    retry_policy
        Full control over the backoff; overrides ``retries``.
    transport
        Default transport for calls that do not name one: ``"rest"`` or ``"grpc"``.

    Examples
    --------
    >>> with ExplainClient(token_file="key_file.json") as client:            # doctest: +SKIP
    ...     ex = client.explain("cxr.png", "densenet", methods=["cam", "rap"], targets="positive")
    ...     ex.overlay("rap", "cxr.png").save("rap.png")
    """

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
        retries: int = 3,
        retry_policy: RetryPolicy | None = None,
        transport: str = "rest",
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self.settings: Settings = make_settings(
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
        self._http = httpx.Client(timeout=timeout)
        self._channel: grpc.Channel | None = None
        self._mgmt_channel: grpc.Channel | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------------ lifecycle
    def __enter__(self) -> ExplainClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connection pool and any gRPC channels."""
        self._http.close()
        with self._lock:
            for ch in (self._channel, self._mgmt_channel):
                if ch is not None:
                    ch.close()
            self._channel = self._mgmt_channel = None

    # ------------------------------------------------------------------------------------------ public API
    def predict(
        self,
        image: Any,
        model: str,
        *,
        version: str | None = None,
        top_k: int | None = None,
        transport: str | None = None,
        timeout: TimeoutArg = USE_CLIENT_DEFAULT,
    ) -> Explanation:
        """Findings only (no explanation methods) for one image.

        Parameters
        ----------
        image
            Path, bytes, numpy array, PIL image or pydicom Dataset.
        model, version
            The registered model (and optional version).
        top_k
            Keep only the k most probable findings.
        transport, timeout
            Override the client's defaults for this call.

        Returns
        -------
        Explanation
            With ``findings`` and no ``results``.
        """
        opts = option_kwargs(None, None, top_k, None, None, None, None, None)
        return self._infer(image, model, version, opts, transport, timeout)

    def explain(
        self,
        image: Any,
        model: str,
        methods: Sequence[str] | str = ("cam",),
        targets: Targets = "positive",
        *,
        version: str | None = None,
        top_k: int | None = None,
        heatmap_format: str | None = None,
        heatmap_dtype: str | None = None,
        frames: int | None = None,
        latent_shift_map: str | None = None,
        direction: str | None = None,
        transport: str | None = None,
        timeout: TimeoutArg = USE_CLIENT_DEFAULT,
    ) -> Explanation:
        """Findings and explanations for one image.

        Parameters
        ----------
        image
            Path, bytes, numpy array (sent as .npy), PIL image or pydicom Dataset.
        model, version
            The registered model (and optional version).
        methods
            Method names (``cam``, ``gradcam``, ``lrp``, ``rap``, ``latent_shift``, ``saliency``, ...).
        targets
            Label names or indices, or ``"positive"`` (every finding above its operating point).
        top_k
            Explain the k most probable findings.
        heatmap_format, heatmap_dtype
            ``array`` (raw, ``float16`` or ``float32``) or ``png`` (display-normalized).
        frames, latent_shift_map, direction
            Latent Shift: number of frames, map kind (``max``, ``mean``, ``minmax``, ``int``), ``logit`` or
            ``sigmoid``.
        transport, timeout
            Override the client's defaults for this call.

        Returns
        -------
        Explanation
        """
        opts = option_kwargs(
            methods, targets, top_k, heatmap_format, heatmap_dtype, frames, latent_shift_map, direction
        )
        return self._infer(image, model, version, opts, transport, timeout)

    def stream_explain(
        self,
        image: Any,
        model: str,
        methods: Sequence[str] | str = ("cam",),
        targets: Targets = "positive",
        *,
        version: str | None = None,
        top_k: int | None = None,
        heatmap_format: str | None = None,
        heatmap_dtype: str | None = None,
        frames: int | None = None,
        latent_shift_map: str | None = None,
        direction: str | None = None,
        timeout: TimeoutArg = USE_CLIENT_DEFAULT,
    ) -> Iterator[StreamPart]:
        """Explain over gRPC ``StreamPredictions2``, yielding parts as the server finishes them.

        Parts come findings first, then each heatmap, then the latent-shift frames; iteration ends after the
        part marked ``last`` (its ``explanation`` is the complete answer). Same arguments as :meth:`explain`.
        The call goes to the model's streaming twin ``<model>-stream`` (see README, Streaming), with a fresh
        sequence id: TorchServe 0.12 refuses a stream without one.
        """
        opts = option_kwargs(
            methods, targets, top_k, heatmap_format, heatmap_dtype, frames, latent_shift_map, direction
        )
        encoded, fields = prepare(image, opts, stream=True)
        request = stream_request(model, version, encoded, fields)
        deadline = self.settings.pick_timeout(timeout)
        # TorchServe ends the response stream as soon as the client half-closes, so the request stream stays
        # open until the last part has arrived.
        finished = threading.Event()

        def requests() -> Iterator[inference_pb2.PredictionsRequest]:
            yield request
            finished.wait()

        stub = inference_pb2_grpc.InferenceAPIsServiceStub(self._grpc_channel())
        call = stub.StreamPredictions2(
            requests(), timeout=deadline, metadata=codec.grpc_metadata(self.settings.token)
        )
        assembler = codec.StreamAssembler()
        try:
            for response in call:
                check_prediction_status(response)
                part = assembler.add(codec.parse_payload(response.prediction))
                yield part
                if part.last:
                    break
        except grpc.RpcError as exc:
            raise self._grpc_error(exc, self.settings.grpc_target, deadline) from exc
        finally:
            finished.set()
            if not assembler.finished:
                call.cancel()
        if not assembler.finished:
            raise CxrExplainClientError(
                "the stream ended before its last part; the server may have restarted"
            )
        try:
            for _ in call:  # drain: the server completes once the request stream is closed
                pass
        except grpc.RpcError as exc:
            log.debug("stream closed with %s after the last part", exc.code())

    def describe(
        self,
        model: str,
        *,
        version: str | None = None,
        transport: str | None = None,
        timeout: TimeoutArg = USE_CLIENT_DEFAULT,
    ) -> ModelDescription:
        """The model's labels, operating points, input spec, methods and intended use (inference port).

        Returns
        -------
        ModelDescription
        """
        _, fields = prepare(None, {}, describe=True)
        msg = self._send(None, fields, model, version, transport, timeout)
        return codec.to_description(msg)

    def models(
        self, *, transport: str | None = None, limit: int = 100, timeout: TimeoutArg = USE_CLIENT_DEFAULT
    ) -> list[ModelInfo]:
        """Registered models, from the management API (all pages).

        Returns
        -------
        list of ModelInfo
        """
        chosen = self.settings.pick_transport(transport)
        deadline = self.settings.pick_timeout(timeout)
        out: list[ModelInfo] = []
        page: int | None = 0
        while page is not None:
            if chosen == "grpc":
                stub = management_pb2_grpc.ManagementAPIsServiceStub(self._grpc_mgmt_channel())
                # TorchServe 0.12 lists nothing unless `limit` is set.
                req = management_pb2.ListModelsRequest(limit=limit, next_page_token=page)
                try:
                    reply = stub.ListModels(
                        req, timeout=deadline, metadata=codec.grpc_metadata(self.settings.management_token)
                    )
                except grpc.RpcError as exc:
                    raise self._grpc_error(exc, self.settings.grpc_management_target, deadline) from exc
                text: str | bytes = reply.msg
            else:
                url = f"{self.settings.management_url}/models?limit={limit}&next_page_token={page}"
                resp = self._rest("GET", url, None, {}, deadline, self.settings.management_token)
                text = resp.content
            models, next_page = parse_model_list(text)
            out.extend(models)
            page = next_page if next_page and models else None
        return out

    def health(self, *, transport: str | None = None, timeout: TimeoutArg = USE_CLIENT_DEFAULT) -> Health:
        """The server's health (``/ping``; TorchServe 0.12 wants the token here too)."""
        chosen = self.settings.pick_transport(transport)
        deadline = self.settings.pick_timeout(timeout)
        if chosen == "grpc":
            stub = inference_pb2_grpc.InferenceAPIsServiceStub(self._grpc_channel())
            try:
                reply = stub.Ping(
                    empty_pb2.Empty(), timeout=deadline, metadata=codec.grpc_metadata(self.settings.token)
                )
            except grpc.RpcError as exc:
                raise self._grpc_error(exc, self.settings.grpc_target, deadline) from exc
            return parse_health(reply.health)
        resp = self._rest(
            "GET", f"{self.settings.url}/ping", None, {}, deadline, self.settings.token, ok=(500,)
        )
        return parse_health(resp.content)

    # ----------------------------------------------------------------------------------------- internals
    def _infer(
        self,
        image: Any,
        model: str,
        version: str | None,
        opts: dict[str, Any],
        transport: str | None,
        timeout: TimeoutArg,
    ) -> Explanation:
        encoded, fields = prepare(image, opts)
        return codec.to_explanation(self._send(encoded, fields, model, version, transport, timeout))

    def _send(
        self,
        encoded: codec.EncodedImage | None,
        fields: dict[str, str],
        model: str,
        version: str | None,
        transport: str | None,
        timeout: TimeoutArg,
    ) -> Any:
        chosen = self.settings.pick_transport(transport)
        deadline = self.settings.pick_timeout(timeout)
        if chosen == "grpc":
            request = predictions_request(model, version, encoded, fields)
            stub = inference_pb2_grpc.InferenceAPIsServiceStub(self._grpc_channel())
            try:
                reply = stub.Predictions(
                    request, timeout=deadline, metadata=codec.grpc_metadata(self.settings.token)
                )
            except grpc.RpcError as exc:
                raise self._grpc_error(exc, self.settings.grpc_target, deadline) from exc
            check_prediction_status(reply)
            return codec.parse_payload(reply.prediction)
        body = codec.rest_body(encoded, fields)
        headers = {**body.headers, "Accept": codec.PROTOBUF_MEDIA_TYPE}
        url = self.settings.url + codec.rest_path(model, version)
        resp = self._rest("POST", url, body.content, headers, deadline, self.settings.token)
        return codec.parse_payload(resp.content, resp.headers.get("content-type"))

    def _rest(
        self,
        method: str,
        url: str,
        content: bytes | None,
        headers: dict[str, str],
        timeout: float | None,
        token: str | None,
        ok: tuple[int, ...] = (),
    ) -> httpx.Response:
        """One REST call with the retry loop: HTTP 503 and refused connections are retried with backoff."""
        delays = self.settings.policy.delays()
        all_headers = {**headers, **codec.auth_headers(token)}
        while True:
            try:
                resp = self._http.request(method, url, content=content, headers=all_headers, timeout=timeout)
            except httpx.TimeoutException as exc:
                raise timeout_error(url, timeout) from exc
            except httpx.ConnectError as exc:
                error: CxrExplainClientError = connection_error(url, exc)
                cause: Exception = exc
            except httpx.TransportError as exc:
                raise connection_error(url, exc) from exc
            else:
                if resp.status_code < 400 or resp.status_code in ok:
                    return resp
                try:
                    resp.raise_for_status()
                except httpx.HTTPStatusError as exc:
                    error = codec.http_error(resp.status_code, resp.content, resp.headers.get("content-type"))
                    cause = exc
                if resp.status_code != 503:
                    raise error from cause
            delay = next(delays, None)
            if delay is None:
                raise error from cause
            log.info("%s %s: %s; retrying in %.2f s", method, url, error.message, delay)
            time.sleep(delay)

    def _grpc_channel(self) -> grpc.Channel:
        with self._lock:
            if self._channel is None:
                self._channel = grpc.insecure_channel(
                    self.settings.grpc_target,
                    options=grpc_channel_options(self.settings.policy, self.settings.max_message_bytes),
                )
            return self._channel

    def _grpc_mgmt_channel(self) -> grpc.Channel:
        with self._lock:
            if self._mgmt_channel is None:
                self._mgmt_channel = grpc.insecure_channel(
                    self.settings.grpc_management_target,
                    options=grpc_channel_options(self.settings.policy, self.settings.max_message_bytes),
                )
            return self._mgmt_channel

    @staticmethod
    def _grpc_error(exc: grpc.RpcError, target: str, deadline: float | None) -> CxrExplainClientError:
        code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return timeout_error(target, deadline)
        if code == grpc.StatusCode.UNAVAILABLE and details and "connect" in details.lower():
            return connection_error(target, exc)
        return error_from_grpc(code.name, details)

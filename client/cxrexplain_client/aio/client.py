"""The asyncio client: the same API as :class:`cxrexplain_client.ExplainClient`, every call awaitable."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any

import grpc
import grpc.aio
import httpx
from google.protobuf import empty_pb2

from .. import codec
from .._base import (
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
from .._proto import inference_pb2_grpc, management_pb2, management_pb2_grpc
from .._retry import USE_CLIENT_DEFAULT, RetryPolicy, grpc_channel_options
from ..errors import CxrExplainClientError, connection_error, error_from_grpc, timeout_error
from ..results import Explanation, Health, ModelDescription, ModelInfo, StreamPart

log = logging.getLogger(__name__)

Targets = Sequence[str | int] | str | int | None


class AsyncExplainClient:
    """Asynchronous client for cxrexplain models served by TorchServe.

    Takes the same arguments as :class:`cxrexplain_client.ExplainClient`; use ``async with`` or
    ``await client.close()``. gRPC channels are created on first use inside the running event loop.
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
        self._http = httpx.AsyncClient(timeout=timeout)
        self._channel: grpc.aio.Channel | None = None
        self._mgmt_channel: grpc.aio.Channel | None = None

    async def __aenter__(self) -> AsyncExplainClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP connection pool and any gRPC channels."""
        await self._http.aclose()
        for ch in (self._channel, self._mgmt_channel):
            if ch is not None:
                await ch.close()
        self._channel = self._mgmt_channel = None

    async def predict(
        self,
        image: Any,
        model: str,
        *,
        version: str | None = None,
        top_k: int | None = None,
        transport: str | None = None,
        timeout: TimeoutArg = USE_CLIENT_DEFAULT,
    ) -> Explanation:
        """Findings only for one image; see :meth:`cxrexplain_client.ExplainClient.predict`."""
        opts = option_kwargs(None, None, top_k, None, None, None, None, None)
        encoded, fields = prepare(image, opts)
        return codec.to_explanation(await self._send(encoded, fields, model, version, transport, timeout))

    async def explain(
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
        """Findings and explanations for one image; see :meth:`cxrexplain_client.ExplainClient.explain`."""
        opts = option_kwargs(
            methods, targets, top_k, heatmap_format, heatmap_dtype, frames, latent_shift_map, direction
        )
        encoded, fields = prepare(image, opts)
        return codec.to_explanation(await self._send(encoded, fields, model, version, transport, timeout))

    async def stream_explain(
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
    ) -> AsyncIterator[StreamPart]:
        """Explain over gRPC ``StreamPredictions2``: async iterator of parts ending with the ``last`` one.

        Like the sync client, the call goes to the streaming twin ``<model>-stream`` with a fresh sequence id.
        """
        opts = option_kwargs(
            methods, targets, top_k, heatmap_format, heatmap_dtype, frames, latent_shift_map, direction
        )
        encoded, fields = prepare(image, opts, stream=True)
        request = stream_request(model, version, encoded, fields)
        deadline = self.settings.pick_timeout(timeout)
        stub = inference_pb2_grpc.InferenceAPIsServiceStub(self._grpc_channel())
        call = stub.StreamPredictions2(timeout=deadline, metadata=codec.grpc_metadata(self.settings.token))
        assembler = codec.StreamAssembler()
        try:
            await call.write(request)
            while not assembler.finished:
                response = await call.read()
                if response is grpc.aio.EOF:
                    raise CxrExplainClientError(
                        "the stream ended before its last part; the server may have restarted"
                    )
                check_prediction_status(response)
                yield assembler.add(codec.parse_payload(response.prediction))
            # Half-close only now: TorchServe ends the response stream as soon as the client half-closes.
            await call.done_writing()
            while await call.read() is not grpc.aio.EOF:  # drain to the server's end of stream
                pass
        except grpc.RpcError as exc:
            raise _grpc_error(exc, self.settings.grpc_target, deadline) from exc
        finally:
            if not assembler.finished:
                call.cancel()

    async def describe(
        self,
        model: str,
        *,
        version: str | None = None,
        transport: str | None = None,
        timeout: TimeoutArg = USE_CLIENT_DEFAULT,
    ) -> ModelDescription:
        """The model's description from the inference port (``describe=true``)."""
        _, fields = prepare(None, {}, describe=True)
        return codec.to_description(await self._send(None, fields, model, version, transport, timeout))

    async def models(
        self, *, transport: str | None = None, limit: int = 100, timeout: TimeoutArg = USE_CLIENT_DEFAULT
    ) -> list[ModelInfo]:
        """Registered models, from the management API (all pages)."""
        chosen = self.settings.pick_transport(transport)
        deadline = self.settings.pick_timeout(timeout)
        out: list[ModelInfo] = []
        page: int | None = 0
        while page is not None:
            if chosen == "grpc":
                stub = management_pb2_grpc.ManagementAPIsServiceStub(self._grpc_mgmt_channel())
                req = management_pb2.ListModelsRequest(limit=limit, next_page_token=page)
                try:
                    reply = await stub.ListModels(
                        req, timeout=deadline, metadata=codec.grpc_metadata(self.settings.management_token)
                    )
                except grpc.RpcError as exc:
                    raise _grpc_error(exc, self.settings.grpc_management_target, deadline) from exc
                text: str | bytes = reply.msg
            else:
                url = f"{self.settings.management_url}/models?limit={limit}&next_page_token={page}"
                resp = await self._rest("GET", url, None, {}, deadline, self.settings.management_token)
                text = resp.content
            models, next_page = parse_model_list(text)
            out.extend(models)
            page = next_page if next_page and models else None
        return out

    async def health(
        self, *, transport: str | None = None, timeout: TimeoutArg = USE_CLIENT_DEFAULT
    ) -> Health:
        """The server's health (``/ping``)."""
        chosen = self.settings.pick_transport(transport)
        deadline = self.settings.pick_timeout(timeout)
        if chosen == "grpc":
            stub = inference_pb2_grpc.InferenceAPIsServiceStub(self._grpc_channel())
            try:
                reply = await stub.Ping(
                    empty_pb2.Empty(), timeout=deadline, metadata=codec.grpc_metadata(self.settings.token)
                )
            except grpc.RpcError as exc:
                raise _grpc_error(exc, self.settings.grpc_target, deadline) from exc
            return parse_health(reply.health)
        resp = await self._rest(
            "GET", f"{self.settings.url}/ping", None, {}, deadline, self.settings.token, (500,)
        )
        return parse_health(resp.content)

    # ----------------------------------------------------------------------------------------- internals
    async def _send(
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
                reply = await stub.Predictions(
                    request, timeout=deadline, metadata=codec.grpc_metadata(self.settings.token)
                )
            except grpc.RpcError as exc:
                raise _grpc_error(exc, self.settings.grpc_target, deadline) from exc
            check_prediction_status(reply)
            return codec.parse_payload(reply.prediction)
        body = codec.rest_body(encoded, fields)
        headers = {**body.headers, "Accept": codec.PROTOBUF_MEDIA_TYPE}
        url = self.settings.url + codec.rest_path(model, version)
        resp = await self._rest("POST", url, body.content, headers, deadline, self.settings.token)
        return codec.parse_payload(resp.content, resp.headers.get("content-type"))

    async def _rest(
        self,
        method: str,
        url: str,
        content: bytes | None,
        headers: dict[str, str],
        timeout: float | None,
        token: str | None,
        ok: tuple[int, ...] = (),
    ) -> httpx.Response:
        """One REST call with the retry loop (HTTP 503 and refused connections, capped backoff)."""
        delays = self.settings.policy.delays()
        all_headers = {**headers, **codec.auth_headers(token)}
        while True:
            try:
                resp = await self._http.request(
                    method, url, content=content, headers=all_headers, timeout=timeout
                )
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
            await asyncio.sleep(delay)

    def _grpc_channel(self) -> grpc.aio.Channel:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(
                self.settings.grpc_target,
                options=grpc_channel_options(self.settings.policy, self.settings.max_message_bytes),
            )
        return self._channel

    def _grpc_mgmt_channel(self) -> grpc.aio.Channel:
        if self._mgmt_channel is None:
            self._mgmt_channel = grpc.aio.insecure_channel(
                self.settings.grpc_management_target,
                options=grpc_channel_options(self.settings.policy, self.settings.max_message_bytes),
            )
        return self._mgmt_channel


def _grpc_error(exc: grpc.RpcError, target: str, deadline: float | None) -> CxrExplainClientError:
    code = exc.code() if isinstance(exc, grpc.aio.AioRpcError) else grpc.StatusCode.UNKNOWN
    details = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return timeout_error(target, deadline)
    if code == grpc.StatusCode.UNAVAILABLE and details and "connect" in details.lower():
        return connection_error(target, exc)
    return error_from_grpc(code.name, details or code.name)

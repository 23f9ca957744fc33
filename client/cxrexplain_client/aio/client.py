"""The asyncio client: the same API as :class:`cxrexplain_client.ExplainClient`, every call awaitable.

Requests are built and answers parsed by the same :mod:`.._core` as the sync client's; only the I/O differs
(``httpx.AsyncClient``, ``grpc.aio``, ``asyncio.sleep`` between retries).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
import httpx

from .. import codec
from .._attempts import Attempts
from .._core import (
    ClientBase,
    GrpcCall,
    RestCall,
    TimeoutArg,
    explain_payload,
    grpc_error,
    grpc_stub,
    parse_health,
    stream_cut_short,
    stream_part,
)
from .._proto import explain_pb2
from .._retry import USE_CLIENT_DEFAULT
from ..results import Explanation, Health, ModelDescription, ModelInfo, StreamPart

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .._proto.options_schema import ExplainOptions

log = logging.getLogger(__name__)

Targets = Sequence[str | int] | str | int | None


class AsyncExplainClient(ClientBase):
    """Asynchronous client for cxrexplain models served by TorchServe.

    Takes the same arguments as :class:`cxrexplain_client.ExplainClient`; use ``async with`` or
    ``await client.close()``. gRPC channels are created on first use inside the running event loop.
    """

    def _open(self) -> None:
        self._http = httpx.AsyncClient(timeout=self.settings.timeout)
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
        call = self._core.infer(image, model, version, transport, timeout, {"top_k": top_k})
        return codec.to_explanation(await self._unary(call))

    async def explain(
        self,
        image: Any,
        model: str,
        methods: Sequence[str] | str = ("cam",),
        targets: Targets = "positive",
        *,
        version: str | None = None,
        transport: str | None = None,
        timeout: TimeoutArg = USE_CLIENT_DEFAULT,
        **options: Unpack[ExplainOptions],
    ) -> Explanation:
        """Findings and explanations for one image; see :meth:`cxrexplain_client.ExplainClient.explain` (every
        request option as a keyword argument, checked before anything is sent)."""
        request = {"methods": methods, "targets": targets, **options}
        call = self._core.infer(image, model, version, transport, timeout, request)
        return codec.to_explanation(await self._unary(call))

    async def stream_explain(
        self,
        image: Any,
        model: str,
        methods: Sequence[str] | str = ("cam",),
        targets: Targets = "positive",
        *,
        version: str | None = None,
        timeout: TimeoutArg = USE_CLIENT_DEFAULT,
        **options: Unpack[ExplainOptions],
    ) -> AsyncIterator[StreamPart]:
        """Explain over gRPC ``StreamPredictions2``: async iterator of parts ending with the ``last`` one.

        Like the sync client, the call goes to the streaming twin ``<model>-stream`` with a fresh sequence id.
        """
        request = {"methods": methods, "targets": targets, **options}
        # Retried until the first part has arrived, as in the sync client.
        attempts = Attempts(self._core, self._core.stream(image, model, version, timeout, request))
        while True:
            parts = self._stream_once(attempts.call)
            try:
                first = await parts.__anext__()
            except grpc.RpcError as exc:
                delay = attempts.after_grpc_error(exc)
            else:
                yield first
                try:
                    async for part in parts:
                        yield part
                except grpc.RpcError as exc:
                    raise grpc_error(exc, attempts.call.target, attempts.call.timeout) from exc
                return
            await asyncio.sleep(delay)
            attempts.call = self._core.restream(attempts.call)

    async def _stream_once(self, call: GrpcCall) -> AsyncIterator[StreamPart]:
        """One ``StreamPredictions2`` call's parts; a failed call raises its ``grpc.RpcError``."""
        stub = grpc_stub(self._grpc_channel(False), management=False)
        stream = stub.StreamPredictions2(timeout=call.timeout, metadata=call.metadata)
        assembler = codec.StreamAssembler()
        try:
            await stream.write(call.request)
            while not assembler.finished:
                response = await stream.read()
                if response is grpc.aio.EOF:
                    raise stream_cut_short()
                yield stream_part(assembler, response)
            # Half-close only now: TorchServe ends the response stream as soon as the client half-closes.
            await stream.done_writing()
            while await stream.read() is not grpc.aio.EOF:  # drain to the server's end of stream
                pass
        finally:
            if not assembler.finished:
                stream.cancel()

    async def describe(
        self,
        model: str,
        *,
        version: str | None = None,
        transport: str | None = None,
        timeout: TimeoutArg = USE_CLIENT_DEFAULT,
    ) -> ModelDescription:
        """The model's description from the inference port (``describe=true``)."""
        call = self._core.infer(None, model, version, transport, timeout, {"describe": True})
        return codec.to_description(await self._unary(call))

    async def models(
        self, *, transport: str | None = None, limit: int = 100, timeout: TimeoutArg = USE_CLIENT_DEFAULT
    ) -> list[ModelInfo]:
        """Registered models, from the management API (all pages)."""
        pages = self._core.model_pages(transport, limit, timeout)
        while not pages.done:
            call = pages.next_call()
            pages.add(await self._grpc(call) if isinstance(call, GrpcCall) else await self._rest(call))
        return pages.models

    async def health(
        self, *, transport: str | None = None, timeout: TimeoutArg = USE_CLIENT_DEFAULT
    ) -> Health:
        """The server's health (``/ping``)."""
        call = self._core.health(transport, timeout)
        return parse_health(await self._grpc(call) if isinstance(call, GrpcCall) else await self._rest(call))

    # ---------------------------------------------------------------------------------------------- I/O
    async def _unary(self, call: RestCall | GrpcCall) -> explain_pb2.ExplainResponse:
        reply = await self._grpc(call) if isinstance(call, GrpcCall) else await self._rest(call)
        return explain_payload(reply)

    async def _grpc(self, call: GrpcCall) -> Any:
        stub = grpc_stub(self._grpc_channel(call.management), call.management)
        attempts = Attempts(self._core, call)
        while True:
            sent = attempts.call
            try:
                rpc = getattr(stub, sent.rpc)
                return await rpc(sent.request, timeout=sent.timeout, metadata=sent.metadata)
            except grpc.RpcError as exc:
                delay = attempts.after_grpc_error(exc)
            await asyncio.sleep(delay)

    async def _rest(self, call: RestCall) -> httpx.Response:
        attempts = Attempts(self._core, call)
        while True:
            sent = attempts.call
            try:
                resp = await self._http.request(
                    sent.method, sent.url, content=sent.content, headers=sent.headers, timeout=sent.timeout
                )
            except httpx.TransportError as exc:
                delay = attempts.after_rest_error(exc)
            else:
                wait = attempts.after_response(resp)
                if wait is None:
                    return resp
                delay = wait
            await asyncio.sleep(delay)

    def _grpc_channel(self, management: bool) -> grpc.aio.Channel:
        if management:
            if self._mgmt_channel is None:
                self._mgmt_channel = grpc.aio.insecure_channel(
                    self.settings.grpc_management_target, options=self.settings.channel_options()
                )
            return self._mgmt_channel
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(
                self.settings.grpc_target, options=self.settings.channel_options()
            )
        return self._channel

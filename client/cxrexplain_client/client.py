"""The synchronous client: REST (httpx) and gRPC (grpcio) to a TorchServe running cxrexplain models."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import grpc
import httpx

from . import codec
from ._attempts import Attempts
from ._core import (
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
from ._proto import explain_pb2, inference_pb2
from ._retry import USE_CLIENT_DEFAULT
from .results import Explanation, Health, ModelDescription, ModelInfo, StreamPart

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ._proto.options_schema import ExplainOptions

log = logging.getLogger(__name__)

Targets = Sequence[str | int] | str | int | None


class ExplainClient(ClientBase):
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
        Most retries of a call whose answer was lost (HTTP 503 and 507, a refused or reset connection, gRPC
        UNAVAILABLE and a dead worker); default ``None``: as many as the 60 s budget allows; 0: none.
    retry_policy
        Full control over the backoff and the budget (:class:`RetryPolicy`); overrides ``retries``.
    transport
        Default transport for calls that do not name one: ``"rest"`` or ``"grpc"``.

    Examples
    --------
    >>> with ExplainClient(token_file="key_file.json") as client:            # doctest: +SKIP
    ...     ex = client.explain("cxr.png", "densenet", methods=["cam", "rap"], targets="positive")
    ...     ex.overlay("rap", "cxr.png").save("rap.png")
    """

    def _open(self) -> None:
        self._http = httpx.Client(timeout=self.settings.timeout)
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
        call = self._core.infer(image, model, version, transport, timeout, {"top_k": top_k})
        return codec.to_explanation(self._unary(call))

    def explain(
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
        transport, timeout
            Override the client's defaults for this call.
        **options
            Every other request option, by its wire key (:class:`~cxrexplain_client._proto.options_schema.
            ExplainOptions`, README's option table): ``top_k``, ``heatmap_format`` (``array`` | ``png``),
            ``heatmap_dtype`` (``float16`` | ``float32``), ``frames``, ``latent_shift_map``, ``direction``,
            ``gif``, ``steps``, ``accept``, ``request_id``, ``value_range`` (``(low, high)``), and
            ``method_options`` for each method's own options, ``{"gradcam": {"layer": "features.28"}}``.
            Each is checked against the option schema before anything is sent.

        Returns
        -------
        Explanation

        Raises
        ------
        InvalidInput
            An option value that does not fit (the message names the option), or the server's refusal.
        TypeError
            An option name that does not exist.
        """
        request = {"methods": methods, "targets": targets, **options}
        call = self._core.infer(image, model, version, transport, timeout, request)
        return codec.to_explanation(self._unary(call))

    def stream_explain(
        self,
        image: Any,
        model: str,
        methods: Sequence[str] | str = ("cam",),
        targets: Targets = "positive",
        *,
        version: str | None = None,
        timeout: TimeoutArg = USE_CLIENT_DEFAULT,
        **options: Unpack[ExplainOptions],
    ) -> Iterator[StreamPart]:
        """Explain over gRPC ``StreamPredictions2``, yielding parts as the server finishes them.

        Parts come findings first, then each heatmap, then the latent-shift frames; iteration ends after the
        part marked ``last`` (its ``explanation`` is the complete answer). Same arguments as :meth:`explain`.
        The call goes to the model's streaming twin ``<model>-stream`` (see README, Streaming), with a fresh
        sequence id: TorchServe 0.12 refuses a stream without one.
        """
        request = {"methods": methods, "targets": targets, **options}
        # Retried like a unary call (same request id, fresh sequence id) until its first part has arrived;
        # after that a failure is raised, since the parts already yielded cannot be taken back.
        attempts = Attempts(self._core, self._core.stream(image, model, version, timeout, request))
        while True:
            parts = self._stream_once(attempts.call)
            try:
                first = next(parts)
            except grpc.RpcError as exc:
                delay = attempts.after_grpc_error(exc)
            else:
                yield first
                try:
                    yield from parts
                except grpc.RpcError as exc:
                    raise grpc_error(exc, attempts.call.target, attempts.call.timeout) from exc
                return
            time.sleep(delay)
            attempts.call = self._core.restream(attempts.call)

    def _stream_once(self, call: GrpcCall) -> Iterator[StreamPart]:
        """One ``StreamPredictions2`` call's parts; a failed call raises its ``grpc.RpcError``."""
        # TorchServe ends the response stream as soon as the client half-closes, so the request stream stays
        # open until the last part has arrived.
        finished = threading.Event()

        def requests() -> Iterator[inference_pb2.PredictionsRequest]:
            yield call.request
            finished.wait()

        stub = grpc_stub(self._grpc_channel(False), management=False)
        responses = stub.StreamPredictions2(requests(), timeout=call.timeout, metadata=call.metadata)
        assembler = codec.StreamAssembler()
        try:
            for response in responses:
                part = stream_part(assembler, response)
                yield part
                if part.last:
                    break
        finally:
            finished.set()
            if not assembler.finished:
                responses.cancel()
        if not assembler.finished:
            raise stream_cut_short()
        try:
            for _ in responses:  # drain: the server completes once the request stream is closed
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
        call = self._core.infer(None, model, version, transport, timeout, {"describe": True})
        return codec.to_description(self._unary(call))

    def models(
        self, *, transport: str | None = None, limit: int = 100, timeout: TimeoutArg = USE_CLIENT_DEFAULT
    ) -> list[ModelInfo]:
        """Registered models, from the management API (all pages).

        Returns
        -------
        list of ModelInfo
        """
        pages = self._core.model_pages(transport, limit, timeout)
        while not pages.done:
            call = pages.next_call()
            pages.add(self._grpc(call) if isinstance(call, GrpcCall) else self._rest(call))
        return pages.models

    def health(self, *, transport: str | None = None, timeout: TimeoutArg = USE_CLIENT_DEFAULT) -> Health:
        """The server's health (``/ping``; TorchServe 0.12 wants the token here too)."""
        call = self._core.health(transport, timeout)
        return parse_health(self._grpc(call) if isinstance(call, GrpcCall) else self._rest(call))

    # ---------------------------------------------------------------------------------------------- I/O
    def _unary(self, call: RestCall | GrpcCall) -> explain_pb2.ExplainResponse:
        return explain_payload(self._grpc(call) if isinstance(call, GrpcCall) else self._rest(call))

    def _grpc(self, call: GrpcCall) -> Any:
        stub = grpc_stub(self._grpc_channel(call.management), call.management)
        attempts = Attempts(self._core, call)
        while True:
            sent = attempts.call
            try:
                return getattr(stub, sent.rpc)(sent.request, timeout=sent.timeout, metadata=sent.metadata)
            except grpc.RpcError as exc:
                delay = attempts.after_grpc_error(exc)
            time.sleep(delay)

    def _rest(self, call: RestCall) -> httpx.Response:
        attempts = Attempts(self._core, call)
        while True:
            sent = attempts.call
            try:
                resp = self._http.request(
                    sent.method, sent.url, content=sent.content, headers=sent.headers, timeout=sent.timeout
                )
            except httpx.TransportError as exc:
                delay = attempts.after_rest_error(exc)
            else:
                wait = attempts.after_response(resp)
                if wait is None:
                    return resp
                delay = wait
            time.sleep(delay)

    def _grpc_channel(self, management: bool) -> grpc.Channel:
        with self._lock:
            if management:
                if self._mgmt_channel is None:
                    self._mgmt_channel = grpc.insecure_channel(
                        self.settings.grpc_management_target, options=self.settings.channel_options()
                    )
                return self._mgmt_channel
            if self._channel is None:
                self._channel = grpc.insecure_channel(
                    self.settings.grpc_target, options=self.settings.channel_options()
                )
            return self._channel

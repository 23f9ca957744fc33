"""The retry decisions of one call, REST or gRPC, shared by the sync and the async client (no I/O).

:class:`Attempts` turns each failed attempt (an HTTP answer, an httpx transport error, a gRPC error) into
"wait this long and send again" or the typed error, by :mod:`._retry`'s policy; the clients only send and
sleep (``time.sleep`` or ``asyncio.sleep``).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Generic, TypeVar, cast

import grpc
import grpc.aio
import httpx

from . import codec
from ._core import ClientCore, GrpcCall, RestCall, grpc_error
from ._retry import Outcome, RetryState
from .errors import (
    PERMANENT_UNAVAILABLE,
    CxrExplainClientError,
    Unauthorized,
    connection_error,
    timeout_error,
    worker_died,
)

log = logging.getLogger(__name__)

C = TypeVar("C", RestCall, GrpcCall)


def retry_outcome(error: CxrExplainClientError) -> Outcome | None:
    """What a typed error means for retrying: an unavailable server or worker (503, gRPC UNAVAILABLE), a
    worker that died handling this request (:func:`.errors.worker_died`: 507, or 500 "Worker died."), a
    refused key; ``None``: the answer stands (other 4xx and 500s, a full queue, a timeout)."""
    if isinstance(error, Unauthorized):
        return Outcome.UNAUTHORIZED
    if error.error_type in PERMANENT_UNAVAILABLE:
        return None
    if error.status == 503 or error.grpc_code == "UNAVAILABLE":
        return Outcome.UNAVAILABLE
    if worker_died(error):
        return Outcome.WORKER_DIED
    return None


class Attempts(Generic[C]):
    """The retry decisions of one call over all its attempts, REST or gRPC, for both clients.

    The client sends :attr:`call` (it changes only when a re-read key replaces the token; the request id
    stays), then asks :meth:`after_response`, :meth:`after_rest_error` or :meth:`after_grpc_error` what to
    do: the answer is final (``None``), or the seconds to wait before sending again; else the typed error is
    raised ``from`` the transport's. The policy (which failures, how often, how long) is :mod:`._retry`'s.
    """

    def __init__(self, core: ClientCore, call: C) -> None:
        self._core = core
        self.call: C = call
        self.state = RetryState(core.settings.policy)

    def after_response(self, resp: httpx.Response) -> float | None:
        """``None`` when ``resp`` (an HTTP answer) is the answer; else the wait before the retry."""
        call = self.call
        assert isinstance(call, RestCall)
        if resp.status_code < 400 or resp.status_code in call.ok:
            return None
        cause = httpx.HTTPStatusError(f"HTTP {resp.status_code}", request=resp.request, response=resp)
        error = codec.http_error(resp.status_code, resp.content, resp.headers.get("content-type"))
        return self._retry(retry_outcome(error), error, cause)

    def after_rest_error(self, exc: httpx.TransportError) -> float:
        """The wait before retrying a refused, reset or dropped connection; raises for every other failure."""
        call = self.call
        assert isinstance(call, RestCall)
        if isinstance(exc, httpx.TimeoutException):
            raise timeout_error(call.url, call.timeout) from exc
        error = connection_error(call.url, exc)
        lost = isinstance(exc, httpx.NetworkError | httpx.RemoteProtocolError)
        return self._retry(Outcome.UNAVAILABLE if lost else None, error, exc)

    def after_grpc_error(self, exc: grpc.RpcError) -> float:
        """The wait before retrying a failed gRPC call; raises the typed error when it is not retried."""
        call = self.call
        assert isinstance(call, GrpcCall)
        error = grpc_error(exc, call.target, call.timeout)
        code = exc.code() if isinstance(exc, grpc.Call | grpc.aio.AioRpcError) else None
        # UNAVAILABLE, also "failed to connect" (raised as a connection error without a gRPC code)
        outcome = Outcome.UNAVAILABLE if code == grpc.StatusCode.UNAVAILABLE else retry_outcome(error)
        return self._retry(outcome, error, exc)

    def _retry(self, outcome: Outcome | None, error: CxrExplainClientError, cause: BaseException) -> float:
        delay = self.state.next_delay(outcome) if outcome is not None else None
        if delay is not None and outcome is Outcome.UNAUTHORIZED and not self._reauthorize():
            delay = None
        if delay is None:
            if self.state.attempts > 1:
                log.warning("giving up on request %s after %d attempts in %.1f s: %s", self.call.request_id,
                            self.state.attempts, self.state.elapsed(), error.message)
            raise error from cause
        log.info("request %s: %s; retrying in %.2f s", self.call.request_id, error.message, delay)
        return delay

    def _reauthorize(self) -> bool:
        """Re-read the key file and put the new key into the call; ``False`` when there is no new key."""
        call = self.call
        if isinstance(call, RestCall):
            used = next((v for k, v in call.headers.items() if k.lower() == "authorization"), None)
        else:
            used = next((v for k, v in call.metadata if k == "authorization"), None)
        stale = used.removeprefix("Bearer ") if used else None
        fresh = self._core.refresh_token("management" if call.management else "inference", stale)
        if fresh is None:
            return False
        self.call = cast(C, with_token(call, fresh))
        return True


def with_token(call: RestCall | GrpcCall, token: str) -> RestCall | GrpcCall:
    """``call`` with ``token`` in place of the key it carried (the request id, body and all else kept)."""
    if isinstance(call, RestCall):
        headers = {k: v for k, v in call.headers.items() if k.lower() != "authorization"}
        return replace(call, headers={**headers, **codec.auth_headers(token)})
    metadata = [(k, v) for k, v in call.metadata if k != "authorization"]
    return replace(call, metadata=metadata + codec.grpc_metadata(token))


__all__ = ["Attempts", "retry_outcome"]

"""One exception hierarchy for both transports, and the pure mapping from transport outcomes onto it.

Where errors come from (TorchServe 0.12):

- the cxrexplain handler, per request inside a batch: an HTTP status 400/415/422 with the body
  ``{"error": {"code", "message", "request_id", "type"}}`` (or the same ``ExplainResponse`` in binary);
- TorchServe's frontend, before the handler: ``{"code", "type", "message"}`` or an empty body. A wrong or
  expired token is a *400* with ``type: InvalidKeyException`` over REST and PERMISSION_DENIED over gRPC;
  an unknown model is a 404 over REST but INTERNAL with ``ModelNotFoundException`` in the details over gRPC;
- the gRPC unary path drops the handler's per-row status, so the payload's ``error`` field carries it;
- a worker that dies while handling a request: ``{"type": "InternalServerException", "message": "Worker
  died."}`` with HTTP 507 when the frontend has already seen the worker's exit status 137 (SIGKILL, the OOM
  killer), else with 500; over gRPC the same as RESOURCE_EXHAUSTED or INTERNAL with ``Worker died.`` and
  ``InternalServerException`` in the details (both seen against a real TorchServe 0.12).
"""

from __future__ import annotations

import json
from typing import Any


class CxrExplainClientError(Exception):
    """Base of every error the client raises.

    Attributes
    ----------
    status
        HTTP status (over gRPC: the equivalent HTTP status, or the handler's code from the payload); ``None``
        when no answer arrived.
    request_id
        The server's request id when it sent one (quote it when reporting a problem).
    error_type
        Machine-readable kind from the server (``unknown_label``, ``ModelNotFoundException``, ...), if any.
    grpc_code
        Name of the gRPC status code (``"UNAVAILABLE"``, ...) for gRPC errors.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        request_id: str | None = None,
        error_type: str | None = None,
        grpc_code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.request_id = request_id or None
        self.error_type = error_type or None
        self.grpc_code = grpc_code

    def __str__(self) -> str:
        parts = [self.message]
        if self.status is not None:
            parts.append(f"status={self.status}")
        if self.grpc_code:
            parts.append(f"grpc={self.grpc_code}")
        if self.request_id:
            parts.append(f"request_id={self.request_id}")
        return " ".join(parts[:1]) + (f" ({', '.join(parts[1:])})" if len(parts) > 1 else "")


class InvalidInput(CxrExplainClientError):
    """The server could not use the request: undecodable image, unsupported media type, unknown label or
    method, options out of range, over a cost cap. Fix the request; retrying it unchanged will not help."""


class ModelNotFound(CxrExplainClientError):
    """No model (or version) of that name is registered; list them with ``models()``."""


class Unauthorized(CxrExplainClientError):
    """Missing, wrong or expired token. Pass ``token=``, ``token_file=`` (TorchServe's ``key_file.json``)
    or set ``CXREXPLAIN_TOKEN``; TorchServe keys expire (60 minutes by default)."""


class ServerUnavailable(CxrExplainClientError):
    """The server is down, unreachable, or overloaded (no free worker, full queue). Retried automatically."""


class DeadlineExceeded(CxrExplainClientError):
    """No answer within the timeout. Raise ``timeout=`` or ask for less work (fewer methods, targets)."""


class OutputNotWritable(CxrExplainClientError):
    """A result could not be written where it was asked to go (``save(dir)``, the CLI's ``--out``): the
    folder is a file, read-only, on a full disk. ``path`` is what could not be written; pick another
    folder."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


_HINTS = {
    InvalidInput: "check the image and the options",
    ModelNotFound: "list the registered models with `cxrexplain models`",
    Unauthorized: "pass a valid token (--token, --token-file key_file.json or CXREXPLAIN_TOKEN)",
    ServerUnavailable: "the server is down or overloaded; try again later",
    DeadlineExceeded: "raise the timeout or ask for less work",
}


PERMANENT_UNAVAILABLE = frozenset({"autoencoder_unavailable"})
"""503 answers of the service that waiting does not cure (a part of the model could not be loaded on the
server): raised as :class:`ServerUnavailable`, never retried."""


def _class_for_http(status: int, error_type: str | None) -> type[CxrExplainClientError]:
    kind = (error_type or "").lower()
    if "invalidkey" in kind or "unauthorized" in kind:
        return Unauthorized  # TorchServe 0.12 answers a bad token with 400 + InvalidKeyException
    if "notfound" in kind and "model" in kind:
        return ModelNotFound
    if status in (401, 403):
        return Unauthorized
    if status == 404:
        return ModelNotFound
    if status in (400, 413, 415, 422) or (400 <= status < 500 and status not in (408, 429)):
        return InvalidInput
    if status in (503, 429, 507):
        return ServerUnavailable
    if status in (408, 504):
        return DeadlineExceeded
    return CxrExplainClientError


def _worker_died(status: int, error_type: str | None, message: str | None) -> bool:
    return status == 507 or (
        status == 500 and error_type == "InternalServerException" and (message or "").startswith(WORKER_DIED)
    )


def worker_died(error: CxrExplainClientError) -> bool:
    """Whether ``error`` is TorchServe's answer to a request whose worker died while handling it."""
    return error.status is not None and _worker_died(error.status, error.error_type, error.message)


def error_from_fields(
    status: int,
    message: str | None,
    request_id: str | None = None,
    error_type: str | None = None,
    grpc_code: str | None = None,
) -> CxrExplainClientError:
    """Build the typed exception for an HTTP-like status and the server's message."""
    dead = _worker_died(status, error_type, message)
    cls = ServerUnavailable if dead else _class_for_http(status, error_type)
    text = message or f"HTTP {status}"
    hint = _HINTS.get(cls)
    if hint and hint not in text:
        text = f"{text}; {hint}"
    return cls(text, status=status, request_id=request_id, error_type=error_type, grpc_code=grpc_code)


def parse_error_body(body: bytes) -> dict[str, Any]:
    """Fields of an error body in any of the server's JSON shapes; ``{}`` when empty or not JSON.

    Returns keys among ``code``, ``message``, ``request_id``, ``type``.
    """
    text = body.strip()
    if not text.startswith(b"{"):
        return {}
    try:
        doc = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(doc, dict):
        return {}
    if isinstance(doc.get("error"), dict):  # the handler: ExplainResponse JSON with only `error` set
        inner = dict(doc["error"])
        inner.setdefault("request_id", doc.get("request_id"))
        return inner
    if isinstance(doc.get("error"), str):  # a generic {"error": "..."} shape
        return {"message": doc["error"], "code": doc.get("code")}
    return {k: doc[k] for k in ("code", "message", "type", "request_id") if k in doc}


WORKER_DIED = "Worker died."  # TorchServe 0.12's message when the worker handling a request dies

# gRPC status name -> the HTTP status it stands for (the inverse of TorchServe's GRPCUtils mapping).
_GRPC_TO_HTTP = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 422,
    "OUT_OF_RANGE": 416,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "UNAVAILABLE": 503,
    "RESOURCE_EXHAUSTED": 429,
    "DEADLINE_EXCEEDED": 504,
    "CANCELLED": 499,
    "ABORTED": 409,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNKNOWN": 500,
}

# Integer gRPC status codes (as carried in google.rpc.Status) -> names.
GRPC_CODE_NAMES = {
    0: "OK",
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    6: "ALREADY_EXISTS",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    10: "ABORTED",
    11: "OUT_OF_RANGE",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    15: "DATA_LOSS",
    16: "UNAUTHENTICATED",
}


def error_from_grpc(code_name: str, details: str | None) -> CxrExplainClientError:
    """Typed exception for a gRPC status (``code_name`` such as ``"UNAVAILABLE"``) and its details text."""
    text = details or code_name
    status = _GRPC_TO_HTTP.get(code_name, 500)
    error_type: str | None = None
    if code_name == "INTERNAL":
        # TorchServe reports several frontend errors as INTERNAL; the exception class is in the details.
        if (
            "ModelNotFoundException" in text
            or "ModelVersionNotFoundException" in text
            or "Model not found" in text
        ):
            status, error_type = 404, "ModelNotFoundException"
        elif "has no worker" in text or "ServiceUnavailable" in text:
            status, error_type = 503, "ServiceUnavailableException"
        elif "BadRequestException" in text:
            status, error_type = 400, "BadRequestException"
    dead = text.startswith(WORKER_DIED) and "InternalServerException" in text
    if code_name in ("RESOURCE_EXHAUSTED", "INTERNAL") and dead:
        # The worker died handling this request: TorchServe 0.12's 507 / 500 "Worker died." over gRPC (seen
        # against a real server). Not a full queue, not a size limit.
        status, error_type = (507 if code_name == "RESOURCE_EXHAUSTED" else 500), "InternalServerException"
    elif code_name == "RESOURCE_EXHAUSTED" and ("larger than" in text or "too large" in text.lower()):
        status = 413  # a message over a size limit is the request's problem, not load
    if code_name == "DEADLINE_EXCEEDED":
        return DeadlineExceeded(f"{text}; {_HINTS[DeadlineExceeded]}", status=status, grpc_code=code_name)
    if code_name == "RESOURCE_EXHAUSTED" and status == 429:
        return ServerUnavailable(f"{text}; {_HINTS[ServerUnavailable]}", status=status, grpc_code=code_name)
    return error_from_fields(status, text, error_type=error_type, grpc_code=code_name)


def connection_error(target: str, cause: BaseException) -> ServerUnavailable:
    """The error for a server that could not be reached at all."""
    return ServerUnavailable(
        f"cannot reach the server at {target} ({type(cause).__name__}: {cause}); is TorchServe running?"
    )


def timeout_error(target: str, timeout: float | None) -> DeadlineExceeded:
    """The error for a request that ran out of time."""
    return DeadlineExceeded(f"no answer from {target} within {timeout} s; {_HINTS[DeadlineExceeded]}")

"""One row of a batch: the request as the transport hands it over, and its state between the service's stages.

A row fails on its own: every stage runs a row's work inside :meth:`RowState.step`, which turns a typed
:class:`~cxrexplain.errors.CxrExplainError` into that row's error answer and anything else into a logged 500
quoting the request id. A failed row skips the later stages; the other rows of the batch proceed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from cxrexplain.errors import CxrExplainError, InvalidInput, InvalidOption
from cxrexplain.explainer import ExplanationResult
from cxrexplain.methods.base import Method
from cxrexplain.preprocess import Geometry
from cxrexplain_render import RenderOptionError

from .options import JSON, RequestOptions, check_request_id
from .telemetry import new_request_id

log = logging.getLogger(__name__)

KINDS = ("predict", "explain", "describe")

Emit = Callable[[int, bytes, str], None]
"""``emit(index, payload, content_type)``: send one intermediate part of the streaming row ``index``."""


@dataclass
class RowRequest:
    """One request of a batch, transport-free.

    ``kind`` is ``predict`` | ``explain`` | ``describe`` or ``None`` to infer it (``describe=true`` ->
    describe; methods, targets, ``top_k`` or the REST explain flag -> explain; else predict). ``rest`` is False
    for gRPC rows (binary protobuf by default); ``can_stream`` is True only when TorchServe set the
    request-sequence header (gRPC StreamPredictions2).
    """

    body: bytes | None
    content_type: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    request_id: str = ""
    kind: str | None = None
    explain_flag: bool = False
    accept: str | None = None
    rest: bool = True
    can_stream: bool = False
    header_options: str | None = None  # REST: the options header (options.OPTIONS_HEADER), URL-encoded


class InternalError(CxrExplainError):
    """A fault of the service itself (a bug): answered 500, logged with the request id the answer quotes."""

    http_status = 500
    code = "internal_error"


@dataclass
class RowState:
    """A row between stages: what preparation read from it, its targets, its slice of the engine's result.

    ``targets`` holds label indices; ``None`` in a row's place is its top finding, which the explanation's own
    forward pass reads (:meth:`cxrexplain.Explainer.explain` resolves it; the result replaces it). ``result`` is
    the engine result of the chunk the row was explained in, the row's targets at ``offset`` onwards.
    """

    index: int
    row: RowRequest
    request_id: str
    content_type: str = JSON
    kind: str = "predict"
    options: RequestOptions = field(default_factory=RequestOptions)
    methods: tuple[str, ...] = ()
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    instances: dict[str, Method] = field(default_factory=dict)
    x: torch.Tensor | None = None
    geometry: Geometry | None = None
    probabilities: torch.Tensor | None = None
    targets: list[int | None] = field(default_factory=list)
    result: ExplanationResult | None = None
    offset: int = 0
    error: CxrExplainError | None = None
    status: int = 200
    error_type: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    @property
    def live(self) -> bool:
        """Not failed: the later stages still work on this row."""
        return self.error is None

    @property
    def stream(self) -> bool:
        """Answered in parts (findings, each heatmap, each latent shift, end) while it is live."""
        return self.options.stream and self.live

    @property
    def resolved_targets(self) -> list[int]:
        """The targets as label indices, once the top finding has been read (responses are built after that)."""
        resolved = [t for t in self.targets if t is not None]
        if len(resolved) != len(self.targets):
            raise RuntimeError("the default target is read by the explanation's forward pass: not resolved yet")
        return resolved

    def fail(self, exc: CxrExplainError) -> None:
        """Make ``exc`` this row's answer; later stages skip the row."""
        self.error = exc
        self.status = int(getattr(exc, "http_status", 422))
        self.error_type = str(getattr(exc, "code", "error"))

    @contextmanager
    def step(self) -> Iterator[None]:
        """Run one stage's work for this row: a typed error becomes the row's answer, anything else a 500.

        The exception does not propagate: the batch goes on, and callers check :attr:`live` afterwards.
        """
        try:
            yield
        except CxrExplainError as exc:
            self.fail(exc)
        except RenderOptionError as exc:  # e.g. a map beyond float16's range: the client can ask for float32
            self.fail(InvalidOption(str(exc)))
        except Exception:
            log.exception("request_id=%s: internal error", self.request_id)
            self.fail(internal(self.request_id))


def internal(request_id: str) -> InternalError:
    """The error of a row the service failed on, telling the user what to quote."""
    return InternalError(f"internal error; quote request id {request_id} to the operator")


def safe_request_id(row: RowRequest) -> str:
    """The row's request id when it is safe to log and echo, else a fresh one (the unsafe id is rejected later,
    with an answer that carries the fresh id)."""
    if row.request_id:
        try:
            return check_request_id(row.request_id)
        except InvalidInput:
            pass
    return new_request_id()


def elapsed_ms(started: float) -> float:
    """Milliseconds since ``started`` (a :func:`time.perf_counter` value), as the responses' ``timings_ms``."""
    return round((time.perf_counter() - started) * 1000.0, 3)

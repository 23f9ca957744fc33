"""Request preparation, the first stage: options -> kind -> price -> methods -> decoded image -> model input.

Validate and price before work: every option is parsed and range-checked against the options schema, then the
request is priced from its options alone against every cap (targets at their worst case, frames, steps, work
units, response size), and only then is each method built once (its constructor checks what spans options, such
as LRP's alpha - beta = 1; the engine later runs these very instances) and the image decoded. A refused request
costs the worker no decoding, no method object and no tensor.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import cxrexplain_imageio
from cxrexplain.errors import (
    AutoencoderRequired,
    CxrExplainError,
    DissectionRequired,
    InvalidInput,
    InvalidOption,
    UnsupportedMediaType,
)
from cxrexplain.methods import base as registry
from cxrexplain.preprocess import to_model_input
from cxrexplain.spec import InputSpec

from .capabilities import AutoencoderUnavailable
from .caps import CostCaps, price
from .options import RequestOptions, check_request_id, negotiate, parse_options, with_header_options
from .rows import KINDS, RowRequest, RowState, elapsed_ms, safe_request_id
from .telemetry import Telemetry


class Preparer:
    """Turn a :class:`RowRequest` into a :class:`RowState` ready for prediction and explanation.

    Parameters
    ----------
    input_spec
        The classifier's input spec (the decoded image becomes its model input).
    labels
        The classifier's number of labels (the worst case of ``targets=positive``, for pricing).
    caps
        Body size, pixel count, frames and steps limits.
    methods
        The methods this model can run (named in the error for latent shift without an autoencoder).
    default_methods
        Methods of an explain request that names none.
    has_autoencoder
        Whether ``latent_shift`` can run.
    autoencoder_error
        Why the archive's autoencoder could not be loaded, when it could not (``latent_shift`` then answers 503
        with it; without an autoencoder in the archive at all it answers 422).
    telemetry
        Counts decode errors.
    """

    def __init__(self, input_spec: InputSpec, caps: CostCaps, *, labels: int, methods: Sequence[str],
                 default_methods: Sequence[str], has_autoencoder: bool, telemetry: Telemetry,
                 autoencoder_error: str | None = None):
        self.input_spec = input_spec
        self.labels = labels
        self.caps = caps
        self.methods = tuple(methods)
        self.default_methods = tuple(default_methods)
        self.has_autoencoder = has_autoencoder
        self.autoencoder_error = autoencoder_error
        self.telemetry = telemetry

    def prepare(self, index: int, row: RowRequest) -> RowState:
        """The row's state; a row that cannot be prepared comes back failed, with its error answer set."""
        state = RowState(index=index, row=row, request_id=safe_request_id(row))
        state.content_type = negotiate(None, row.accept, row.rest)
        with state.step():
            self._prepare(state)
        return state

    def _prepare(self, state: RowState) -> None:
        row = state.row
        state.options = opts = parse_options(with_header_options(row.options, row.header_options))
        state.content_type = negotiate(opts.accept, row.accept, row.rest)
        if opts.request_id:
            state.request_id = opts.request_id
        elif row.request_id:
            state.request_id = check_request_id(row.request_id)  # the unsafe id safe_request_id replaced
        state.kind = row.kind or infer_kind(opts, row.explain_flag)
        if state.kind not in KINDS:
            raise InvalidOption(f"unknown request kind {state.kind!r}: one of {', '.join(KINDS)}")
        if opts.stream and not row.can_stream:
            raise InvalidOption("stream=true needs the gRPC StreamPredictions2 call (a unary call cannot stream): "
                                "drop stream or call StreamPredictions2")
        if state.kind == "describe":
            return
        if state.kind == "explain":
            self._build_methods(state)
        started = time.perf_counter()
        body = body_bytes(row.body)
        if len(body) > self.caps.max_request_bytes:
            raise InvalidInput(f"request body of {len(body)} bytes is above the limit of "
                               f"{self.caps.max_request_bytes} bytes: downsample or compress the image")
        try:
            image = cxrexplain_imageio.decode_image(body, row.content_type, max_pixels=self.caps.max_pixels,
                                                    value_range=opts.value_range, target_size=self.input_spec.size)
        except CxrExplainError as exc:
            self.telemetry.decode_error(str(getattr(exc, "code", "invalid_input")), state.request_id)
            raise
        state.x, state.geometry = to_model_input(image.pixels, self.input_spec, reduction=image.reduction,
                                                 original_size=(image.height, image.width))
        state.timings["decode"] = elapsed_ms(started)

    def _build_methods(self, state: RowState) -> None:
        opts = state.options
        state.methods = opts.methods or self.default_methods
        if "latent_shift" in state.methods and self.autoencoder_error:
            raise AutoencoderUnavailable(
                f"latent_shift is unavailable on this server: {self.autoencoder_error}. The other methods serve "
                f"({', '.join(self.methods)}); the operator must re-export the archive with a valid autoencoder")
        if "latent_shift" in state.methods and not self.has_autoencoder:
            raise AutoencoderRequired(
                "latent_shift needs an autoencoder and this model's archive has none: ask for another "
                f"method ({', '.join(self.methods)})")
        stray = set(opts.method_options) - set(state.methods)
        if stray:
            raise InvalidOption(f"options for {', '.join(sorted(stray))}, which the request does not ask for: "
                                "add the method to 'methods' or drop its options")
        state.method_options = {m: dict(opts.method_options.get(m, {})) for m in state.methods}
        # Parsing range-checked every option; the price needs nothing more than the options.
        price(state, self.caps, self.input_spec.size, self.labels)
        # After the price: a request over a cap hears about the cap first, whatever its methods.
        if "semantic" in state.methods and "semantic" not in self.methods:
            raise DissectionRequired(
                "semantic needs a dissection table and this model's archive has none: re-export it with a recipe "
                f"'semantic: {{layer: ..., concepts: ...}}' field (docs/units.md), or ask for another method "
                f"({', '.join(self.methods)})")
        # Only a request within the caps builds its methods (the constructors check what spans options) and
        # then decodes; the engine runs these instances (Explainer.explain takes them as they are).
        state.instances = {m: registry.create(m, **state.method_options[m]) for m in state.methods}


def infer_kind(opts: RequestOptions, explain_flag: bool) -> str:
    """``describe`` when asked; ``explain`` for methods, targets, ``top_k`` or the REST explain flag; else
    ``predict``."""
    if opts.describe:
        return "describe"
    if opts.methods or opts.has_targets or explain_flag:
        return "explain"
    return "predict"


def body_bytes(body: Any) -> bytes:
    """The image bytes of a row; TorchServe has already decoded ``application/json`` and ``text/*`` parts."""
    if body is None or (isinstance(body, bytes | bytearray | str) and len(body) == 0):
        raise InvalidInput("the request has no image: send it as the body or as the multipart field 'data'")
    if isinstance(body, bytes | bytearray):
        return bytes(body)
    if isinstance(body, str):
        raise UnsupportedMediaType("the image arrived as text: send the file's bytes with its own content type "
                                   "(image/png, image/jpeg, application/dicom), not text/*")
    raise UnsupportedMediaType("the image arrived as JSON: send the file's bytes with its own content type "
                               "(image/png, image/jpeg, application/dicom), not application/json")

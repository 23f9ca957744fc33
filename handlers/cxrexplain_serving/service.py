"""The service core: a batch of request rows (bytes + options) in, one ExplainResponse per row out.

Pure Python + torch, no TorchServe import, so it runs in-process in tests and notebooks; the TorchServe handler
only turns TorchServe's rows into :class:`RowRequest` and the results back into bytes and statuses.

A batch goes through four stages, each row failing on its own (a bad row becomes an error result with its own
status, the others proceed):

1. *prepare*: parse options, decode the image, build the model input, instantiate the requested methods (which
   validates their options), check the per-request caps;
2. *predict*: one forward pass over every row that needs probabilities before explaining (``positive``,
   ``top_k``, the default top finding, streaming) or only wants predictions, on the fast backend when given;
3. *resolve*: targets to label indices, then the target and response-size caps, before any explanation runs;
4. *explain*: all rows asking for the same methods (and method options) go through ONE
   :meth:`Explainer.explain` call, one engine row per (image, target).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from google.protobuf import json_format

import cxrexplain_imageio
import cxrexplain_render as render
from cxrexplain.bundle import AutoencoderBundle, ClassifierBundle
from cxrexplain.errors import (
    AutoencoderRequired,
    CostCapExceeded,
    CxrExplainError,
    InvalidInput,
    InvalidOption,
    UnsupportedMediaType,
    UnsupportedModel,
)
from cxrexplain.explainer import Explainer, ExplanationResult
from cxrexplain.methods import base as registry
from cxrexplain.preprocess import Geometry, to_model_input
from cxrexplain_render import normalize_for_display

from .options import (
    JSON,
    PROTOBUF,
    RequestOptions,
    check_request_id,
    negotiate,
    parse_options,
    with_header_options,
)
from .telemetry import Telemetry, new_request_id
from .wire import explain_pb2

log = logging.getLogger(__name__)

INTENDED_USE = "Research use only: not for diagnostic use"
KINDS = ("predict", "explain", "describe")
DTYPE_BYTES = {"float16": 2, "float32": 4}
DEFAULT_FRAMES = 10  # K of the latent-shift method (DESIGN.md "Latent shift defaults")
_JSON_OVERHEAD = 4 / 3  # base64 of every bytes field in the proto JSON mapping

Emit = Callable[[int, bytes, str], None]


# --------------------------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class CostCaps:
    """Per-request limits, checked before any explanation runs.

    ``max_work_units`` caps targets x sum over methods of the method's cost (one unit = one forward+backward:
    ``frames``-dependent for latent shift, ``steps`` for integrated gradients). ``max_response_bytes`` caps the
    encoded response (maps x resolution x dtype, frames, GIF, base64 for JSON) and must stay below TorchServe's
    ``max_response_size``: a reply above it makes the frontend drop the worker's channel and the whole batch.
    """

    max_targets: int = 8
    max_frames: int = 30
    max_steps: int = 128
    max_work_units: int = 512
    max_response_bytes: int = 60 * 2**20
    max_pixels: int = 50_000_000
    max_request_bytes: int = 64 * 2**20
    max_engine_batch: int = 32

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None = None,
                     environ: Mapping[str, str] | None = None) -> CostCaps:
        """Caps from a mapping (``serve.json``'s ``caps``), then ``CXREXPLAIN_<CAP>`` environment overrides."""
        names = {f.name for f in dataclasses.fields(cls)}
        merged: dict[str, Any] = {}
        for key, value in (values or {}).items():
            if key not in names:
                raise ValueError(f"unknown cost cap {key!r}; known: {', '.join(sorted(names))}")
            merged[key] = value
        for name in names:
            env = (environ or {}).get(f"CXREXPLAIN_{name.upper()}")
            if env:
                merged[name] = env
        caps: dict[str, int] = {}
        for key, value in merged.items():
            try:
                caps[key] = int(value)
            except (TypeError, ValueError):
                raise ValueError(f"cost cap {key} must be an integer, got {value!r}") from None
            if caps[key] < 1:
                raise ValueError(f"cost cap {key} must be positive, got {caps[key]}")
        return cls(**caps)


class Predictor(Protocol):
    """A predictions-only backend: (N, C, S, S) model input -> (N, L) probabilities on the CPU."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


TOP_FINDING = -1
"""A row's target before its explanation runs: its most probable finding, read from the explanation's own
forward pass (no separate prediction pass for the default target)."""


class OnnxPredictor:
    """ONNX Runtime session over the archive's ``model.onnx`` (input ``x``, output logits).

    The CUDA provider is listed first only when torch sees a GPU: ``onnxruntime-gpu`` lists CUDA on machines
    without one and then fails to load it. ONNX Runtime's CPU threads do not spin-wait after a run: by default
    they do, and they then compete with the torch explanation that follows in the same process (measured on
    this 2-core CPU: a DenseNet-121 CAM explain after an ONNX prediction took 101 ms spinning, 43 ms not).
    """

    def __init__(self, path: str | Path, output: str = "logits"):
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.output = output
        self.providers = self.session.get_providers()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: x.detach().cpu().numpy().astype(np.float32)})[0]
        values = torch.from_numpy(np.asarray(out, dtype=np.float32))
        return values if self.output == "probabilities" else torch.sigmoid(values)


# --------------------------------------------------------------------------------------------- rows


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


@dataclass
class RowResult:
    """The answer to one row: HTTP-like status, the final message and its encoding."""

    request_id: str
    status: int
    message: explain_pb2.ExplainResponse
    content_type: str = JSON
    kind: str = "predict"
    methods: tuple[str, ...] = ()
    error_type: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def body(self) -> bytes:
        return encode(self.message, self.content_type)


@dataclass
class _Work:
    """A row's state between stages."""

    index: int
    row: RowRequest
    request_id: str
    content_type: str = JSON
    kind: str = "predict"
    options: RequestOptions = field(default_factory=RequestOptions)
    methods: tuple[str, ...] = ()
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    instances: dict[str, registry.Method] = field(default_factory=dict)
    x: torch.Tensor | None = None
    geometry: Geometry | None = None
    probabilities: torch.Tensor | None = None
    targets: list[int] = field(default_factory=list)
    result: ExplanationResult | None = None
    offset: int = 0
    error: CxrExplainError | None = None
    status: int = 200
    error_type: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    @property
    def stream(self) -> bool:
        return self.options.stream and self.error is None

    @property
    def live(self) -> bool:
        return self.error is None


def encode(message: explain_pb2.ExplainResponse, content_type: str) -> bytes:
    """JSON mapping with proto field names (bytes as base64), or the binary message."""
    if content_type == PROTOBUF:
        return message.SerializeToString()
    return json_format.MessageToJson(message, preserving_proto_field_name=True, indent=None).encode("utf-8")


def internal_error(row: RowRequest) -> RowResult:
    """A 500 answer for a row the service could not answer at all (a bug), with the request id to quote."""
    request_id = row.request_id if row.request_id and _safe_id(row.request_id) else new_request_id()
    msg = explain_pb2.ExplainResponse(error=explain_pb2.Error(
        code=500, message=f"internal error; quote request id {request_id} to the operator",
        request_id=request_id, type=_Internal.code))
    if row.can_stream:  # a stream waits for its last part
        msg.part, msg.last = "end", True
    return RowResult(request_id=request_id, status=500, message=msg,
                     content_type=negotiate(None, row.accept, row.rest), kind="error", error_type=_Internal.code)


def decode(data: bytes, content_type: str = JSON) -> explain_pb2.ExplainResponse:
    """Inverse of :func:`encode` (used by tests and by the client's codec)."""
    message = explain_pb2.ExplainResponse()
    if content_type == PROTOBUF:
        message.ParseFromString(data)
    else:
        json_format.Parse(data.decode("utf-8"), message)
    return message


# --------------------------------------------------------------------------------------------- the service


class ExplainService:
    """Answer batches of predict / explain / describe requests for one classifier (and its autoencoder).

    Parameters
    ----------
    classifier_bundle, autoencoder_bundle
        The models; the autoencoder backs ``latent_shift`` (its absence answers 422 for that method).
    model_name, model_version
        Echoed in every response.
    caps
        :class:`CostCaps`.
    device
        ``cuda`` / ``cpu`` / ``None`` (CUDA when available).
    predict_backend
        A :class:`Predictor` for predictions (e.g. :class:`OnnxPredictor`); default: the eager model.
    telemetry
        Metrics and request logs; default: logs only.
    default_methods
        Methods for an explain request that names none (default: ``cam`` when the head allows, else
        ``gradcam``).
    """

    def __init__(
        self,
        classifier_bundle: ClassifierBundle,
        autoencoder_bundle: AutoencoderBundle | None = None,
        *,
        model_name: str,
        model_version: str,
        caps: CostCaps | None = None,
        device: str | torch.device | None = None,
        predict_backend: Predictor | None = None,
        telemetry: Telemetry | None = None,
        default_methods: Sequence[str] | None = None,
    ):
        self.bundle = classifier_bundle
        self.autoencoder = autoencoder_bundle
        self.explainer = Explainer(classifier_bundle, autoencoder=autoencoder_bundle, device=device)
        self.model_name = model_name
        self.model_version = model_version
        self.caps = caps or CostCaps()
        self.predict_backend = predict_backend
        self.telemetry = telemetry or Telemetry(model_name)
        self.methods = self._available_methods()
        if default_methods is None:
            default_methods = ("cam",) if "cam" in self.methods else ("gradcam",)
        self.default_methods = tuple(default_methods)

    # ----------------------------------------------------------------------------- public

    def handle_batch(self, rows: Sequence[RowRequest], emit: Emit | None = None) -> list[RowResult]:
        """Answer every row; never raises for a row's fault.

        ``emit(index, payload, content_type)`` receives the intermediate parts of streaming rows (findings,
        then each heatmap, then each latent shift) as they are ready; the returned result of such a row is the
        final part (``part="end"``, ``last=true``).
        """
        work = [self._prepare(i, row) for i, row in enumerate(rows)]
        self._predict(work)
        for w in work:
            if w.live and w.kind == "explain":
                self._guard(w, self._resolve, w)
            if w.live and w.stream and w.kind != "describe" and emit is not None:
                emit(w.index, encode(self._findings_part(w), w.content_type), w.content_type)
        self._explain_all(work)
        results = [self._finish(w, emit) for w in work]
        return results

    def describe(self) -> explain_pb2.ModelDescription:
        """Labels, operating points, input spec, methods and intended use of the served model."""
        spec = self.bundle.input_spec
        return explain_pb2.ModelDescription(
            name=self.model_name,
            version=self.model_version,
            architecture=self.bundle.architecture,
            labels=list(self.bundle.labels),
            operating_points=[float(t) for t in self.bundle.op_thresholds or []],
            input_spec=explain_pb2.InputSpec(
                channels=spec.channels, size=spec.size, value_range=list(spec.value_range), mean=list(spec.mean),
                std=list(spec.std), resize=spec.resize),
            methods=list(self.methods),
            has_autoencoder=self.autoencoder is not None,
            intended_use=INTENDED_USE,
            weights_sha256=self.bundle.sha256 or "",
        )

    # ----------------------------------------------------------------------------- stage 1: prepare

    def _available_methods(self) -> list[str]:
        names = []
        for name in sorted(registry.REGISTRY):
            if name == "latent_shift" and self.autoencoder is None:
                continue
            if name == "semantic" and not self.bundle.extra.get("dissection"):
                continue
            if name == "cam":
                try:
                    self.bundle.traced.cam_head()
                except UnsupportedModel:  # no GAP + linear head: CAM does not exist for this model
                    continue
            names.append(name)
        return names

    def _guard(self, w: _Work, fn: Callable[..., Any], *args: Any) -> Any:
        """Run one row's step; a typed error becomes that row's error, anything else a logged 500."""
        try:
            return fn(*args)
        except CxrExplainError as exc:
            self._fail(w, exc)
        except Exception:
            log.exception("request_id=%s: internal error", w.request_id)
            self._fail(w, _Internal(f"internal error; quote request id {w.request_id} to the operator"))
        return None

    def _fail(self, w: _Work, exc: CxrExplainError) -> None:
        w.error = exc
        w.status = int(getattr(exc, "http_status", 422))
        w.error_type = str(getattr(exc, "code", "error"))

    def _prepare(self, index: int, row: RowRequest) -> _Work:
        # An id unsafe to log or echo is replaced here and rejected in _prepare_row.
        safe = bool(row.request_id) and _safe_id(row.request_id)
        w = _Work(index=index, row=row, request_id=row.request_id if safe else new_request_id())
        w.content_type = negotiate(None, row.accept, row.rest)
        self._guard(w, self._prepare_row, w)
        return w

    def _prepare_row(self, w: _Work) -> None:
        row = w.row
        w.options = opts = parse_options(with_header_options(row.options, row.header_options))
        w.content_type = negotiate(opts.accept, row.accept, row.rest)
        if opts.request_id:
            w.request_id = opts.request_id
        elif row.request_id:
            w.request_id = check_request_id(row.request_id)
        w.kind = row.kind or self._infer_kind(opts, row.explain_flag)
        if w.kind not in KINDS:
            raise InvalidOption(f"unknown request kind {w.kind!r}: one of {', '.join(KINDS)}")
        if opts.stream and not row.can_stream:
            raise InvalidOption("stream=true needs the gRPC StreamPredictions2 call (a unary call cannot stream): "
                                "drop stream or call StreamPredictions2")
        if w.kind == "describe":
            return
        if w.kind == "explain":
            self._prepare_methods(w)
        started = time.perf_counter()
        body = _body_bytes(row.body)
        if len(body) > self.caps.max_request_bytes:
            raise InvalidInput(f"request body of {len(body)} bytes is above the limit of "
                               f"{self.caps.max_request_bytes} bytes: downsample or compress the image")
        try:
            image = cxrexplain_imageio.decode_image(body, row.content_type, max_pixels=self.caps.max_pixels,
                                         value_range=opts.value_range)
        except CxrExplainError as exc:
            self.telemetry.decode_error(str(getattr(exc, "code", "invalid_input")), w.request_id)
            raise
        w.x, w.geometry = to_model_input(image.pixels, self.bundle.input_spec)
        w.timings["decode"] = _ms(started)

    def _infer_kind(self, opts: RequestOptions, explain_flag: bool) -> str:
        if opts.describe:
            return "describe"
        if opts.methods or opts.has_targets or explain_flag:
            return "explain"
        return "predict"

    def _prepare_methods(self, w: _Work) -> None:
        opts = w.options
        w.methods = opts.methods or self.default_methods
        for name in w.methods:
            if name == "latent_shift" and self.autoencoder is None:
                raise AutoencoderRequired(
                    "latent_shift needs an autoencoder and this model's archive has none: ask for another "
                    f"method ({', '.join(self.methods)})")
        stray = set(opts.method_options) - set(w.methods)
        if stray:
            raise InvalidOption(f"options for {', '.join(sorted(stray))}, which the request does not ask for: "
                                "add the method to 'methods' or drop its options")
        w.method_options = {m: dict(opts.method_options.get(m, {})) for m in w.methods}
        # Instantiating validates each method's options now, before decoding or computing anything.
        w.instances = {m: registry.create(m, **w.method_options[m]) for m in w.methods}
        frames = self._frames(w)
        if "latent_shift" in w.methods and frames > self.caps.max_frames:
            raise CostCapExceeded(f"frames={frames} is above the cap of {self.caps.max_frames}: ask for at most "
                                  f"{self.caps.max_frames} frames")
        steps = self._steps(w)
        if steps is not None and steps > self.caps.max_steps:
            raise CostCapExceeded(f"integrated_gradients steps={steps} is above the cap of {self.caps.max_steps}: "
                                  f"ask for at most {self.caps.max_steps} steps")

    def _frames(self, w: _Work) -> int:
        method = w.instances.get("latent_shift")
        for attr in ("frames", "k", "num_frames"):
            value = getattr(method, attr, None) if method is not None else None
            if isinstance(value, int):
                return value
        return w.options.frames or DEFAULT_FRAMES

    def _steps(self, w: _Work) -> int | None:
        method = w.instances.get("integrated_gradients")
        if method is None:
            return None
        value = getattr(method, "steps", None)
        return int(value) if isinstance(value, int) else w.options.steps

    # ----------------------------------------------------------------------------- stage 2: predict

    def _needs_probabilities(self, w: _Work) -> bool:
        """Findings before the explanation: a predictions row, a stream (findings go first), or targets that
        depend on them. The default target, the top finding, comes from the explanation's own forward pass."""
        if w.kind == "predict" or w.stream:
            return True
        opts = w.options
        return opts.positive or opts.top_k is not None

    def _predict(self, work: list[_Work]) -> None:
        rows = [w for w in work if w.live and w.kind != "describe" and self._needs_probabilities(w)]
        if not rows:
            return
        started = time.perf_counter()
        x = torch.cat([w.x for w in rows if w.x is not None])
        try:
            probabilities = self._run_predict(x)
        except CxrExplainError as exc:
            for w in rows:
                self._fail(w, exc)
            return
        except Exception:
            log.exception("predict backend failed for a batch of %d rows; retrying row by row", len(rows))
            for w in rows:
                w.probabilities = self._guard(w, self._run_predict, w.x)
            return
        elapsed = _ms(started)
        for i, w in enumerate(rows):
            w.probabilities = probabilities[i : i + 1]
            w.timings["predict"] = elapsed
        self.telemetry.method_latency("predict", elapsed / 1000.0)

    def _run_predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            if self.predict_backend is not None:
                return self.predict_backend(x).float().cpu()
            return self.explainer.predict(x)

    # ----------------------------------------------------------------------------- stage 3: resolve

    def _resolve(self, w: _Work) -> None:
        opts = w.options
        chosen: list[int] = [self.bundle.label_index(t) for t in opts.targets]
        if w.probabilities is not None:
            p = w.probabilities[0]
            if opts.positive:
                ops = torch.tensor(self.bundle.op_thresholds or [0.5] * len(p), dtype=p.dtype)
                positive = (p > ops).nonzero().flatten()
                chosen += sorted(positive.tolist(), key=lambda i: -float(p[i]))
            if opts.top_k is not None:
                chosen += torch.argsort(p, descending=True)[: opts.top_k].tolist()
            if not opts.has_targets:
                chosen.append(int(p.argmax()))
        elif not opts.has_targets:
            chosen.append(TOP_FINDING)
        w.targets = list(dict.fromkeys(int(t) for t in chosen))
        self._check_caps(w)

    def _check_caps(self, w: _Work) -> None:
        caps = self.caps
        n = len(w.targets)
        if n > caps.max_targets:
            raise CostCapExceeded(f"{n} targets is above the cap of {caps.max_targets} targets per request: "
                                  "name fewer targets or lower top_k")
        per_target = sum(self._method_cost(w, m) for m in w.methods)
        work = n * per_target
        if work > caps.max_work_units:
            raise CostCapExceeded(
                f"the request costs {work} work units (targets {n} x methods {per_target}), above the cap of "
                f"{caps.max_work_units}: ask for fewer targets, methods, frames or integration steps")
        size = self.estimate_response_bytes(w)
        if size > caps.max_response_bytes:
            raise CostCapExceeded(
                f"the response would be about {size / 2**20:.1f} MiB, above the cap of "
                f"{caps.max_response_bytes / 2**20:.1f} MiB: ask for fewer targets or frames, heatmap_dtype=float16 "
                "or heatmap_format=png, no gif, or Accept: application/x-protobuf (JSON adds a third)")

    def _method_cost(self, w: _Work, name: str) -> int:
        declared = int(w.instances[name].cost()) if name in w.instances else 1
        if name == "latent_shift":  # the lambda search plus one decoded frame each: at least 2 per frame
            return max(declared, 2 * self._frames(w))
        if name == "integrated_gradients":
            return max(declared, self._steps(w) or 1)
        return max(declared, 1)

    def estimate_response_bytes(self, w: _Work) -> int:
        """Upper estimate of the encoded response of an explain row, from its options alone."""
        opts = w.options
        pixels = self.bundle.input_spec.size ** 2
        if opts.heatmap_format == "png":
            per_map = 4 * pixels + 1024  # worst case: RGBA that does not compress
        else:
            per_map = DTYPE_BYTES[opts.heatmap_dtype] * pixels + 64
        per_target = len(w.methods) * (per_map + 128)
        if "latent_shift" in w.methods:
            frames = self._frames(w)
            per_target += frames * (per_map + 64)
            if opts.gif:
                per_target += int(frames * pixels * 1.5) + 2048  # LZW can expand noise beyond 8 bits/pixel
        total = 2048 + 96 * len(self.bundle.labels) + len(w.targets) * per_target
        if w.content_type == JSON:
            total = int(math.ceil(total * _JSON_OVERHEAD)) + 1024
        return total

    # ----------------------------------------------------------------------------- stage 4: explain

    def _explain_all(self, work: list[_Work]) -> None:
        groups: dict[str, list[_Work]] = {}
        for w in work:
            if w.live and w.kind == "explain" and w.targets:
                key = json.dumps([list(w.methods), w.method_options], sort_keys=True, default=str)
                groups.setdefault(key, []).append(w)
        for rows in groups.values():
            chunk: list[_Work] = []
            for w in rows:
                if chunk and sum(len(c.targets) for c in chunk) + len(w.targets) > self.caps.max_engine_batch:
                    self._explain_chunk(chunk)
                    chunk = []
                chunk.append(w)
            if chunk:
                self._explain_chunk(chunk)

    def _explain_chunk(self, rows: list[_Work]) -> None:
        started = time.perf_counter()
        try:
            result = self._run_explain(rows)
        except CxrExplainError as exc:  # a property of the methods or the model: the same for every row
            for w in rows:
                self._fail(w, exc)
            return
        except Exception:
            if len(rows) == 1:
                log.exception("request_id=%s: explanation failed", rows[0].request_id)
                self._fail(rows[0], _Internal(f"internal error; quote request id {rows[0].request_id} to the "
                                              "operator"))
                return
            log.exception("explanation of a chunk of %d requests failed; retrying one by one", len(rows))
            for w in rows:
                self._explain_chunk([w])
            return
        elapsed = _ms(started)
        offset = 0
        for w in rows:
            w.result, w.offset = result, offset
            w.targets = result.targets[offset : offset + len(w.targets)]  # TOP_FINDING resolved
            if w.probabilities is None:
                w.probabilities = result.probabilities[offset : offset + 1]
            offset += len(w.targets)
            w.timings["explain"] = elapsed
        per_method = result.extras.get("timings_ms") if isinstance(result.extras.get("timings_ms"), dict) else None
        methods = rows[0].methods
        if per_method:
            for name, ms in per_method.items():
                self.telemetry.method_latency(str(name), float(ms) / 1000.0)
        else:  # the engine does not time methods apart: one observation for the method set
            self.telemetry.method_latency("+".join(methods), elapsed / 1000.0)

    def _run_explain(self, rows: list[_Work]) -> ExplanationResult:
        xs = [w.x.expand(len(w.targets), -1, -1, -1) for w in rows if w.x is not None]
        targets = [None if t == TOP_FINDING else t for w in rows for t in w.targets]
        with torch.enable_grad():
            return self.explainer.explain(torch.cat(xs), methods=list(rows[0].methods), targets=targets,
                                          options=rows[0].method_options)

    # ----------------------------------------------------------------------------- responses

    def _header(self, w: _Work) -> explain_pb2.ExplainResponse:
        return explain_pb2.ExplainResponse(
            request_id=w.request_id, model_name=self.model_name, model_version=self.model_version,
            not_for_diagnostic_use=True)

    def _findings(self, w: _Work) -> list[explain_pb2.Finding]:
        if w.probabilities is not None:
            p = w.probabilities[0]
        elif w.result is not None:
            p = w.result.probabilities[w.offset]
        else:
            return []
        ops = self.bundle.op_thresholds or [0.5] * len(self.bundle.labels)
        return [explain_pb2.Finding(label=label, probability=float(p[i]), operating_point=float(ops[i]),
                                    positive=bool(float(p[i]) > float(ops[i])))
                for i, label in enumerate(self.bundle.labels)]

    def _findings_part(self, w: _Work) -> explain_pb2.ExplainResponse:
        msg = self._header(w)
        msg.part = "findings"
        msg.findings.extend(self._findings(w))
        msg.targets.extend(self.bundle.labels[t] for t in w.targets)
        if w.geometry is not None:
            msg.geometry.CopyFrom(_geometry(w.geometry))
        return msg

    def _finish(self, w: _Work, emit: Emit | None) -> RowResult:
        started = time.perf_counter()
        msg: explain_pb2.ExplainResponse | None = None
        if w.live:
            msg = self._guard(w, self._build, w, emit)
        if not w.live or msg is None:
            msg = self._error_message(w)
        if w.live:
            w.timings["encode"] = _ms(started)
        w.timings["total"] = _ms(w.started)
        if w.live:
            for key, value in w.timings.items():
                msg.timings_ms[key] = value
        methods = w.methods if w.kind == "explain" else (w.kind,)
        for method in methods:
            self.telemetry.request(method, w.status, w.request_id)
        self.telemetry.log_request(w.request_id, w.kind, methods, w.status, w.timings, w.error_type)
        return RowResult(request_id=w.request_id, status=w.status, message=msg, content_type=w.content_type,
                         kind=w.kind, methods=tuple(w.methods), error_type=w.error_type, timings_ms=dict(w.timings))

    def _error_message(self, w: _Work) -> explain_pb2.ExplainResponse:
        exc = w.error
        msg = explain_pb2.ExplainResponse(error=explain_pb2.Error(
            code=w.status, message=str(exc) if exc is not None else "error", request_id=w.request_id,
            type=w.error_type or "error"))
        if w.options.stream and w.row.can_stream:
            msg.part, msg.last = "end", True
        return msg

    def _build(self, w: _Work, emit: Emit | None) -> explain_pb2.ExplainResponse:
        if w.kind == "describe":
            msg = self._header(w)
            msg.description.CopyFrom(self.describe())
            if w.stream:
                msg.part, msg.last = "end", True
            return msg
        heatmaps = self._heatmaps(w)
        shifts = self._latent_shifts(w)
        if w.stream:
            # Findings went out before the explanation; now each heatmap and latent shift, then the end.
            for heatmap in heatmaps:
                part = self._header(w)
                part.part = "heatmap"
                part.heatmaps.append(heatmap)
                if emit is not None:
                    emit(w.index, encode(part, w.content_type), w.content_type)
            for shift in shifts:
                part = self._header(w)
                part.part = "latent_shift"
                part.latent_shifts.append(shift)
                if emit is not None:
                    emit(w.index, encode(part, w.content_type), w.content_type)
            msg = self._header(w)
            msg.part, msg.last = "end", True
            return msg
        msg = self._findings_part(w)
        msg.part = ""
        msg.heatmaps.extend(heatmaps)
        msg.latent_shifts.extend(shifts)
        return msg

    def _heatmaps(self, w: _Work) -> list[explain_pb2.Heatmap]:
        result = w.result
        if result is None:
            return []
        out = []
        for method in w.methods:
            maps = result.heatmaps.get(method)
            if maps is None:
                continue
            for j, target in enumerate(w.targets):
                heatmap = maps[w.offset + j].numpy()
                out.append(explain_pb2.Heatmap(method=method, target=self.bundle.labels[target],
                                               map=self._map(heatmap, w.options, display=False)))
        return out

    def _latent_shifts(self, w: _Work) -> list[explain_pb2.LatentShift]:
        result = w.result
        if result is None or result.frames is None or "latent_shift" not in w.methods:
            return []
        out = []
        opts = w.options
        method = w.instances.get("latent_shift")
        for j, target in enumerate(w.targets):
            n = w.offset + j
            frames = result.frames[n].numpy()
            shift = explain_pb2.LatentShift(
                target=self.bundle.labels[target],
                lambdas=[float(v) for v in _row(result.lambdas, n)],
                frame_probabilities=[float(v) for v in _row(result.frame_probabilities, n)],
                reconstruction_gap=float(_row(result.reconstruction_gap, n)),
                map_kind=str(getattr(method, "map", None) or opts.latent_shift_map or "max"),
                direction=str(getattr(method, "direction", None) or opts.direction or "logit"),
                upper_bound_reached=bool(_extra(result, "upper_bound_reached", n, True)),
            )
            shift.frames.extend(self._map(frame, opts, display=True) for frame in frames)
            if opts.gif:
                shift.gif = render.frames_to_gif(frames)
            self.telemetry.reconstruction_gap(shift.reconstruction_gap, w.request_id)
            out.append(shift)
        return out

    def _map(self, values: np.ndarray, opts: RequestOptions, display: bool) -> explain_pb2.Map:
        """A raw signed map (``display=False``) or a display-space frame as a wire Map."""
        height, width = values.shape[-2:]
        if opts.heatmap_format == "png":
            if not display:
                values = np.asarray(normalize_for_display(values))
            return explain_pb2.Map(height=height, width=width, dtype="png", data=render.encode_png(values))
        return explain_pb2.Map(height=height, width=width, dtype=opts.heatmap_dtype,
                               data=render.encode_array(values, "float32" if opts.heatmap_dtype == "float32"
                                                        else "float16"))


class _Internal(CxrExplainError):
    http_status = 500
    code = "internal_error"


def _safe_id(value: str) -> bool:
    try:
        check_request_id(value)
    except InvalidInput:
        return False
    return True


def _body_bytes(body: Any) -> bytes:
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


def _geometry(g: Geometry) -> explain_pb2.Geometry:
    return explain_pb2.Geometry(**g.to_dict())


def _row(values: Any, n: int) -> Any:
    if values is None:
        return []
    row = values[n]
    return row.tolist() if hasattr(row, "tolist") else row


def _extra(result: ExplanationResult, key: str, n: int, default: Any) -> Any:
    value = result.extras.get(key, default)
    if isinstance(value, torch.Tensor):
        return value.flatten()[n].item() if value.numel() > 1 else value.item()
    if isinstance(value, list | tuple):
        return value[n] if n < len(value) else default
    return value


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000.0, 3)


def load_serve_config(model_dir: str | Path) -> dict[str, Any]:
    """``serve.json`` of an archive (empty when absent)."""
    path = Path(model_dir) / "serve.json"
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


def caps_from_config(config: Mapping[str, Any]) -> CostCaps:
    """:class:`CostCaps` from ``serve.json``'s ``caps`` and the ``CXREXPLAIN_<CAP>`` environment."""
    return CostCaps.from_mapping(config.get("caps") or {}, os.environ)

"""The service: a batch of request rows (bytes + options) in, one ExplainResponse per row out.

Pure Python + torch, no TorchServe import, so it runs in-process in tests and notebooks; the TorchServe handler
only turns TorchServe's rows into :class:`~.rows.RowRequest` and the results back into bytes and statuses.

A batch goes through five stages, each row failing on its own (a bad row becomes an error answer with its own
status, the others proceed; see :meth:`~.rows.RowState.step`):

1. *prepare* (:mod:`.prepare`): parse and range-check the options, price the request from them alone against
   every cap (``positive`` at its worst case), build the requested methods once, decode the image, build the
   model input;
2. *predict*: one forward pass over every row that needs probabilities before explaining (``positive``,
   ``top_k``, streaming) or only wants predictions, on the fast backend (:mod:`.predictor`) when given;
3. *resolve* (:mod:`.targets`, :mod:`.caps`): targets to label indices, then the caps again at the exact
   target count (the one late check: ``positive`` was priced at every label), before any explanation runs;
4. *explain* (:mod:`.batching`): rows asking for the same methods share one :meth:`Explainer.explain` call on
   the instances built in stage 1, one engine row per (image, target);
5. *answer* (:mod:`.responses`): the whole answer, or a stream's parts, and telemetry per row.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import torch

from cxrexplain.bundle import AutoencoderBundle, ClassifierBundle
from cxrexplain.errors import CxrExplainError
from cxrexplain.explainer import Explainer, ExplanationResult

from .batching import engine_chunks, explain_chunk, share_result
from .capabilities import available_methods, model_description
from .caps import CostCaps, check_request_caps, estimate_response_bytes
from .predictor import Predictor
from .prepare import Preparer
from .responses import ResponseBuilder, RowResult, encode
from .rows import Emit, RowRequest, RowState, elapsed_ms, internal
from .targets import needs_probabilities, resolve_targets
from .telemetry import Telemetry
from .wire import explain_pb2

log = logging.getLogger(__name__)


class ExplainService:
    """Answer batches of predict / explain / describe requests for one classifier (and its autoencoder).

    Parameters
    ----------
    classifier_bundle, autoencoder_bundle
        The models; the autoencoder backs ``latent_shift`` (its absence answers 422 for that method).
    model_name, model_version
        Echoed in every response.
    caps
        :class:`~.caps.CostCaps`.
    device
        ``cuda`` / ``cpu`` / ``None`` (CUDA when available).
    predict_backend
        A :class:`~.predictor.Predictor` for predictions (e.g. :class:`~.predictor.OnnxPredictor`); default:
        the eager model.
    telemetry
        Metrics and request logs; default: logs only.
    default_methods
        Methods for an explain request that names none (default: ``cam`` when the head allows, else
        ``gradcam``).
    autoencoder_error
        Why the archive's autoencoder could not be loaded, if it could not: the worker serves without it and
        ``latent_shift`` answers 503 naming the cause.
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
        autoencoder_error: str | None = None,
    ):
        self.bundle = classifier_bundle
        self.autoencoder = autoencoder_bundle
        self.explainer = Explainer(classifier_bundle, autoencoder=autoencoder_bundle, device=device)
        self.model_name = model_name
        self.model_version = model_version
        self.caps = caps or CostCaps()
        self.predict_backend = predict_backend
        self.telemetry = telemetry or Telemetry(model_name)
        self.methods = available_methods(classifier_bundle, autoencoder_bundle)
        if default_methods is None:
            default_methods = ("cam",) if "cam" in self.methods else ("gradcam",)
        self.default_methods = tuple(default_methods)
        self.preparer = Preparer(classifier_bundle.input_spec, self.caps, labels=len(classifier_bundle.labels),
                                 methods=self.methods, default_methods=self.default_methods,
                                 has_autoencoder=autoencoder_bundle is not None, telemetry=self.telemetry,
                                 autoencoder_error=autoencoder_error)
        self.responses = ResponseBuilder(classifier_bundle, model_name=model_name, model_version=model_version)

    def handle_batch(self, rows: Sequence[RowRequest], emit: Emit | None = None) -> list[RowResult]:
        """Answer every row; never raises for a row's fault.

        ``emit(index, payload, content_type)`` receives the intermediate parts of streaming rows (findings,
        then each heatmap, then each latent shift) as they are ready; the returned result of such a row is the
        final part (``part="end"``, ``last=true``).
        """
        states = [self._prepare(i, row) for i, row in enumerate(rows)]
        self._predict(states)
        for state in states:
            if state.live and state.kind == "explain":
                with state.step():
                    self._resolve(state)
            if state.live and state.stream and state.kind != "describe" and emit is not None:
                part = self.responses.findings_part(state)
                emit(state.index, encode(part, state.content_type), state.content_type)
        for chunk in engine_chunks(states, self.caps.max_engine_batch):
            self._explain(chunk)
        return [self._answer(state, emit) for state in states]

    def describe(self) -> explain_pb2.ModelDescription:
        """Labels, operating points, input spec, methods and intended use of the served model."""
        return model_description(self.bundle, model_name=self.model_name, model_version=self.model_version,
                                 methods=self.methods, has_autoencoder=self.autoencoder is not None)

    def estimate_response_bytes(self, state: RowState) -> int:
        """Upper estimate of the encoded response of an explain row, from its options alone."""
        return estimate_response_bytes(state, self.bundle.input_spec.size, len(self.bundle.labels))

    # ----------------------------------------------------------------------------- the stages, in order

    def _prepare(self, index: int, row: RowRequest) -> RowState:
        return self.preparer.prepare(index, row)

    def _predict(self, states: list[RowState]) -> None:
        rows = [s for s in states if s.live and s.kind != "describe" and needs_probabilities(s)]
        if not rows:
            return
        started = time.perf_counter()
        try:
            probabilities = self._run_predict(torch.cat([s.x for s in rows if s.x is not None]))
        except CxrExplainError as exc:  # a property of the model or the backend: the same for every row
            for state in rows:
                state.fail(exc)
            return
        except Exception:
            log.exception("predict backend failed for a batch of %d rows; retrying row by row", len(rows))
            for state in rows:
                with state.step():
                    assert state.x is not None  # prepared: every predict or explain row has its input
                    state.probabilities = self._run_predict(state.x)
            return
        elapsed = elapsed_ms(started)
        for i, state in enumerate(rows):
            state.probabilities = probabilities[i : i + 1]
            state.timings["predict"] = elapsed
        self.telemetry.method_latency("predict", elapsed / 1000.0)

    def _run_predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            if self.predict_backend is not None:
                return self.predict_backend(x).float().cpu()
            return self.explainer.predict(x)

    def _resolve(self, state: RowState) -> None:
        state.targets = resolve_targets(state, self.bundle)
        # The one check after the forward pass: the exact target count (never above the price's worst case).
        check_request_caps(state, self.caps, self.bundle.input_spec.size, len(self.bundle.labels))

    def _explain(self, chunk: list[RowState]) -> None:
        started = time.perf_counter()
        try:
            result = explain_chunk(self.explainer, chunk)
        except CxrExplainError as exc:  # a property of the methods or the model: the same for every row
            for state in chunk:
                state.fail(exc)
            return
        except Exception:
            if len(chunk) == 1:
                log.exception("request_id=%s: explanation failed", chunk[0].request_id)
                chunk[0].fail(internal(chunk[0].request_id))
                return
            log.exception("explanation of a chunk of %d requests failed; retrying one by one", len(chunk))
            for state in chunk:
                self._explain([state])
            return
        elapsed = elapsed_ms(started)
        share_result(result, chunk)
        for state in chunk:
            state.timings["explain"] = elapsed
        self._record_explanation(result, chunk)

    def _record_explanation(self, result: ExplanationResult, chunk: list[RowState]) -> None:
        """Each method's latency (the Explainer times them apart) and each latent shift's reconstruction gap."""
        for name, ms in result.timings_ms.items():
            self.telemetry.method_latency(name, ms / 1000.0)
        if result.latent_shift is not None:
            for state in chunk:
                for j in range(len(state.targets)):
                    gap = float(result.latent_shift.reconstruction_gap[state.offset + j])
                    self.telemetry.reconstruction_gap(gap, state.request_id)

    def _answer(self, state: RowState, emit: Emit | None) -> RowResult:
        started = time.perf_counter()
        msg: explain_pb2.ExplainResponse | None = None
        if state.live:
            with state.step():
                if state.kind == "describe":
                    msg = self.responses.card(state, self.describe())
                else:
                    msg = self.responses.answer(state, emit)
        if msg is None:  # failed now or before
            msg = self.responses.error(state)
        else:
            state.timings["encode"] = elapsed_ms(started)
        state.timings["total"] = elapsed_ms(state.started)
        if state.live:
            for key, value in state.timings.items():
                msg.timings_ms[key] = value
        methods = state.methods if state.kind == "explain" else (state.kind,)
        for method in methods:
            self.telemetry.request(method, state.status, state.request_id)
        self.telemetry.log_request(state.request_id, state.kind, methods, state.status, state.timings,
                                   state.error_type)
        return RowResult(request_id=state.request_id, status=state.status, message=msg,
                         content_type=state.content_type, kind=state.kind, methods=tuple(state.methods),
                         error_type=state.error_type, timings_ms=dict(state.timings))

"""TorchServe entry module for cxrexplain archives (imported by bare name from the archive root).

Thin on purpose: :meth:`CxrExplainHandler.initialize` loads the archive's files into a
:class:`cxrexplain_serving.service.ExplainService`; :meth:`CxrExplainHandler.handle` turns TorchServe's rows into
:class:`~cxrexplain_serving.rows.RowRequest` objects and the results back into per-row bytes, statuses and content
types. Everything else (options, decoding, caps, the engine, encoding, error mapping) lives in the service.

Archive layout (the archive root is the model directory; ``--extra-files`` puts these there)::

    cxrexplain/              the engine package
    classifier.pt            classifier weights, with its sidecar classifier.json (labels, spec, thresholds)
    autoencoder.pt           optional: backs latent_shift, with its sidecar autoencoder.json
    model.onnx               optional: predictions fast path (input "x", output logits)
    serve.json               optional: {"classifier": {"weights", "architecture"}, "autoencoder": {...},
                             "onnx": "model.onnx", "caps": {...}, "default_methods": [...], "torch_threads": n,
                             "warm_up": false, "semantic": {"table": "dissection.json"}}
    dissection.json          optional: the dissection table that makes the ``semantic`` method available
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from ts.handler_utils.utils import send_intermediate_predict_response
from ts.torch_handler.base_handler import BaseHandler

from cxrexplain.allocator import keep_freed_memory
from cxrexplain.models import load_autoencoder, load_classifier
from cxrexplain_serving.autoencoder_service import AutoencoderService
from cxrexplain_serving.config import caps_from_config, load_dissection_table, load_serve_config
from cxrexplain_serving.options import OPTIONS_HEADER
from cxrexplain_serving.predictor import OnnxPredictor
from cxrexplain_serving.responses import internal_error
from cxrexplain_serving.rows import RowRequest
from cxrexplain_serving.service import ExplainService
from cxrexplain_serving.telemetry import MetricSpec, Telemetry, new_request_id
from cxrexplain_serving.warmup import warm_up

log = logging.getLogger(__name__)

_PHRASES = {200: "OK", 400: "Bad Request", 415: "Unsupported Media Type", 422: "Unprocessable Entity",
            500: "Internal Server Error", 503: "Service Unavailable"}


class CxrExplainHandler(BaseHandler):
    """Findings, heatmaps and latent-shift counterfactuals for one chest X-ray classifier."""

    def initialize(self, context: Any) -> None:
        """Load the bundle(s) named by the archive's ``serve.json`` (or its default file names) once."""
        props = context.system_properties
        model_dir = Path(props.get("model_dir") or ".")
        gpu_id = props.get("gpu_id")
        if torch.cuda.is_available() and gpu_id is not None:
            self.device = torch.device(f"cuda:{int(gpu_id)}")
        else:
            self.device = torch.device("cpu")
        config = load_serve_config(model_dir)
        keep_freed_memory()  # a worker serves many requests of similar sizes: reuse their memory
        if config.get("torch_threads"):
            torch.set_num_threads(int(config["torch_threads"]))
        manifest = (getattr(context, "manifest", None) or {}).get("model", {})
        model_name = str(manifest.get("modelName") or getattr(context, "model_name", None) or "cxrexplain")

        self.telemetry = Telemetry(model_name, _metric_sink(getattr(context, "metrics", None)))
        self.context = context
        if config.get("kind") == "autoencoder":
            self._initialize_autoencoder(model_dir, config, model_name, manifest)
            return
        clf_cfg = config.get("classifier") or {}
        clf_path = model_dir / clf_cfg.get("weights", "classifier.pt")
        bundle = load_classifier(clf_cfg.get("architecture"), weights=clf_path)
        try:
            table = load_dissection_table(model_dir, config)
        except (OSError, ValueError):  # degrade, don't fail: every other method still serves
            log.exception("model %s: its dissection table could not be read; serving without semantic", model_name)
            table = None
        if table is not None:
            bundle.extra["dissection"] = table  # makes `semantic` available (cxrexplain_serving.capabilities)
        autoencoder, autoencoder_error = None, None
        ae_cfg = config.get("autoencoder")
        ae_path = model_dir / (ae_cfg or {}).get("weights", "autoencoder.pt")
        if ae_cfg is not None or ae_path.exists():
            try:
                autoencoder = load_autoencoder((ae_cfg or {}).get("architecture"), weights=ae_path)
            except Exception as exc:  # degrade, don't fail: every other method still serves
                log.exception("model %s: its autoencoder %s could not be loaded; serving without latent_shift",
                              model_name, ae_path.name)
                autoencoder_error = f"its autoencoder ({ae_path.name}) could not be loaded ({type(exc).__name__})"
        predictor = None
        onnx_name = config.get("onnx", "model.onnx")
        if onnx_name and (model_dir / onnx_name).exists():
            predictor = OnnxPredictor(model_dir / onnx_name)

        self.service: ExplainService | AutoencoderService = ExplainService(
            bundle, autoencoder, model_name=model_name,
            model_version=str(manifest.get("modelVersion") or bundle.version),
            caps=caps_from_config(config), device=self.device, predict_backend=predictor,
            telemetry=self.telemetry, default_methods=config.get("default_methods"),
            autoencoder_error=autoencoder_error)
        self._start_warm(config)
        log.info("model %s loaded: %d labels, autoencoder=%s, predictions via %s, methods %s", model_name,
                 len(bundle.labels), autoencoder is not None,
                 ",".join(predictor.providers) if predictor else "eager", ",".join(self.service.methods))

    def _initialize_autoencoder(self, model_dir: Path, config: dict[str, Any], model_name: str,
                                manifest: dict[str, Any]) -> None:
        """An autoencoder archive: encode / decode / reconstruct (see cxrexplain_serving.autoencoder_service)."""
        bundle = load_autoencoder(None, weights=model_dir / "autoencoder.pt")
        self.service = AutoencoderService(
            bundle, model_name=model_name, model_version=str(manifest.get("modelVersion") or bundle.version),
            caps=caps_from_config(config), device=self.device, telemetry=self.telemetry)
        self._start_warm(config)
        log.info("autoencoder %s loaded (%s)", model_name, bundle.architecture)

    def _start_warm(self, config: dict[str, Any]) -> None:
        """Pay every first-use cost before the worker reports ready (cxrexplain_serving.warmup), unless the
        archive says ``"warm_up": false`` (a faster worker start, a slower first request of each kind)."""
        if config.get("warm_up", True):
            report = warm_up(self.service)
            log.info("warm-up: %.1f s, %s", report["seconds"],
                     " ".join(f"{kind}={status}" for kind, status in report["status"].items()))
        self.initialized = True
        self.telemetry.worker_started(self.device.type)

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[bytes]:
        """One answer per row; each row gets its own status, content type and ``x-request-id``."""
        self.context = context
        rows = [self._row(i, item, context) for i, item in enumerate(data)]

        def emit(index: int, payload: bytes, content_type: str) -> None:
            context.set_response_content_type(index, content_type)
            send_intermediate_predict_response({index: payload}, {index: context.request_ids[index]},
                                               "Intermediate Prediction success", 200, context)

        log.info("batch=%d model=%s", len(rows), self.telemetry.model_name)
        try:
            results = self.service.handle_batch(rows, emit=emit)
        except Exception:
            # The service answers every row's fault itself, so this is a bug. Still answer each row: an
            # exception out of handle() fails the whole batch, and on a streaming twin (sequence batching)
            # TorchServe 0.12 then loses the worker for good.
            log.exception("batch=%d model=%s: internal error", len(rows), self.telemetry.model_name)
            results = [internal_error(row) for row in rows]
        for i, result in enumerate(results):
            context.set_response_status(result.status, _PHRASES.get(result.status, "Error"), i)
            context.set_response_content_type(i, result.content_type)
            context.set_response_header(i, "x-request-id", result.request_id)
        return [result.body for result in results]

    @staticmethod
    def _row(i: int, item: dict[str, Any], context: Any) -> RowRequest:
        headers = {str(k).lower(): v for k, v in (context.get_all_request_header(i) or {}).items()}
        key = "data" if item.get("data") is not None else "body"
        part = headers.get(key)
        content_type = part.get("content-type") if isinstance(part, dict) else None
        sequence_key = str(getattr(context, "header_key_sequence_id", "ts_request_sequence_id")).lower()

        def header(name: str) -> str | None:
            value = headers.get(name)
            return value if isinstance(value, str) else None

        rest = "explain" in headers  # TorchServe's REST path always sets it ("True"/"False"); gRPC never
        return RowRequest(
            body=item.get(key),
            content_type=content_type or None,
            # A second image under the other body key stays among the options, which refuse it (400).
            options={k: v for k, v in item.items() if k != key and v is not None},
            request_id=header("x-request-id") or context.get_request_id(i) or new_request_id(),
            explain_flag=header("explain") == "True",
            accept=header("accept"),
            rest=rest,
            # gRPC StreamPredictions2 carries a sequence id; on a sequence-batching model REST requests get one too
            can_stream=bool(header(sequence_key)) and not rest,
            header_options=header(OPTIONS_HEADER) if rest else None,
        )


def _metric_sink(metrics: Any) -> Any:
    """Emit through TorchServe's metrics cache (a ``[METRICS]`` log line the frontend parses)."""
    if metrics is None:
        return None
    from ts.metrics.metric_type_enum import MetricTypes

    def sink(spec: MetricSpec, value: float, dimensions: list[str], request_id: str) -> None:
        kind = MetricTypes(spec.kind)
        try:
            metric = metrics.get_metric(spec.name, kind)
        except Exception:  # not declared in the metrics YAML: still logged, Prometheus sees it only if declared
            metric = metrics.add_metric_to_cache(spec.name, spec.unit, list(spec.dimensions), kind)
        metric.add_or_update(value, dimensions, request_id)

    return sink

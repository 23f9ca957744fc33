"""Response building: findings, heatmaps, latent shifts and semantic units as ``ExplainResponse`` messages, whole
or streamed.

The only module that encodes pictures (through :mod:`cxrexplain_render`: PNG, raw arrays, GIF), and the only one that
knows the wire's JSON / protobuf encodings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from google.protobuf import json_format

import cxrexplain_render as render
from cxrexplain.bundle import ClassifierBundle
from cxrexplain.preprocess import Geometry

from .options import JSON, PROTOBUF, negotiate
from .rows import Emit, InternalError, RowRequest, RowState, internal, safe_request_id
from .wire import explain_pb2


def encode(message: explain_pb2.ExplainResponse, content_type: str) -> bytes:
    """JSON mapping with proto field names (bytes as base64), or the binary message."""
    if content_type == PROTOBUF:
        return message.SerializeToString()
    return json_format.MessageToJson(message, preserving_proto_field_name=True, indent=None).encode("utf-8")


def decode(data: bytes, content_type: str = JSON) -> explain_pb2.ExplainResponse:
    """Inverse of :func:`encode` (used by tests and by the client's codec)."""
    message = explain_pb2.ExplainResponse()
    if content_type == PROTOBUF:
        message.ParseFromString(data)
    else:
        json_format.Parse(data.decode("utf-8"), message)
    return message


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


def internal_error(row: RowRequest) -> RowResult:
    """A 500 answer for a row the service could not answer at all (a bug), with the request id to quote."""
    request_id = safe_request_id(row)
    msg = explain_pb2.ExplainResponse(error=explain_pb2.Error(
        code=500, message=str(internal(request_id)), request_id=request_id, type=InternalError.code))
    if row.can_stream:  # a stream waits for its last part
        msg.part, msg.last = "end", True
    return RowResult(request_id=request_id, status=500, message=msg,
                     content_type=negotiate(None, row.accept, row.rest), kind="error", error_type=InternalError.code)


def wire_map(values: np.ndarray, heatmap_format: str, heatmap_dtype: str, display: bool) -> explain_pb2.Map:
    """A raw signed map (``display=False``, normalized for display when sent as PNG) or a display-space image
    in [0, 1] (``display=True``) as a wire Map, in the requested format and dtype."""
    height, width = values.shape[-2:]
    if heatmap_format == "png":
        if not display:
            values = np.asarray(render.normalize_for_display(values))
        return explain_pb2.Map(height=height, width=width, dtype="png", data=render.encode_png(values))
    return explain_pb2.Map(height=height, width=width, dtype=heatmap_dtype,
                           data=render.encode_array(values, "float32" if heatmap_dtype == "float32" else "float16"))


class ResponseBuilder:
    """Build the messages of one model's rows: the findings part, the whole answer or its streamed parts, errors.

    Parameters
    ----------
    bundle
        Labels and operating points of the findings.
    model_name, model_version
        Echoed in every answer.
    """

    def __init__(self, bundle: ClassifierBundle, *, model_name: str, model_version: str):
        self.bundle = bundle
        self.model_name = model_name
        self.model_version = model_version

    def header(self, row: RowState) -> explain_pb2.ExplainResponse:
        """An empty answer to ``row``: request id, model, and the not-for-diagnostic-use marking."""
        return explain_pb2.ExplainResponse(
            request_id=row.request_id, model_name=self.model_name, model_version=self.model_version,
            not_for_diagnostic_use=True)

    def findings_part(self, row: RowState) -> explain_pb2.ExplainResponse:
        """Findings, targets and geometry: a stream's first part, and the head of a whole answer."""
        msg = self.header(row)
        msg.part = "findings"
        msg.findings.extend(self._findings(row))
        msg.targets.extend(self.bundle.labels[t] for t in row.resolved_targets)
        if row.geometry is not None:
            msg.geometry.CopyFrom(_geometry(row.geometry))
        return msg

    def card(self, row: RowState, description: explain_pb2.ModelDescription) -> explain_pb2.ExplainResponse:
        """The answer of a describe row: the model card (the end of a stream that asked for it)."""
        msg = self.header(row)
        msg.description.CopyFrom(description)
        if row.stream:
            msg.part, msg.last = "end", True
        return msg

    def answer(self, row: RowState, emit: Emit | None) -> explain_pb2.ExplainResponse:
        """The final message of a live predict or explain row; a streaming row's heatmaps and latent shifts go
        to ``emit`` first."""
        heatmaps = self._heatmaps(row)
        shifts = self._latent_shifts(row)
        semantic = self._semantic_units(row)
        if row.stream:
            # Findings went out before the explanation; now each heatmap and latent shift, then the end.
            for heatmap in heatmaps:
                part = self.header(row)
                part.part = "heatmap"
                part.heatmaps.append(heatmap)
                if emit is not None:
                    emit(row.index, encode(part, row.content_type), row.content_type)
            for shift in shifts:
                part = self.header(row)
                part.part = "latent_shift"
                part.latent_shifts.append(shift)
                if emit is not None:
                    emit(row.index, encode(part, row.content_type), row.content_type)
            for units in semantic:
                part = self.header(row)
                part.part = "semantic"
                part.semantic_units.append(units)
                if emit is not None:
                    emit(row.index, encode(part, row.content_type), row.content_type)
            msg = self.header(row)
            msg.part, msg.last = "end", True
            return msg
        msg = self.findings_part(row)
        msg.part = ""
        msg.heatmaps.extend(heatmaps)
        msg.latent_shifts.extend(shifts)
        msg.semantic_units.extend(semantic)
        return msg

    @staticmethod
    def error(row: RowState) -> explain_pb2.ExplainResponse:
        """The answer of a failed row: only the error (code, message, request id, type)."""
        exc = row.error
        msg = explain_pb2.ExplainResponse(error=explain_pb2.Error(
            code=row.status, message=str(exc) if exc is not None else "error", request_id=row.request_id,
            type=row.error_type or "error"))
        if row.options.stream and row.row.can_stream:  # a stream waits for its last part
            msg.part, msg.last = "end", True
        return msg

    def _findings(self, row: RowState) -> list[explain_pb2.Finding]:
        if row.probabilities is None:
            return []
        p = row.probabilities[0]
        ops = self.bundle.op_thresholds or [0.5] * len(self.bundle.labels)
        return [explain_pb2.Finding(label=label, probability=float(p[i]), operating_point=float(ops[i]),
                                    positive=bool(float(p[i]) > float(ops[i])))
                for i, label in enumerate(self.bundle.labels)]

    def _heatmaps(self, row: RowState) -> list[explain_pb2.Heatmap]:
        result = row.result
        if result is None:
            return []
        opts, out = row.options, []
        for method in row.methods:
            maps = result.heatmaps.get(method)
            if maps is None:
                continue
            for j, target in enumerate(row.resolved_targets):
                try:
                    values = wire_map(maps[row.offset + j].numpy(), opts.heatmap_format, opts.heatmap_dtype, False)
                except render.RenderOptionError as exc:  # name the method, whose options made the map this large
                    raise render.RenderOptionError(f"{method}: {exc}") from exc
                out.append(explain_pb2.Heatmap(method=method, target=self.bundle.labels[target], map=values))
        return out

    def _latent_shifts(self, row: RowState) -> list[explain_pb2.LatentShift]:
        shift = row.result.latent_shift if row.result is not None else None
        if shift is None:
            return []
        opts, out = row.options, []
        for j, target in enumerate(row.resolved_targets):
            n = row.offset + j
            frames = shift.frames[n].numpy()
            message = explain_pb2.LatentShift(
                target=self.bundle.labels[target],
                lambdas=shift.lambdas[n].tolist(),
                frame_probabilities=shift.frame_probabilities[n].tolist(),
                reconstruction_gap=float(shift.reconstruction_gap[n]),
                map_kind=shift.map_kind,
                direction=shift.direction,
                upper_bound_reached=bool(shift.upper_bound_reached[n]),
            )
            message.frames.extend(wire_map(frame, opts.heatmap_format, opts.heatmap_dtype, True) for frame in frames)
            if opts.gif:
                message.gif = render.frames_to_gif(frames)
            out.append(message)
        return out

    def _semantic_units(self, row: RowState) -> list[explain_pb2.SemanticUnits]:
        result = row.result.semantic if row.result is not None else None
        if result is None:
            return []
        opts, out = row.options, []
        for j, target in enumerate(row.resolved_targets):
            n = row.offset + j
            units = [explain_pb2.Unit(unit=int(result.units[n, i]), score=float(result.scores[n, i]),
                                      concept=result.concepts[n][i], iou=float(result.ious[n, i]),
                                      detector=bool(result.detectors[n, i]),
                                      map=wire_map(result.maps[n, i].numpy(), opts.heatmap_format,
                                                   opts.heatmap_dtype, False))
                     for i in range(result.units.shape[1])]
            out.append(explain_pb2.SemanticUnits(target=self.bundle.labels[target], layer=result.layer, units=units))
        return out


def _geometry(g: Geometry) -> explain_pb2.Geometry:
    return explain_pb2.Geometry(**g.to_dict())

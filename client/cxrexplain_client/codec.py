"""Pure request building and response parsing, shared by the sync and async clients of both transports.

Nothing here does I/O on the network: the clients hand bytes in and get messages, results or exceptions out.
"""

from __future__ import annotations

import io
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf import json_format
from PIL import Image

import cxrexplain_render as render

from ._proto import explain_pb2
from ._proto import options_schema as schema
from .errors import CxrExplainClientError, InvalidInput, error_from_fields, parse_error_body
from .results import (
    Explanation,
    Finding,
    Geometry,
    LatentShiftResult,
    ModelDescription,
    SemanticResult,
    SemanticUnit,
    StreamPart,
    TargetResult,
)

PROTOBUF_MEDIA_TYPE = "application/x-protobuf"
JSON_MEDIA_TYPE = "application/json"


# --------------------------------------------------------------------------------------------- request side
@dataclass(frozen=True)
class EncodedImage:
    """Image bytes as sent, with their media type."""

    data: bytes
    content_type: str


def _sniff(data: bytes) -> str:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if len(data) > 132 and data[128:132] == b"DICM":
        return "application/dicom"
    if data[:6] == b"\x93NUMPY":
        return "application/x-npy"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    return "application/octet-stream"


def encode_image(image: Any) -> EncodedImage:
    """Bytes to send for ``image``.

    Parameters
    ----------
    image
        A path, raw bytes (PNG, JPEG, DICOM, TIFF, .npy), a numpy array (sent as ``.npy``, dtype kept),
        a PIL image (sent as lossless PNG, 16-bit kept), or a pydicom Dataset (sent as DICOM Part 10).

    Returns
    -------
    EncodedImage
    """
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
    elif isinstance(image, (str, os.PathLike)):
        try:
            with open(image, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise InvalidInput(f"cannot read image file {image!s}: {exc.strerror}") from exc
    elif isinstance(image, np.ndarray):
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(image), allow_pickle=False)
        return EncodedImage(buf.getvalue(), "application/x-npy")
    elif isinstance(image, Image.Image):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return EncodedImage(buf.getvalue(), "image/png")
    elif type(image).__module__.startswith("pydicom") and hasattr(image, "save_as"):  # a pydicom Dataset
        buf = io.BytesIO()
        image.save_as(buf, enforce_file_format=True)
        return EncodedImage(buf.getvalue(), "application/dicom")
    else:
        raise InvalidInput(
            f"cannot send an image of type {type(image).__name__}; pass a path, bytes, numpy array, "
            "PIL image "
            "or pydicom Dataset"
        )
    if not data:
        raise InvalidInput("the image is empty (0 bytes)")
    return EncodedImage(data, _sniff(data))


def _given(value: Any) -> bool:
    """Whether an option was given: ``None`` and empty text or lists mean "leave it to the server"."""
    return value is not None and not (isinstance(value, str | list | tuple) and len(value) == 0)


def _wire_text(spec: schema.OptionSpec, value: Any) -> str:
    try:
        return spec.to_text(value)
    except schema.OptionError as exc:
        raise InvalidInput(str(exc)) from None


def build_options(
    method_options: Mapping[str, Mapping[str, Any]] | None = None, **options: Any
) -> dict[str, str]:
    """The request's option fields (wire keys), each checked against ``protos/options.json`` before upload.

    Parameters
    ----------
    method_options
        Each method's own options, ``{"gradcam": {"layer": "features.28"}}``, sent as ``gradcam.layer``.
    **options
        Any request option by its wire key (README's option table: ``methods``, ``targets``, ``top_k``,
        ``gif``, ``steps``, ``value_range``, ...). Lists travel comma-separated; ``targets="positive"`` asks
        for every finding above its operating point. ``None`` (or an empty list) sends nothing.

    Returns
    -------
    dict of str to str
        Wire key -> text, leaving out what was not given.

    Raises
    ------
    InvalidInput
        A value that does not fit its option, an unknown method, or a method option the method does not take;
        the message names the option and what fits.
    TypeError
        An option name that does not exist.
    """
    fields: dict[str, str] = {}
    for key, value in options.items():
        spec = schema.REQUEST_OPTIONS.get(key)
        if spec is None:
            raise TypeError(
                f"unknown option {key!r}; options: {', '.join(schema.REQUEST_OPTIONS)}, and method_options= "
                "for a method's own options"
            )
        if _given(value):
            fields[key] = _wire_text(spec, value)
    for method in schema.REQUEST_OPTIONS["methods"].parse(fields.get("methods", "")):
        if method.lower() not in schema.METHODS:
            raise InvalidInput(f"unknown method {method!r}; known methods: {', '.join(schema.METHODS)}")
    for method, given in (method_options or {}).items():
        for name, value in given.items():
            try:
                spec = schema.method_option(f"{method}.{name}")
            except schema.OptionError as exc:
                raise InvalidInput(str(exc)) from None
            if _given(value):
                fields[spec.key] = _wire_text(spec, value)
    return fields


OPTIONS_HEADER = "X-Cxrexplain-Options"
"""The header that carries a REST request's options, URL-encoded like a query string, beside a raw image body.
(TorchServe 0.12 gives a handler no query string on ``/predictions``, and decoding multipart cost its frontend
2.5x the CPU time per request; the server still accepts multipart, as curl sends it.)"""


@dataclass(frozen=True)
class RestBody:
    """An HTTP request body and its headers: ``Content-Type``, and the options header if there are options."""

    content: bytes
    headers: dict[str, str]


def rest_body(image: EncodedImage | None, options: Mapping[str, str]) -> RestBody:
    """The image as the raw body, the options (if any) in :data:`OPTIONS_HEADER`."""
    if image is None:
        content, headers = b"", {"Content-Type": "application/octet-stream"}
    else:
        content, headers = image.data, {"Content-Type": image.content_type}
    if options:
        headers[OPTIONS_HEADER] = urllib.parse.urlencode(options)
    return RestBody(content, headers)


def rest_path(model: str, version: str | None = None) -> str:
    """The inference path for a model (and version)."""
    if not model or "/" in model:
        raise InvalidInput(f"invalid model name {model!r}")
    return f"/predictions/{model}" + (f"/{version}" if version else "")


def grpc_input(image: EncodedImage | None, options: Mapping[str, str]) -> dict[str, bytes]:
    """``PredictionsRequest.input``: the image under ``data``, each option as UTF-8 bytes under its key."""
    entries = {k: v.encode("utf-8") for k, v in options.items()}
    if image is not None:
        entries["data"] = image.data
    return entries


def auth_headers(token: str | None) -> dict[str, str]:
    """``Authorization: Bearer <token>`` when there is a token."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def grpc_metadata(token: str | None) -> list[tuple[str, str]]:
    """gRPC metadata carrying the token (TorchServe reads the ``authorization`` key)."""
    return [("authorization", f"Bearer {token}")] if token else []


# -------------------------------------------------------------------------------------------- response side
def parse_payload(body: bytes, content_type: str | None = None) -> explain_pb2.ExplainResponse:
    """An ``ExplainResponse`` from binary protobuf or its JSON mapping.

    The format is taken from ``content_type`` when it says; otherwise sniffed: a binary ExplainResponse
    never starts with ``{`` (that byte would be a group start for field 15, which the message does not have).
    """
    msg = explain_pb2.ExplainResponse()
    ctype = (content_type or "").split(";")[0].strip().lower()
    is_json = "json" in ctype or (ctype != PROTOBUF_MEDIA_TYPE and body.lstrip()[:1] == b"{")
    try:
        if is_json:
            json_format.Parse(body.decode("utf-8"), msg, ignore_unknown_fields=True)
        else:
            msg.ParseFromString(body)
    except (json_format.ParseError, UnicodeDecodeError, ValueError) as exc:
        raise CxrExplainClientError(
            f"the server's answer is not an ExplainResponse ({ctype or 'no content type'}, "
            f"{len(body)} bytes): "
            f"{exc}; is this a cxrexplain model?"
        ) from exc
    return msg


def payload_error(msg: explain_pb2.ExplainResponse) -> CxrExplainClientError | None:
    """The typed exception for a payload whose ``error`` field is set (the gRPC path's per-row status)."""
    if not msg.HasField("error") or (msg.error.code == 0 and not msg.error.message):
        return None
    err = msg.error
    return error_from_fields(
        err.code or 500, err.message, request_id=err.request_id or msg.request_id, error_type=err.type
    )


def http_error(
    status: int, body: bytes, content_type: str | None = None, request_id: str | None = None
) -> CxrExplainClientError:
    """The typed exception for an HTTP error answer, whatever its body: the handler's ``{"error": {...}}``,
    TorchServe's ``{"code", "type", "message"}``, a binary ExplainResponse, or nothing."""
    fields: dict[str, Any] = {}
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype == PROTOBUF_MEDIA_TYPE and body:
        try:
            msg = explain_pb2.ExplainResponse.FromString(body)
        except Exception:  # noqa: BLE001 - a garbled error body must not hide the status
            msg = None
        if msg is not None and msg.HasField("error"):
            fields = {
                "message": msg.error.message,
                "type": msg.error.type,
                "request_id": msg.error.request_id or msg.request_id,
            }
    if not fields:
        fields = parse_error_body(body)
    message = fields.get("message") or (body[:200].decode("utf-8", "replace").strip() if body else None)
    if not message:
        message = f"HTTP {status} with an empty body"
    return error_from_fields(
        status,
        str(message),
        request_id=fields.get("request_id") or request_id,
        error_type=fields.get("type"),
    )


def decode_map(m: explain_pb2.Map) -> np.ndarray:
    """A wire ``Map`` as an (H, W) float32 array: raw little-endian float16 / float32, or a PNG (8 or 16 bit,
    scaled to [0, 1])."""
    dtype = m.dtype.lower()
    if dtype == "png":
        img = Image.open(io.BytesIO(m.data))
        arr = np.asarray(img)
        if arr.ndim == 3:
            arr = arr[..., 0]
        scale = 65535.0 if arr.dtype == np.uint16 or img.mode.startswith("I") else 255.0
        out = arr.astype(np.float32) / scale
    elif dtype in ("float16", "float32"):
        try:
            wire_dtype: render.ArrayDType = "float16" if dtype == "float16" else "float32"
            out = render.decode_array(m.data, m.height, m.width, wire_dtype)
        except render.RenderInputError as exc:
            raise CxrExplainClientError(f"a malformed map in the response: {exc}") from exc
    else:
        raise CxrExplainClientError(f"unknown map dtype {m.dtype!r}; upgrade cxrexplain-client")
    if m.height and m.width and out.shape != (m.height, m.width):
        raise CxrExplainClientError(f"map is {out.shape}, header says {(m.height, m.width)}")
    return out


def _geometry(msg: explain_pb2.ExplainResponse) -> Geometry | None:
    if not msg.HasField("geometry"):
        return None
    g = msg.geometry
    return Geometry(g.original_height, g.original_width, g.crop_top, g.crop_left, g.crop_size, g.model_size)


def _findings(msg: explain_pb2.ExplainResponse) -> list[Finding]:
    return [Finding(f.label, f.probability, f.operating_point, f.positive) for f in msg.findings]


def _latent_shift(ls: explain_pb2.LatentShift) -> LatentShiftResult:
    frames = [decode_map(f) for f in ls.frames]
    stacked = np.stack(frames) if frames else np.zeros((0, 0, 0), dtype=np.float32)
    return LatentShiftResult(
        target=ls.target,
        frames=stacked,
        lambdas=np.asarray(ls.lambdas, dtype=np.float32),
        frame_probabilities=np.asarray(ls.frame_probabilities, dtype=np.float32),
        reconstruction_gap=float(ls.reconstruction_gap),
        map_kind=ls.map_kind,
        direction=ls.direction,
        upper_bound_reached=ls.upper_bound_reached,
        gif=ls.gif or None,
    )


def _semantic(su: explain_pb2.SemanticUnits) -> SemanticResult:
    units = [
        SemanticUnit(u.unit, float(u.score), u.concept, float(u.iou), u.detector, decode_map(u.map))
        for u in su.units
    ]
    return SemanticResult(target=su.target, layer=su.layer, units=units)


def to_explanation(msg: explain_pb2.ExplainResponse) -> Explanation:
    """Convert a (successful) ``ExplainResponse`` into an :class:`Explanation`; raise its ``error`` if set."""
    err = payload_error(msg)
    if err is not None:
        raise err
    geometry = _geometry(msg)
    results: dict[str, TargetResult] = {t: TargetResult(target=t, geometry=geometry) for t in msg.targets}
    for hm in msg.heatmaps:
        res = results.setdefault(hm.target, TargetResult(target=hm.target, geometry=geometry))
        res.heatmaps[hm.method] = decode_map(hm.map)
        res.normalized[hm.method] = hm.map.dtype.lower() == "png"
    for ls in msg.latent_shifts:
        res = results.setdefault(ls.target, TargetResult(target=ls.target, geometry=geometry))
        res.latent_shift = _latent_shift(ls)
    for su in msg.semantic_units:
        res = results.setdefault(su.target, TargetResult(target=su.target, geometry=geometry))
        res.semantic = _semantic(su)
    return Explanation(
        request_id=msg.request_id,
        model_name=msg.model_name,
        model_version=msg.model_version,
        not_for_diagnostic_use=msg.not_for_diagnostic_use,
        findings=_findings(msg),
        targets=list(msg.targets) or list(results),
        results=results,
        geometry=geometry,
        timings_ms=dict(msg.timings_ms),
        raw=msg,
    )


def to_description(msg: explain_pb2.ExplainResponse) -> ModelDescription:
    """The ``description`` of a ``describe=true`` answer."""
    err = payload_error(msg)
    if err is not None:
        raise err
    if not msg.HasField("description"):
        raise CxrExplainClientError(
            "the server answered describe=true without a description; is this a cxrexplain model?"
        )
    d = msg.description
    spec = json_format.MessageToDict(d.input_spec, preserving_proto_field_name=True)
    return ModelDescription(
        name=d.name or msg.model_name,
        version=d.version or msg.model_version,
        architecture=d.architecture,
        labels=list(d.labels),
        operating_points=[float(v) for v in d.operating_points],
        input_spec=spec,
        methods=list(d.methods),
        has_autoencoder=d.has_autoencoder,
        intended_use=d.intended_use,
        weights_sha256=d.weights_sha256,
    )


class StreamAssembler:
    """Accumulates streamed parts into one message: repeated fields append, scalars take the latest value,
    so after the ``last`` part the assembled explanation equals the unary answer."""

    def __init__(self) -> None:
        self._acc = explain_pb2.ExplainResponse()
        self.finished = False

    def add(self, part: explain_pb2.ExplainResponse) -> StreamPart:
        """Merge one part; raise its error if it carries one; return the part as seen by the user."""
        err = payload_error(part)
        if err is not None:
            raise err
        if self.finished:
            raise CxrExplainClientError("the server sent a part after the last one")
        # Targets repeat in every part that names them: merge them without duplicates.
        targets = [t for t in part.targets if t not in self._acc.targets]
        trimmed = explain_pb2.ExplainResponse()
        trimmed.CopyFrom(part)
        del trimmed.targets[:]
        trimmed.targets.extend(targets)
        self._acc.MergeFrom(trimmed)
        self.finished = part.last
        kind = part.part or ("end" if part.last else "")
        heatmaps = [(h.target, h.method, decode_map(h.map)) for h in part.heatmaps]
        return StreamPart(
            kind=kind,
            last=part.last,
            findings=_findings(part),
            heatmaps=heatmaps,
            latent_shifts=[_latent_shift(ls) for ls in part.latent_shifts],
            explanation=to_explanation(self._acc),
            raw=part,
        )

    def message(self) -> explain_pb2.ExplainResponse:
        """The assembled message so far."""
        return self._acc

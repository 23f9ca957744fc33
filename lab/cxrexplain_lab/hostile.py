"""The hostile corpus: requests that attack the service, each with the answer it must get.

Like a phantom carries its ground truth, each :class:`Case` carries its expected answer, per transport: a
handler-level refusal is the project's error body (HTTP status and error ``type``; over gRPC the same status and
type in the reply's ``error``, since TorchServe 0.12's unary gRPC path drops per-request statuses) and has a
worker memory budget; a frontend-level one keeps TorchServe's own shape (REST status and JSON ``type``, or the
gRPC status code). ``tests/reliability/test_hostile.py`` asserts every case against a real TorchServe and
``benchmarks/bench_refusals.py`` times them, so both read the cases from here, the one place they are declared.

The option cases are generated from the options schema (``protos/options.json`` through
:mod:`cxrexplain.options_schema`): every option of every method gets the same hostile values, and the expected
answer is what the schema's own parser says of each value, so a new method's options are covered without new
code.

The request bodies come from :mod:`.hostile_bodies`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from cxrexplain import options_schema as schema

from .hostile_bodies import (
    PNG_MAGIC,
    deflated_dicom,
    dicom_claiming,
    dicom_with_frame,
    gif_bytes,
    jpeg_claiming,
    large_jpeg,
    npy,
    npy_claiming,
    phantom_png,
    windowed_dicom,
    zero_png,
)

Transport = Literal["rest", "grpc"]
TRANSPORTS: tuple[Transport, ...] = ("rest", "grpc")

# Worker memory budgets of the issue (#10): an option or header refusal costs under ~20 MB; any decode, accepted or
# refused mid-decode, at most 300 MB.
OPTION_BUDGET_MB = 20
DECODE_BUDGET_MB = 300

# TorchServe's max_request_size (model_store/config.properties); the README's pixel cap is 40 MP.
MAX_REQUEST_BYTES = 64 * 2**20

MODEL = "{model}"  # the served classifier, filled in by the runner (the test's "cxr", the demo's "cxr-densenet")


# --- expectations -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Expect:
    """The answer one transport must give.

    ``level`` says who answers: ``handler`` (the project's error body: ``status`` and ``error_type``; over gRPC
    both inside the reply's ``error``), ``frontend`` (TorchServe's own shape: REST ``status`` with its JSON
    ``type`` in ``error_type`` or an empty body when ``error_type`` is ``None``; gRPC the status code names in
    ``grpc_codes``) or ``accepted`` (200, or, for ``status == 0``, 200 or a 4xx whose message names
    ``mention``: a value the schema accepts and a later check may still refuse). ``mention`` is text the
    message must hold; ``budget_mb`` bounds the worker's peak memory growth (``None``: not measured).
    """

    level: Literal["handler", "frontend", "accepted"]
    status: int = 200
    error_type: str | None = None
    grpc_codes: tuple[str, ...] = ()
    mention: str | None = None
    budget_mb: int | None = None

    @property
    def refused(self) -> bool:
        return self.level == "handler"


def refused(status: int, error_type: str, mention: str | None = None, budget: int = OPTION_BUDGET_MB) -> Expect:
    return Expect("handler", status, error_type, mention=mention, budget_mb=budget)


def decode_refused(status: int, error_type: str, mention: str | None = None) -> Expect:
    return refused(status, error_type, mention, DECODE_BUDGET_MB)


def accepted(budget: int | None = DECODE_BUDGET_MB) -> Expect:
    return Expect("accepted", 200, budget_mb=budget)


@dataclass(frozen=True)
class Case:
    """One hostile request and its answers.

    The request: ``body`` (bytes, or a builder called once and cached), ``options`` (REST: the URL-encoded
    options header the SDK sends; gRPC: entries of the input map), ``parts`` (REST multipart fields instead of a
    raw body; gRPC: input-map entries), ``content_type`` and ``headers`` (REST only), ``model`` / ``version``
    and ``token`` (``inference``, ``none``, ``wrong`` or ``management``). ``rest`` / ``grpc`` are the answers;
    ``grpc=None`` means the case cannot exist over gRPC, and ``note`` says why or what the gRPC variant is.
    """

    name: str
    rest: Expect
    grpc: Expect | None
    body: bytes | Callable[[], bytes] = b""
    options: dict[str, str] = field(default_factory=dict)
    parts: tuple[tuple[str, bytes | Callable[[], bytes]], ...] = ()
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    grpc_options: dict[str, bytes] | None = None
    model: str = MODEL
    version: str | None = None
    token: Literal["inference", "none", "wrong", "management"] = "inference"
    group: str = "body"
    note: str = ""

    def expect(self, transport: Transport) -> Expect | None:
        return self.rest if transport == "rest" else self.grpc

    def payload(self) -> bytes:
        return _built(self.body)

    def multipart(self) -> list[tuple[str, bytes]]:
        return [(name, _built(value)) for name, value in self.parts]


def _built(value: bytes | Callable[[], bytes]) -> bytes:
    return value if isinstance(value, bytes) else _cached(value)


@functools.cache
def _cached(builder: Callable[[], bytes]) -> bytes:
    return builder()


def same(expect: Expect) -> tuple[Expect, Expect]:
    return expect, expect


def _png_30000() -> bytes:
    return zero_png(30000)


def _png16_20000() -> bytes:
    return zero_png(20000, depth=16)


def _png_7000() -> bytes:
    return zero_png(7000)


def _png_6300() -> bytes:
    return zero_png(6300)


def _png16_6300() -> bytes:
    return zero_png(6300, depth=16)


def _jpeg_6000() -> bytes:
    return large_jpeg(6000)


def _truncated_png() -> bytes:
    data = phantom_png()
    return data[: len(data) // 2]


def _truncated_jpeg() -> bytes:
    data = large_jpeg(256)
    return data[: len(data) // 2]


def _random_bytes() -> bytes:
    return np.random.default_rng(1).bytes(2000)


def _oversize() -> bytes:
    # One byte above max_request_size, and a PNG's magic so nothing but its size is wrong.
    return PNG_MAGIC + bytes(MAX_REQUEST_BYTES + 1 - len(PNG_MAGIC))


def _dicom_20000() -> bytes:
    return dicom_claiming(20000, 20000)


def _dicom_jpeg_20000() -> bytes:
    return dicom_claiming(20000, 20000, "jpeg")


def _dicom_j2k_20000() -> bytes:
    return dicom_claiming(20000, 20000, "jpeg2000")


def _dicom_rle_20000() -> bytes:
    return dicom_claiming(20000, 20000, "rle")


def _dicom_lying_frame() -> bytes:
    return dicom_with_frame(jpeg_claiming(20000, 20000), 64, 64)


def _dicom_frames() -> bytes:
    return dicom_claiming(64, 64, frames=1000)


def _dicom_5600() -> bytes:
    return windowed_dicom()


def _nan_npy() -> bytes:
    return npy(np.full((64, 64), np.nan, dtype=np.float32))


def _object_npy() -> bytes:
    return npy(np.array([[{"a": 1}] * 4] * 4, dtype=object))


def _npy_3d() -> bytes:
    return npy(np.zeros((3, 64, 64), np.float32))


def _npy_huge() -> bytes:
    return npy_claiming((100000, 100000))


def _npy_complex() -> bytes:
    return npy(np.zeros((64, 64), np.complex64))


# --- the corpus ---------------------------------------------------------------------------------------------------
def body_cases() -> list[Case]:
    """Malformed bodies and decompression bombs of every format (answered by the image decoder)."""
    png = phantom_png
    return [
        Case("empty body", *same(refused(400, "invalid_input", "no image"))),
        Case("random bytes", *same(decode_refused(415, "unsupported_media_type")), body=_random_bytes),
        Case("text body", *same(decode_refused(415, "unsupported_media_type")), body=b"hello, world"),
        Case("gif body", *same(decode_refused(415, "unsupported_media_type")), body=gif_bytes),
        Case("truncated png", *same(decode_refused(400, "invalid_input")), body=_truncated_png),
        Case("truncated jpeg", *same(decode_refused(400, "invalid_input")), body=_truncated_jpeg),
        Case("NaN npy", *same(decode_refused(400, "invalid_input", "NaN")), body=_nan_npy),
        Case("object npy", *same(decode_refused(400, "invalid_input", "object")), body=_object_npy),
        Case("complex npy", *same(decode_refused(400, "invalid_input", "complex")), body=_npy_complex),
        Case("3-D npy", *same(decode_refused(400, "invalid_input", "shape")), body=_npy_3d),
        Case("npy header claiming 100000 x 100000", *same(decode_refused(400, "invalid_input", "pixels")),
             body=_npy_huge),
        Case("png bomb 30000 x 30000", *same(decode_refused(400, "invalid_input", "30000 x 30000")),
             body=_png_30000),
        Case("16-bit png bomb 20000 x 20000", *same(decode_refused(400, "invalid_input", "20000 x 20000")),
             body=_png16_20000),
        Case("png 7000 x 7000 (49 MP, over the 40 MP cap)",
             *same(decode_refused(400, "invalid_input", "7000 x 7000")), body=_png_7000,
             note="the README's cap is 40 MP, so the issue's 7000 x 7000 PNG is now refused from its header"),
        Case("png 6300 x 6300 (39.7 MP, under the cap)", *same(accepted()), body=_png_6300),
        Case("16-bit png 6300 x 6300 (under the cap)", *same(accepted()), body=_png16_6300),
        Case("jpeg header claiming 60000 x 60000", *same(decode_refused(400, "invalid_input", "pixels")),
             body=lambda: jpeg_claiming(60000, 60000)),
        Case("jpeg 6000 x 6000 (under the cap)", *same(accepted()), body=_jpeg_6000),
        Case("dicom claiming 20000 x 20000", *same(decode_refused(400, "invalid_input", "20000 x 20000")),
             body=_dicom_20000),
        Case("deflated dicom 16384 x 16384", *same(decode_refused(400, "invalid_input", "16384 x 16384")),
             body=deflated_dicom),
        Case("jpeg dicom claiming 20000 x 20000", *same(decode_refused(400, "invalid_input", "20000 x 20000")),
             body=_dicom_jpeg_20000),
        Case("jpeg 2000 dicom claiming 20000 x 20000",
             *same(decode_refused(400, "invalid_input", "20000 x 20000")), body=_dicom_j2k_20000),
        Case("rle dicom claiming 20000 x 20000", *same(decode_refused(400, "invalid_input", "20000 x 20000")),
             body=_dicom_rle_20000),
        Case("jpeg dicom whose frame claims 20000 x 20000", *same(decode_refused(400, "invalid_input")),
             body=_dicom_lying_frame, note="Rows x Columns say 64 x 64; the frame's own header is the bomb"),
        Case("dicom with 1000 frames", *same(decode_refused(400, "invalid_input", "multi-frame")),
             body=_dicom_frames),
        Case("uncompressed dicom 5600 x 5600 (63 MB, under both caps)", *same(accepted()), body=_dicom_5600),
        Case("png sent as application/dicom", accepted(), accepted(), body=png, content_type="application/dicom",
             group="content type", note="the bytes decide the format; gRPC has no content type: the same body"),
        Case("png sent as text/html", accepted(), accepted(), body=png, content_type="text/html",
             group="content type", note="gRPC has no content type: the same body"),
        Case("random bytes sent as image/png", decode_refused(400, "invalid_input"),
             decode_refused(415, "unsupported_media_type"), body=_random_bytes, content_type="image/png",
             group="content type", note="gRPC has no content type, so nothing names PNG: 415 there"),
        Case("multipart/form-data without a boundary", accepted(), accepted(), body=png,
             content_type="multipart/form-data", group="content type",
             note="TorchServe reads a body it cannot split as the raw body; gRPC: the same body"),
        Case("application/x-www-form-urlencoded body", Expect("frontend", 500, "ErrorDataDecoderException"), None,
             body=_random_bytes, content_type="application/x-www-form-urlencoded", group="content type",
             note="REST only: TorchServe 0.12's frontend parses a form body itself and answers 500 before any "
                  "worker sees it (a frontend bug; gRPC has no form bodies)"),
        Case("multipart with two 'data' images", decode_refused(400, "invalid_input", "PNG"), None,
             parts=(("data", png), ("data", _truncated_png)), group="multipart",
             note="REST only: TorchServe 0.12 makes a row a dict before the handler runs, so the last part "
                  "named 'data' wins (here a truncated PNG: refused); a gRPC map cannot repeat a key, its "
                  "nearest is the next case"),
        Case("multipart with two images, 'data' and 'body'", *same(refused(400, "invalid_input", "two images")),
             parts=(("data", png), ("body", png)), group="multipart",
             note="gRPC: the input map with both keys"),
    ]


def _all_methods() -> str:
    return ",".join(schema.METHODS)


def request_cases() -> list[Case]:
    """Options, headers and costs answered before any pixel is decoded (image: a small valid PNG)."""
    png = phantom_png
    big = ",".join(str(i) for i in range(20_000))  # 108 KB of distinct label indices
    return [
        Case("100 KB options header", Expect("frontend", 400, "BadRequestException", mention="Invalid HTTP"),
             refused(422, "unknown_label", "out of range"), body=png, group="options",
             headers={"x-cxrexplain-options": "targets=" + big}, grpc_options={"targets": big.encode()},
             note="REST: TorchServe's HTTP decoder refuses a header this long before any worker; gRPC has no "
                  "options header, its nearest is a 108 KB option value (targets), refused by the handler"),
        Case("options header that is not URL-encoded", refused(400, "invalid_input", "URL-encoded"), None,
             body=png, headers={"x-cxrexplain-options": "methods=%ZZ&&top_k"}, group="options",
             note="REST only: the header is REST's; gRPC keys are separate map entries"),
        Case("option value that is not UTF-8", *same(refused(400, "invalid_input", "UTF-8")), body=png,
             headers={"x-cxrexplain-options": "methods=%FF%FE"}, grpc_options={"methods": b"\xff\xfe"},
             group="options"),
        Case("unknown option", *same(refused(422, "invalid_option", "colour")), body=png,
             options={"colour": "red"}, group="options"),
        Case("unknown method", *same(refused(422, "unknown_method", "nope")), body=png,
             options={"methods": "nope"}, group="options"),
        Case("option of an unknown method", *same(refused(422, "unknown_method", "nope")), body=png,
             options={"nope.steps": "3"}, group="options"),
        Case("option given twice", refused(422, "invalid_option", "given twice"), None,
             parts=(("data", png), ("methods", b"cam")), headers={"x-cxrexplain-options": "methods=lrp"},
             group="options", note="REST only: a field and the header; a gRPC map holds each key once"),
        Case("request id with unsafe characters", *same(refused(400, "invalid_input", "request_id")), body=png,
             options={"request_id": "../../etc/passwd\n"}, group="options"),
        Case("steps=6000 (integrated gradients)", *same(refused(422, "invalid_option", "steps")), body=png,
             options={"methods": "integrated_gradients", "steps": "6000"}, group="costs"),
        Case("steps=1000000 (integrated gradients)", *same(refused(422, "invalid_option", "steps")), body=png,
             options={"methods": "integrated_gradients", "steps": "1000000"}, group="costs"),
        Case("steps=129, over the cost cap", *same(refused(422, "cost_cap_exceeded", "steps")), body=png,
             options={"methods": "integrated_gradients", "steps": "129"}, group="costs"),
        Case("frames=31, over the cost cap", *same(refused(422, "cost_cap_exceeded", "frames")), body=png,
             options={"methods": "latent_shift", "frames": "31"}, group="costs"),
        Case("1000 targets", *same(refused(422, "unknown_label")), body=png,
             options={"methods": "cam", "targets": ",".join(str(i) for i in range(1000))}, group="costs"),
        Case("every method for every finding", *same(refused(422, "cost_cap_exceeded", "work units")), body=png,
             options={"methods": _all_methods(), "targets": "positive", "steps": "128", "frames": "30"},
             group="costs"),
        Case("every method, top_k=1000", *same(refused(422, "cost_cap_exceeded")), body=png,
             options={"methods": _all_methods(), "top_k": "1000", "steps": "128"}, group="costs"),
        Case("stream asked of a unary call", *same(refused(422, "invalid_option", "stream")), body=png,
             options={"methods": "cam", "stream": "true"}, group="options"),
    ]


def frontend_cases() -> list[Case]:
    """Refused by TorchServe's frontend before any worker: its own shape, kept."""
    png = phantom_png
    key = "Token Authorization failed"
    return [
        Case("body over max_request_size (64 MiB)", Expect("frontend", 413, None),
             Expect("frontend", 413, grpc_codes=("CANCELLED", "RESOURCE_EXHAUSTED", "UNAVAILABLE")), body=_oversize,
             group="frontend", note="REST: 413 with an empty body; gRPC: the frontend resets the stream"),
        Case("unknown model", Expect("frontend", 404, "ModelNotFoundException"),
             Expect("frontend", 404, grpc_codes=("INTERNAL", "NOT_FOUND"), mention="Model not found"), body=png,
             model="no-such-model", group="frontend"),
        Case("unknown version", Expect("frontend", 404, "ModelVersionNotFoundException"),
             Expect("frontend", 404, grpc_codes=("INTERNAL", "NOT_FOUND"), mention="does not exist"), body=png,
             version="9.9", group="frontend"),
        Case("no token", Expect("frontend", 400, "InvalidKeyException", mention=key),
             Expect("frontend", 400, grpc_codes=("PERMISSION_DENIED",), mention=key), body=png, token="none",
             group="frontend"),
        Case("wrong token", Expect("frontend", 400, "InvalidKeyException", mention=key),
             Expect("frontend", 400, grpc_codes=("PERMISSION_DENIED",), mention=key), body=png, token="wrong",
             group="frontend"),
        Case("management key on inference", Expect("frontend", 400, "InvalidKeyException", mention=key),
             Expect("frontend", 400, grpc_codes=("PERMISSION_DENIED",), mention=key), body=png,
             token="management", group="frontend"),
    ]


# Hostile values every option gets; a value below the declared minimum and above the maximum are added per option.
HOSTILE_VALUES = ("-1", "1e6", "1000000", "1e300", "nan", "inf", "-inf", "abc")


def _option_values(spec: schema.OptionSpec) -> list[str]:
    # "1e6" and "1000000" differ only to an integer's parser: a number option gets one of them (fewer computed
    # latent shifts: each accepted value of a method's option runs the method).
    values = [v for v in HOSTILE_VALUES if not (spec.type == "float" and v == "1000000")]
    if spec.minimum is not None:
        values.append(_number(spec.minimum - (1 if spec.type == "int" else 0.5)))
    if spec.maximum is not None:
        values.append(_number(spec.maximum + (1 if spec.type == "int" else spec.maximum)))
    return list(dict.fromkeys(values))


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _method_of(spec: schema.OptionSpec) -> str | None:
    """The method an option belongs to (``lrp.alpha`` and ``steps`` -> ``integrated_gradients``)."""
    dotted = spec.key if "." in spec.key else spec.sets
    return dotted.partition(".")[0] if dotted else None


def _schema_expect(spec: schema.OptionSpec, value: str) -> Expect:
    """What the schema's parser says of ``value``: refused (422 invalid_option naming the key; 400 for an unsafe
    request id) or accepted, then 200 or a 4xx from a later check (the method's constructor, the caps, a map
    too large for float16) that names the option's method, or the option when it belongs to none."""
    try:
        spec.parse(value)
    except schema.OptionError:
        if spec.key == "request_id":
            return refused(400, "invalid_input", spec.key)
        return refused(422, "invalid_option", spec.key)
    return Expect("accepted", 0, mention=_method_of(spec) or spec.key)


def option_cases() -> list[Case]:
    """Every request option and every method's options (from the schema), each with :data:`HOSTILE_VALUES` and
    its out-of-range values; the option's method is asked for, so the value is used, not ignored.

    ``methods`` and ``targets`` are lists of names: a number names no method (422 unknown_method) or no label
    (422 unknown_label). Values the schema accepts are computed: they must answer 200 or a 4xx naming the option.
    """
    specs = list(schema.REQUEST_OPTIONS.values()) + [s for m in schema.METHOD_OPTIONS.values() for s in m.values()]
    cases = []
    for spec in specs:
        method = _method_of(spec)
        for value in _option_values(spec):
            options = {spec.key: value}
            if method is not None:
                options["methods"] = method
            if method == "latent_shift" and spec.key != "frames":
                options["frames"] = "2"  # the fewest frames: an accepted value computes a latent shift
            expect = _schema_expect(spec, value)
            if spec.key == "methods":
                expect = refused(422, "unknown_method", value)
            elif spec.key == "targets":
                expect = refused(422, "unknown_label", value if value != "1000000" else "out of range")
            cases.append(Case(f"{spec.key}={value}", *same(expect), body=phantom_png, options=options,
                              group=f"option {spec.key}"))
    return cases


def corpus() -> list[Case]:
    """Every case: bodies, requests, the frontend's, then the generated option cases."""
    return body_cases() + request_cases() + frontend_cases() + option_cases()


def walk(cases: list[Case], transport: Transport) -> Iterator[tuple[Case, Expect]]:
    """The cases that exist over ``transport``, with its answer."""
    for case in cases:
        expect = case.expect(transport)
        if expect is not None:
            yield case, expect


__all__ = ["DECODE_BUDGET_MB", "OPTION_BUDGET_MB", "TRANSPORTS", "Case", "Expect", "corpus", "option_cases", "walk"]

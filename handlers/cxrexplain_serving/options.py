"""Request options: one parsing path for REST multipart fields or header, and gRPC ``PredictionsRequest.input`` keys.

TorchServe hands a handler each row as a dict: REST multipart fields arrive as ``str`` (``text/*`` parts),
``bytes`` or already JSON-decoded values (``application/json`` parts); gRPC input-map values always arrive
as ``bytes``. :func:`parse_options` accepts all of them and returns one typed :class:`RequestOptions`.

Which keys exist, their types, choices, minimums and defaults, and each method's own ``<method>.<option>``
keys (``integrated_gradients.internal_batch_size=16``) are declared once, in ``protos/options.json``; this
module reads them from the generated :mod:`cxrexplain.options_schema`, the same table the client SDK validates
with before sending (README.md, option table).

Over REST the options may also travel as one URL-encoded header, :data:`OPTIONS_HEADER`, beside a raw image
body (what the client SDK sends): TorchServe 0.12 hands the handler no query string on ``/predictions``, and
decoding a multipart body cost its Java frontend 2.5x the CPU time of a raw one (BENCHMARKS.md, serving).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cxrexplain import options_schema as schema
from cxrexplain.errors import InvalidInput, InvalidOption, UnknownMethod
from cxrexplain.methods import base as registry

BODY_KEYS = ("data", "body")
# Keys TorchServe itself reads from a gRPC input map (sequence control): not ours to validate.
_TRANSPORT_PREFIX = "ts_"
OPTIONS_HEADER = "x-cxrexplain-options"  # REST: "methods=cam,lrp&top_k=3", URL-encoded like a query string

POSITIVE = "positive"
JSON = "application/json"
PROTOBUF = "application/x-protobuf"

KNOWN_KEYS = frozenset(schema.REQUEST_OPTIONS)


@dataclass(frozen=True)
class RequestOptions:
    """The options of one request, validated for form (the model-specific checks come later).

    ``targets`` holds label names or index strings in request order, ``positive`` is the ``positive``
    keyword; ``method_options`` maps method name -> {option: value read as the schema declares it}, passed to
    the method's constructor (which checks what spans options, such as LRP's alpha - beta = 1). ``frames`` /
    ``steps`` are kept separately for the cost caps.
    """

    methods: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    positive: bool = False
    top_k: int | None = None
    heatmap_format: str = "array"
    heatmap_dtype: str = "float16"
    frames: int | None = None
    steps: int | None = None
    latent_shift_map: str | None = None
    direction: str | None = None
    stream: bool = False
    describe: bool = False
    gif: bool = False
    accept: str | None = None
    request_id: str | None = None
    value_range: tuple[float, float] | None = None
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    given: frozenset[str] = frozenset()

    @property
    def has_targets(self) -> bool:
        return bool(self.targets) or self.positive or self.top_k is not None


def text(key: str, value: Any) -> str:
    """One option value as text, whatever transport delivered it; raises :class:`InvalidInput` (400)."""
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8").strip()
        except UnicodeDecodeError:
            raise InvalidInput(f"option {key!r} is not UTF-8 text: send option values as text") from None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value).strip()
    if isinstance(value, list | tuple):
        return ",".join(text(key, v) for v in value)
    raise InvalidInput(f"option {key!r} must be text, a number or a list, got a JSON {type(value).__name__}")


def _parse(spec: schema.OptionSpec, raw: str) -> Any:
    """``raw`` read as ``spec`` declares; a value that does not fit is :class:`InvalidOption` (422)."""
    try:
        return spec.parse(raw)
    except schema.OptionError as exc:
        raise InvalidOption(str(exc)) from None


def check_request_id(raw: str) -> str:
    """A client-chosen request id, kept only if it is safe to log and echo; raises :class:`InvalidInput`."""
    try:
        return str(schema.REQUEST_OPTIONS["request_id"].parse(raw))
    except schema.OptionError as exc:
        raise InvalidInput(str(exc)) from None


def option_name(key: Any) -> str:
    """A wire key as the options are matched: stripped, lower case (``Top_K`` is ``top_k``)."""
    return str(key).strip().lower()


def with_header_options(fields: Mapping[str, Any], header: str | None) -> Mapping[str, Any]:
    """A row's option fields plus those of its :data:`OPTIONS_HEADER` (URL-encoded ``key=value`` pairs).

    Raises
    ------
    InvalidInput
        A header that is not URL-encoded pairs (400).
    InvalidOption
        An option given twice: in the header and as a field, or twice in the header (422).
    """
    if not header:
        return fields
    try:
        pairs = urllib.parse.parse_qsl(header, keep_blank_values=True, strict_parsing=True, errors="strict")
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"header {OPTIONS_HEADER} must hold URL-encoded key=value pairs joined by '&', "
                           f"for example methods=cam%2Clrp&top_k=3 ({exc})") from exc
    merged = dict(fields)
    given = {option_name(k) for k in fields}
    for key, value in pairs:
        name = option_name(key)
        if name in given:
            raise InvalidOption(f"option {name!r} is given twice (header {OPTIONS_HEADER} and a multipart field, "
                                "or twice in the header); give it once")
        given.add(name)
        merged[key] = value
    return merged


def parse_options(raw: Mapping[str, Any]) -> RequestOptions:
    """Validate one row's option keys and values (everything except the image body).

    Raises
    ------
    InvalidOption
        An unknown key or a value outside its declaration (422, the message names the key).
    UnknownMethod
        A method that is not registered (422, the message lists the known ones).
    InvalidInput
        A value that is not text at all, an unsafe ``request_id``, or a second image under the other body key
        (400).
    """
    values: dict[str, Any] = {}
    dotted: dict[str, dict[str, Any]] = {}
    for key, value in raw.items():
        name = option_name(key)
        if name in BODY_KEYS:
            # The image travels apart from the options: a body key here is a second image, which would be
            # silently dropped (TorchServe hands 'data' and 'body' to the handler as separate keys).
            raise InvalidInput("the request carries two images ('data' and 'body'): send one image per "
                               "request, as the body or as the multipart field 'data'")
        if name.startswith(_TRANSPORT_PREFIX):
            continue
        if "." in name:
            method, _, option = name.partition(".")
            if method not in registry.REGISTRY:
                raise UnknownMethod(f"option {name!r} names an unknown method {method!r}; known methods: "
                                    f"{', '.join(sorted(registry.REGISTRY))}")
            try:
                spec = schema.method_option(name)
            except schema.OptionError as exc:
                raise InvalidOption(str(exc)) from None
            dotted.setdefault(method, {})[option] = _parse(spec, text(name, value))
            continue
        if name not in KNOWN_KEYS:
            raise InvalidOption(f"unknown option {name!r}; known options: {', '.join(sorted(KNOWN_KEYS))} "
                                "and <method>.<option>")
        values[name] = text(name, value)

    def get(key: str) -> Any:
        """The option's typed value; when missing (or empty), the declared default (``None`` if none)."""
        spec = schema.REQUEST_OPTIONS[key]
        given = values.get(key, "")
        if given != "":
            return check_request_id(given) if key == "request_id" else _parse(spec, given)
        return None if spec.default is None else spec.parse(spec.default)

    methods = tuple(dict.fromkeys(m.lower() for m in get("methods") or ()))
    for method in methods:
        if method not in registry.REGISTRY:
            raise UnknownMethod(f"unknown method {method!r}; known methods: {', '.join(sorted(registry.REGISTRY))}")
    tokens = get("targets") or ()
    positive = any(t.lower() == POSITIVE for t in tokens)
    targets = tuple(dict.fromkeys(t for t in tokens if t.lower() != POSITIVE))

    method_options: dict[str, dict[str, Any]] = {m: dict(o) for m, o in dotted.items()}
    short: dict[str, Any] = {}
    for key, spec in schema.REQUEST_OPTIONS.items():
        if spec.sets is None:
            continue
        short[key] = get(key)
        if short[key] is not None:  # an explicit <method>.<option> key wins over the short wire key
            method, _, option = spec.sets.partition(".")
            method_options.setdefault(method, {}).setdefault(option, short[key])

    return RequestOptions(
        methods=methods,
        targets=targets,
        positive=positive,
        top_k=get("top_k"),
        heatmap_format=get("heatmap_format"),
        heatmap_dtype=get("heatmap_dtype"),
        frames=short["frames"],
        steps=short["steps"],
        latent_shift_map=short["latent_shift_map"],
        direction=short["direction"],
        stream=get("stream"),
        describe=get("describe"),
        gif=get("gif"),
        accept=get("accept"),
        request_id=get("request_id"),
        value_range=get("value_range"),
        method_options=method_options,
        given=frozenset(values) | frozenset(f"{m}.{o}" for m, opts in dotted.items() for o in opts),
    )


def negotiate(accept_option: str | None, accept_header: str | None, rest: bool) -> str:
    """The response encoding: the ``accept`` option, else the HTTP ``Accept`` header, else JSON over REST
    and binary protobuf over gRPC (whose ``PredictionResponse.prediction`` is bytes)."""
    if accept_option:
        return accept_option
    if accept_header and PROTOBUF in accept_header.lower():
        return PROTOBUF
    return JSON if rest else PROTOBUF

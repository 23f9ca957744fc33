"""Request options: one parsing path for REST multipart fields or header, and gRPC ``PredictionsRequest.input`` keys.

TorchServe hands a handler each row as a dict: REST multipart fields arrive as ``str`` (``text/*`` parts),
``bytes`` or already JSON-decoded values (``application/json`` parts); gRPC input-map values always arrive
as ``bytes``. :func:`parse_options` accepts all of them and returns one typed :class:`RequestOptions`.

Wire keys (DESIGN.md "Wire"): ``methods``, ``targets``, ``top_k``, ``heatmap_format``, ``heatmap_dtype``,
``frames``, ``latent_shift_map``, ``direction``, ``stream``, ``describe``, plus ``gif``, ``steps``
(integrated gradients), ``accept``, ``request_id``, ``value_range`` (for .npy bodies) and
``<method>.<option>`` for any option a method declares (``integrated_gradients.internal_batch_size=16``).

Over REST the options may also travel as one URL-encoded header, :data:`OPTIONS_HEADER`, beside a raw image
body (what the client SDK sends): TorchServe 0.12 hands the handler no query string on ``/predictions``, and
decoding a multipart body cost its Java frontend 2.5x the CPU time of a raw one (BENCHMARKS.md, serving).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cxrexplain.errors import InvalidInput, InvalidOption, UnknownMethod
from cxrexplain.methods import base as registry

BODY_KEYS = ("data", "body")
# Keys TorchServe itself reads from a gRPC input map (sequence control): not ours to validate.
_TRANSPORT_PREFIX = "ts_"
OPTIONS_HEADER = "x-cxrexplain-options"  # REST: "methods=cam,lrp&top_k=3", URL-encoded like a query string

HEATMAP_FORMATS = ("array", "png")
HEATMAP_DTYPES = ("float16", "float32")
LATENT_SHIFT_MAPS = ("max", "mean", "minmax", "int")
DIRECTIONS = ("logit", "sigmoid")
POSITIVE = "positive"
JSON = "application/json"
PROTOBUF = "application/x-protobuf"

KNOWN_KEYS = frozenset({
    "methods", "targets", "top_k", "heatmap_format", "heatmap_dtype", "frames", "latent_shift_map",
    "direction", "stream", "describe", "gif", "steps", "accept", "request_id", "value_range",
})

# Wire keys that configure one method, and the option names that method may declare for them (the first
# one the method's ``options`` declares wins), so a method's own naming never leaks onto the wire.
METHOD_KEYS: dict[str, tuple[str, tuple[str, ...]]] = {
    "frames": ("latent_shift", ("frames", "k", "num_frames")),
    "latent_shift_map": ("latent_shift", ("map", "map_kind", "latent_shift_map")),
    "direction": ("latent_shift", ("direction",)),
    "steps": ("integrated_gradients", ("steps", "n_steps")),
}

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}


@dataclass(frozen=True)
class RequestOptions:
    """The options of one request, validated for form (the model-specific checks come later).

    ``targets`` holds label names or index strings in request order, ``positive`` is the ``positive``
    keyword; ``method_options`` maps method name -> {option: raw text}, passed to the method's constructor
    (which checks types and ranges). ``frames`` / ``steps`` are kept separately for the cost caps.
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


def _items(raw: str) -> list[str]:
    return [item.strip() for item in raw.split(",") if item.strip()]


def _int(key: str, raw: str, low: int = 1) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise InvalidOption(f"{key} must be an integer, got {raw[:40]!r}") from None
    if value < low:
        raise InvalidOption(f"{key} must be at least {low}, got {value}")
    return value


def _bool(key: str, raw: str) -> bool:
    lowered = raw.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise InvalidOption(f"{key} must be true or false, got {raw[:40]!r}")


def _choice(key: str, raw: str, allowed: tuple[str, ...]) -> str:
    lowered = raw.lower()
    if lowered not in allowed:
        raise InvalidOption(f"{key} must be one of {', '.join(allowed)}, got {raw[:40]!r}")
    return lowered


def _accept(raw: str) -> str:
    lowered = raw.lower()
    if lowered in ("json", JSON) or JSON in lowered:
        return JSON
    if lowered in ("protobuf", "proto", "binary", PROTOBUF) or PROTOBUF in lowered:
        return PROTOBUF
    raise InvalidOption(f"accept must be {JSON} or {PROTOBUF}, got {raw[:60]!r}")


def _value_range(raw: str) -> tuple[float, float]:
    parts = _items(raw)
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise InvalidOption(f"value_range must be two numbers 'low,high', got {raw[:40]!r}") from None
    return lo, hi


def _coerce(method: str, option: str, raw: str) -> Any:
    """Text -> the type the method declares for ``option``; ``bool("false")`` would be True, so booleans are
    parsed here. Other types (and undeclared options, which the method rejects by name) pass as text."""
    declared = registry.REGISTRY[method].options.get(option)
    return _bool(f"{method}.{option}", raw) if declared is bool else raw


def check_request_id(raw: str) -> str:
    """A client-chosen request id, kept only if it is safe to log and echo; raises :class:`InvalidInput`."""
    if not _REQUEST_ID.match(raw):
        raise InvalidInput("request id must be 1-128 characters of letters, digits, '.', '_', ':' or '-'")
    return raw


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
        An unknown key or a value outside its choices (422, the message names the key).
    UnknownMethod
        A method that is not registered (422, the message lists the known ones).
    InvalidInput
        A value that is not text at all (400).
    """
    values: dict[str, Any] = {}
    dotted: dict[str, dict[str, Any]] = {}
    for key, value in raw.items():
        name = option_name(key)
        if name in BODY_KEYS or name.startswith(_TRANSPORT_PREFIX):
            continue
        if "." in name:
            method, _, option = name.partition(".")
            if method not in registry.REGISTRY:
                raise UnknownMethod(f"option {name!r} names an unknown method {method!r}; known methods: "
                                    f"{', '.join(sorted(registry.REGISTRY))}")
            dotted.setdefault(method, {})[option] = _coerce(method, option, text(name, value))
            continue
        if name not in KNOWN_KEYS:
            raise InvalidOption(f"unknown option {name!r}; known options: {', '.join(sorted(KNOWN_KEYS))} "
                                "and <method>.<option>")
        values[name] = text(name, value)

    methods = tuple(dict.fromkeys(m.lower() for m in _items(values.get("methods", ""))))
    for method in methods:
        if method not in registry.REGISTRY:
            raise UnknownMethod(f"unknown method {method!r}; known methods: {', '.join(sorted(registry.REGISTRY))}")
    tokens = _items(values.get("targets", ""))
    positive = any(t.lower() == POSITIVE for t in tokens)
    targets = tuple(dict.fromkeys(t for t in tokens if t.lower() != POSITIVE))

    def get(key: str, parse: Any, default: Any = None) -> Any:
        return parse(key, values[key]) if values.get(key, "") != "" else default

    frames = get("frames", lambda k, v: _int(k, v, 2))
    steps = get("steps", _int)
    shift_map = get("latent_shift_map", lambda k, v: _choice(k, v, LATENT_SHIFT_MAPS))
    direction = get("direction", lambda k, v: _choice(k, v, DIRECTIONS))
    validated = {"frames": frames, "steps": steps, "latent_shift_map": shift_map, "direction": direction}
    method_options: dict[str, dict[str, Any]] = {m: dict(o) for m, o in dotted.items()}
    for key, (method, candidates) in METHOD_KEYS.items():
        if validated[key] is None:
            continue
        declared = registry.REGISTRY[method].options if method in registry.REGISTRY else {}
        declared_name = next((c for c in candidates if c in declared), None)
        if declared_name is not None:  # an explicit <method>.<option> key wins over the short wire key
            method_options.setdefault(method, {}).setdefault(declared_name, validated[key])

    return RequestOptions(
        methods=methods,
        targets=targets,
        positive=positive,
        top_k=get("top_k", _int),
        heatmap_format=get("heatmap_format", lambda k, v: _choice(k, v, HEATMAP_FORMATS), "array"),
        heatmap_dtype=get("heatmap_dtype", lambda k, v: _choice(k, v, HEATMAP_DTYPES), "float16"),
        frames=frames,
        steps=steps,
        latent_shift_map=shift_map,
        direction=direction,
        stream=get("stream", _bool, False),
        describe=get("describe", _bool, False),
        gif=get("gif", _bool, False),
        accept=get("accept", lambda k, v: _accept(v)),
        request_id=get("request_id", lambda k, v: check_request_id(v)),
        value_range=get("value_range", lambda k, v: _value_range(v)),
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

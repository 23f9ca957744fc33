# ruff: noqa
"""The request options of cxrexplain, generated from ``protos/options.json`` by ``protos/generate.py``.

Do not edit the generated ``options_schema.py`` files: edit ``protos/options.json`` (the table) or
``protos/options_schema_template.py`` (this code) and run ``python protos/generate.py``. The same file is
written into the engine (``cxrexplain``: the boolean words of method options), the server
(``cxrexplain_serving.wire``: parsing) and the client SDK (``cxrexplain_client._proto``: keyword arguments,
validation, CLI flags), so every side reads one declaration; it needs only the standard library.

Every option travels as text: a REST multipart field or a key of the URL-encoded options header, or a gRPC
``PredictionsRequest.input`` entry. :meth:`OptionSpec.parse` turns that text into a typed value and
:meth:`OptionSpec.to_text` turns a Python value into that text; both raise :class:`OptionError` naming the
option. Per-method options travel as ``<method>.<option>`` (``gradcam.layer``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypedDict  # noqa: F401  (Literal: the generated ExplainOptions)


class OptionError(ValueError):
    """An option's value does not fit its declaration; the message names the option and says what fits."""


@dataclass(frozen=True)
class OptionSpec:
    """One option as declared in ``protos/options.json``.

    Attributes
    ----------
    key
        The wire key (``top_k``; ``gradcam.layer`` for a method's option).
    type
        ``int``, ``float``, ``bool``, ``choice``, ``list`` (comma list), ``float_pair`` (``low,high``), ``text``
        or ``media_type`` (a choice that also takes aliases and media types with parameters).
    help
        One line for the user (CLI help, README).
    choices, aliases
        Allowed values of a choice (lower case); other spellings of them (``json`` for ``application/json``).
    minimum, maximum
        Smallest and largest number allowed (``int`` and ``float``), both inclusive: the natural range of the
        option, so an out-of-range value is refused while parsing, before any work.
    default
        The value, as text, the receiver applies when the option is missing (``None``: no value).
    doc_default
        How the README states the default when it is not ``default``.
    pattern
        A regular expression the whole text must match.
    sets
        For a short key, the method option it sets (``frames`` sets ``latent_shift.frames``).
    sdk
        How the client SDK sends it when it is not a keyword argument: ``argument`` (a positional parameter),
        or the call that sets it (``stream_explain``, ``describe``).
    """

    key: str
    type: str
    help: str
    choices: tuple[str, ...] = ()
    aliases: tuple[tuple[str, str], ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    default: str | None = None
    doc_default: str | None = None
    pattern: str | None = None
    sets: str | None = None
    sdk: str | None = None

    def parse(self, raw: str) -> Any:
        """The typed value of the option's wire text (already stripped; an empty text is the caller's case).

        Returns
        -------
        int, float, bool, str, tuple of str (``list``) or tuple of two floats (``float_pair``).

        Raises
        ------
        OptionError
            The text does not fit; the message names :attr:`key` and what fits.
        """
        if self.type == "int":
            try:
                number = int(raw)
            except ValueError:
                raise OptionError(f"{self.key} must be an integer, got {raw[:40]!r}") from None
            self._check_range(number)
            return number
        if self.type == "float":
            try:
                value = float(raw)
            except ValueError:
                raise OptionError(f"{self.key} must be a number, got {raw[:40]!r}") from None
            if not math.isfinite(value):
                raise OptionError(f"{self.key} must be a finite number, got {raw[:40]!r}")
            self._check_range(value)
            return value
        if self.type == "bool":
            return parse_bool(self.key, raw)
        if self.type == "choice":
            lowered = raw.lower()
            if lowered not in self.choices:
                raise OptionError(f"{self.key} must be one of {', '.join(self.choices)}, got {raw[:40]!r}")
            return lowered
        if self.type == "list":
            return tuple(item.strip() for item in raw.split(",") if item.strip())
        if self.type == "float_pair":
            parts = [item.strip() for item in raw.split(",") if item.strip()]
            try:
                low, high = (float(p) for p in parts)
            except ValueError:
                raise OptionError(f"{self.key} must be two numbers 'low,high', got {raw[:40]!r}") from None
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise OptionError(f"{self.key} must be two finite numbers 'low,high' with low < high, "
                                  f"got {raw[:40]!r}")
            return low, high
        if self.type == "media_type":
            return self._media_type(raw)
        if self.pattern is not None and not re.fullmatch(self.pattern, raw):
            raise OptionError(f"{self.key} must match {self.pattern} ({self.help}), got {raw[:40]!r}")
        return raw

    def _check_range(self, number: float) -> None:
        if self.minimum is not None and number < self.minimum:
            raise OptionError(f"{self.key} must be at least {_number(self.minimum)}, got {_number(number)}")
        if self.maximum is not None and number > self.maximum:
            raise OptionError(f"{self.key} must be at most {_number(self.maximum)}, got {_number(number)}")

    def _media_type(self, raw: str) -> str:
        lowered = raw.lower()
        named = dict(self.aliases).get(lowered, lowered)
        if named in self.choices:
            return named
        # An Accept-style value ("application/json; charset=utf-8", "text/html, application/json") names the
        # media type among others.
        for choice in self.choices:
            if choice in lowered:
                return choice
        raise OptionError(f"{self.key} must be {' or '.join(self.choices)}, got {raw[:60]!r}")

    def to_text(self, value: Any) -> str:
        """The wire text of a Python value for this option, checked by :meth:`parse` before it is sent.

        Raises
        ------
        OptionError
            A value of the wrong kind, or text that does not fit; the message names :attr:`key`.
        """
        if isinstance(value, str):
            text = value.strip()
        elif self.type == "bool" and isinstance(value, bool):
            text = "true" if value else "false"
        elif self.type == "int" and isinstance(value, int) and not isinstance(value, bool):
            text = str(value)
        elif self.type == "float" and isinstance(value, int | float) and not isinstance(value, bool):
            text = repr(float(value))
        elif self.type == "list" and isinstance(value, int) and not isinstance(value, bool):
            text = str(value)
        elif self.type in ("list", "float_pair") and isinstance(value, list | tuple):
            text = ",".join(str(item).strip() for item in value)
        else:
            raise OptionError(f"{self.key} takes {_KINDS[self.type]}, got a {type(value).__name__} ({value!r:.40})")
        if text == "":
            raise OptionError(f"{self.key} is empty: give it {_KINDS[self.type]} or leave it out")
        self.parse(text)
        return text


_KINDS = {
    "int": "an integer",
    "float": "a number",
    "bool": "True or False",
    "choice": "one of its choices as text",
    "list": "text or a list",
    "float_pair": "two numbers (low, high)",
    "text": "text",
    "media_type": "a media type as text",
}


def _number(value: float) -> str:
    """A number for a message: whole numbers without ``.0``, and at most 40 characters of a huge one."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value) if isinstance(value, int) else repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} digits)"


def parse_bool(key: str, raw: str) -> bool:
    """The one reading of a boolean's text (case-insensitive :data:`BOOLEAN_TRUE` / :data:`BOOLEAN_FALSE`).

    Raises
    ------
    OptionError
        Any other word; the message names ``key`` and the words that fit.
    """
    lowered = raw.strip().lower()
    if lowered in BOOLEAN_TRUE:
        return True
    if lowered in BOOLEAN_FALSE:
        return False
    raise OptionError(
        f"{key} must be true or false ({', '.join(BOOLEAN_TRUE)} / {', '.join(BOOLEAN_FALSE)}), got {raw[:40]!r}"
    )


def method_option(key: str) -> OptionSpec:
    """The declaration of a ``<method>.<option>`` key.

    Raises
    ------
    OptionError
        An unknown method or an option the method does not take; the message lists what exists.
    """
    method, _, option = key.partition(".")
    if method not in METHOD_OPTIONS:
        raise OptionError(f"option {key!r} names an unknown method {method!r}; known methods: {', '.join(METHODS)}")
    declared = METHOD_OPTIONS[method]
    if option not in declared:
        raise OptionError(
            f"{method} does not take {option!r} (option {key!r}); its options: {', '.join(declared) or 'none'}"
        )
    return declared[option]


def _spec(key: str, fields: Mapping[str, Any]) -> OptionSpec:
    return OptionSpec(
        key=key,
        type=fields["type"],
        help=fields["help"],
        choices=tuple(fields.get("choices", ())),
        aliases=tuple(fields.get("aliases", {}).items()),
        minimum=fields.get("minimum"),
        maximum=fields.get("maximum"),
        default=fields.get("default"),
        doc_default=fields.get("doc_default"),
        pattern=fields.get("pattern"),
        sets=fields.get("sets"),
        sdk=fields.get("sdk"),
    )


# <generated>
_TABLE: dict[str, Any] = {'boolean': {'true': ['true', '1', 'yes', 'on'], 'false': ['false', '0', 'no', 'off']},
 'options': [{'key': 'methods',
              'type': 'list',
              'sdk': 'argument',
              'help': 'explanation methods, comma list: every method below',
              'doc_default': '`cam` (`gradcam` for heads without GAP+linear)'},
             {'key': 'targets',
              'type': 'list',
              'sdk': 'argument',
              'help': 'label names or indices, or `positive` (every finding above its operating point), '
                      'comma list',
              'doc_default': 'the top finding'},
             {'key': 'top_k', 'type': 'int', 'minimum': 1, 'help': 'explain the k most probable findings'},
             {'key': 'heatmap_format',
              'type': 'choice',
              'choices': ['array', 'png'],
              'default': 'array',
              'help': 'raw array, or PNG normalized for display'},
             {'key': 'heatmap_dtype',
              'type': 'choice',
              'choices': ['float16', 'float32'],
              'default': 'float16',
              'help': 'element type of raw arrays'},
             {'key': 'frames',
              'type': 'int',
              'sets': 'latent_shift.frames',
              'help': 'latent shift: number of frames K',
              'minimum': 2,
              'maximum': 1000,
              'doc_default': '`10`'},
             {'key': 'latent_shift_map',
              'type': 'choice',
              'sets': 'latent_shift.map',
              'help': 'latent shift: how the frames become one map',
              'choices': ['max', 'mean', 'minmax', 'int'],
              'doc_default': '`max`'},
             {'key': 'direction',
              'type': 'choice',
              'sets': 'latent_shift.direction',
              'help': "latent shift: shift along the target's logit or sigmoid",
              'choices': ['logit', 'sigmoid'],
              'doc_default': '`logit`'},
             {'key': 'gif',
              'type': 'bool',
              'default': 'false',
              'help': 'latent shift: also send the frames as an animated GIF'},
             {'key': 'steps',
              'type': 'int',
              'sets': 'integrated_gradients.steps',
              'help': 'integrated gradients: path points',
              'minimum': 1,
              'maximum': 4096,
              'doc_default': '`32`'},
             {'key': 'stream',
              'type': 'bool',
              'default': 'false',
              'sdk': 'stream_explain',
              'help': 'stream parts as they are ready (gRPC `StreamPredictions2` only)'},
             {'key': 'describe',
              'type': 'bool',
              'default': 'false',
              'sdk': 'describe',
              'help': 'answer with the model card instead'},
             {'key': 'accept',
              'type': 'media_type',
              'choices': ['application/json', 'application/x-protobuf'],
              'aliases': {'json': 'application/json',
                          'protobuf': 'application/x-protobuf',
                          'proto': 'application/x-protobuf',
                          'binary': 'application/x-protobuf'},
              'help': 'response encoding, over the `Accept` header',
              'doc_default': 'JSON over REST, binary over gRPC'},
             {'key': 'request_id',
              'type': 'text',
              'pattern': '^[A-Za-z0-9._:-]{1,128}$',
              'help': 'your id for the request, echoed and logged: 1-128 letters, digits, `.`, `_`, `:` or '
                      '`-`',
              'doc_default': 'a new UUID'},
             {'key': 'value_range',
              'type': 'float_pair',
              'help': '`low,high` intensity range of a float `.npy` body',
              'doc_default': "the array's min and max"}],
 'methods': {'cam': {},
             'gradcam': {'layer': {'type': 'text',
                                   'help': 'fx node name or module path of the convolution to explain',
                                   'doc_default': 'the last convolution'}},
             'saliency': {},
             'integrated_gradients': {'steps': {'type': 'int',
                                                'minimum': 1,
                                                'maximum': 4096,
                                                'default': '32',
                                                'help': 'path points'},
                                      'baseline': {'type': 'float',
                                                   'minimum': -1000000,
                                                   'maximum': 1000000,
                                                   'default': '0.0',
                                                   'help': "constant baseline x' in the model's input space"},
                                      'integration': {'type': 'choice',
                                                      'choices': ['gausslegendre', 'riemann_trapezoid'],
                                                      'default': 'gausslegendre',
                                                      'help': 'quadrature rule'},
                                      'internal_batch_size': {'type': 'int',
                                                              'minimum': 0,
                                                              'maximum': 4096,
                                                              'default': '0',
                                                              'help': 'path points per extra forward (0: by '
                                                                      'device)'}},
             'guided_backprop': {},
             'semantic': {'steps': {'type': 'int',
                                    'minimum': 1,
                                    'maximum': 4096,
                                    'default': '32',
                                    'help': "path points of the layer's integrated gradients"},
                          'top': {'type': 'int',
                                  'minimum': 1,
                                  'maximum': 64,
                                  'default': '5',
                                  'help': 'units returned, highest contribution first'}},
             'latent_shift': {'frames': {'type': 'int',
                                         'minimum': 2,
                                         'maximum': 1000,
                                         'default': '10',
                                         'help': 'number of frames K'},
                              'direction': {'type': 'choice',
                                            'choices': ['logit', 'sigmoid'],
                                            'default': 'logit',
                                            'help': "shift along the target's logit or sigmoid"},
                              'map': {'type': 'choice',
                                      'choices': ['max', 'mean', 'minmax', 'int'],
                                      'default': 'max',
                                      'help': 'how the frames become one map'},
                              'search': {'type': 'choice',
                                         'choices': ['fast', 'exhaustive', 'app_c', 'reference_walk'],
                                         'default': 'fast',
                                         'help': 'lambda search'},
                              'max_lambda': {'type': 'float',
                                             'minimum': 0,
                                             'maximum': 1000000,
                                             'default': '1000.0',
                                             'help': 'cap on |lambda|'},
                              'step': {'type': 'float',
                                       'minimum': 0.01,
                                       'maximum': 1000000,
                                       'default': '10.0',
                                       'help': 'grid step of the walk, in sigmoid units'},
                              'batch_size': {'type': 'int',
                                             'minimum': 0,
                                             'maximum': 4096,
                                             'default': '0',
                                             'help': 'decode+classify batch (0: by device)'},
                              'fall': {'type': 'float',
                                       'default': '0.3',
                                       'help': 'fall from p0 that ends the lower search (read as `stop` '
                                               'says)'},
                              'rise': {'type': 'float',
                                       'default': '0.05',
                                       'help': 'rise from p0 that ends the upper search (read as `stop` '
                                               'says)'},
                              'stop': {'type': 'choice',
                                       'choices': ['relative', 'absolute'],
                                       'default': 'relative',
                                       'help': 'fall and rise as fractions of p0, or as probability offsets '
                                               '(the reference code)'}},
             'lrp': {'alpha': {'type': 'float',
                               'default': '1.0',
                               'help': 'positive share (alpha - beta = 1)'},
                     'beta': {'type': 'float', 'default': '0.0', 'help': 'negative share'},
                     'batchnorm': {'type': 'choice',
                                   'choices': ['pass', 'zennit'],
                                   'default': 'pass',
                                   'help': 'relevance through BatchNorm unchanged (the RAP authors), or '
                                           'BatchNorm folded into the conv / a diagonal layer (zennit)'}},
             'rap': {'batchnorm': {'type': 'choice',
                                   'choices': ['pass', 'zennit'],
                                   'default': 'pass',
                                   'help': "relevance through BatchNorm unchanged (the RAP authors' code), "
                                           'or BatchNorm folded into the conv / a diagonal layer (zennit)'}}}}


class ExplainOptions(TypedDict, total=False):
    """The SDK's keyword options (generated from ``protos/options.json``); ``None`` sends nothing."""

    top_k: int | None
    """explain the k most probable findings"""
    heatmap_format: Literal['array', 'png'] | None
    """raw array, or PNG normalized for display"""
    heatmap_dtype: Literal['float16', 'float32'] | None
    """element type of raw arrays"""
    frames: int | None
    """latent shift: number of frames K"""
    latent_shift_map: Literal['max', 'mean', 'minmax', 'int'] | None
    """latent shift: how the frames become one map"""
    direction: Literal['logit', 'sigmoid'] | None
    """latent shift: shift along the target's logit or sigmoid"""
    gif: bool | None
    """latent shift: also send the frames as an animated GIF"""
    steps: int | None
    """integrated gradients: path points"""
    accept: str | None
    """response encoding, over the `Accept` header"""
    request_id: str | None
    """your id for the request, echoed and logged: 1-128 letters, digits, `.`, `_`, `:` or `-`"""
    value_range: tuple[float, float] | str | None
    """`low,high` intensity range of a float `.npy` body"""
    method_options: Mapping[str, Mapping[str, Any]] | None
    """Each method's own options, ``{"gradcam": {"layer": "features.28"}}`` (see :data:`METHOD_OPTIONS`)."""


# </generated>

BOOLEAN_TRUE: tuple[str, ...] = tuple(_TABLE["boolean"]["true"])
BOOLEAN_FALSE: tuple[str, ...] = tuple(_TABLE["boolean"]["false"])
REQUEST_OPTIONS: dict[str, OptionSpec] = {o["key"]: _spec(o["key"], o) for o in _TABLE["options"]}
"""Every request-level option by wire key, in the order of ``protos/options.json``."""
METHOD_OPTIONS: dict[str, dict[str, OptionSpec]] = {
    method: {name: _spec(f"{method}.{name}", fields) for name, fields in options.items()}
    for method, options in _TABLE["methods"].items()
}
"""Every method's own options: method -> option name -> declaration (its ``key`` is ``<method>.<option>``)."""
METHODS: tuple[str, ...] = tuple(METHOD_OPTIONS)
"""The method names the server registers."""
SDK_KEYWORDS: tuple[str, ...] = tuple(key for key, spec in REQUEST_OPTIONS.items() if spec.sdk is None)
"""The options the SDK's ``explain`` / ``stream_explain`` take as keyword arguments."""

__all__ = [
    "BOOLEAN_FALSE",
    "BOOLEAN_TRUE",
    "METHODS",
    "METHOD_OPTIONS",
    "REQUEST_OPTIONS",
    "SDK_KEYWORDS",
    "ExplainOptions",
    "OptionError",
    "OptionSpec",
    "method_option",
    "parse_bool",
]

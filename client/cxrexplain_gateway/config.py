"""The gateway's YAML configuration: the contract hospitals and tests write (docs/gateway.md,
gateway.example.yaml).

Every key is checked when the file is read; a mistake raises :class:`ConfigError` naming the key and what to
write instead, before anything listens. Relative paths (``storage``, ``token_file``, ``password_file``) are
resolved against the configuration file's folder, so a configuration means the same wherever it is started
from.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from cxrexplain_dicom import OUTPUTS

_MISSING: Any = object()
# PS3.5: printable ASCII without backslash, 16 characters at most.
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the key and what to write."""


@dataclass(frozen=True)
class Listen:
    """The node's own address; ``accept_calling`` ``None`` accepts any calling AE title."""

    ae_title: str
    host: str
    port: int
    accept_calling: tuple[str, ...] | None


@dataclass(frozen=True)
class Service:
    """Where the cxrexplain service is and what to ask it for (through the SDK)."""

    url: str
    grpc_target: str
    token_file: Path | None
    model: str
    methods: tuple[str, ...]
    targets: str | tuple[str, ...]
    transport: Literal["rest", "grpc"]
    timeout_s: float
    retry_budget_s: float


@dataclass(frozen=True)
class DimseDestination:
    """Results sent by C-STORE to ``ae_title`` at ``host:port``, from ``calling_ae_title``."""

    ae_title: str
    host: str
    port: int
    calling_ae_title: str
    kind: Literal["dimse"] = "dimse"


@dataclass(frozen=True)
class StowDestination:
    """Results sent by DICOMweb STOW-RS to ``url`` (HTTP basic auth when a username is given)."""

    url: str
    username: str | None
    password_file: Path | None
    kind: Literal["stow"] = "stow"


@dataclass(frozen=True)
class Processing:
    """How many instances are explained at once, and how often a whole instance is tried again."""

    concurrency: int = 2
    retries: int = 3
    retry_delay_s: float = 30.0


@dataclass(frozen=True)
class Metrics:
    host: str
    port: int


@dataclass(frozen=True)
class GatewayConfig:
    listen: Listen
    service: Service
    destination: DimseDestination | StowDestination
    outputs: tuple[str, ...]
    storage: Path
    metrics: Metrics | None
    processing: Processing
    source: Path | None = None  # the file it was read from, for messages


def load_config(path: str | Path) -> GatewayConfig:
    """Read and check a gateway configuration file.

    Raises
    ------
    ConfigError
        The file is missing, not YAML, or a key is missing, unknown or of the wrong kind.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the gateway configuration {path}: {exc.strerror}; "
                          "pass --config with the path of your gateway.yaml") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    return parse_config(data, base=path.resolve().parent, source=path)


def parse_config(data: object, base: Path, source: Path | None = None) -> GatewayConfig:
    """Check an already-parsed configuration; relative paths are taken from ``base``."""
    where = str(source) if source else "the gateway configuration"
    root = _Section(data, "", where)
    listen = root.section("listen")
    service = root.section("service")
    dest = root.section("destination")
    processing = root.section("processing", optional=True)
    metrics = root.section("metrics", optional=True)
    outputs = root.names("outputs", choices=OUTPUTS, default=OUTPUTS, example="[sr, parametric_map]")
    storage = base / root.text("storage", example="var/gateway")
    root.done()

    ae_title = listen.ae_title("ae_title", default="CXREXPLAIN")
    calling = listen.names("accept_calling", default=("ANY",), example="[ANY] or [PACS1, MODALITY2]")
    if "ANY" in calling and len(calling) > 1:
        raise listen.error("accept_calling", "ANY accepts every calling AE title: write [ANY] alone, or a "
                           "list of AE titles without ANY")
    for title in calling:
        listen.check_ae_title("accept_calling", title)
    cfg_listen = Listen(ae_title, listen.text("host", default="0.0.0.0"), listen.port("port", default=11112),
                        None if calling == ("ANY",) else calling)
    listen.done()

    targets: str | tuple[str, ...]
    raw_targets = service.raw("targets", default="positive")
    if raw_targets == "positive":
        targets = "positive"
    else:
        targets = service.names("targets", example="positive, or a list of labels: [Cardiomegaly, Effusion]")
    token_file = service.text("token_file", default=None, example=".run/key_file.json")
    transport = service.text("transport", default="rest", example="rest or grpc")
    if transport not in ("rest", "grpc"):
        raise service.error("transport", f"got {transport!r}; write rest or grpc")
    cfg_service = Service(
        url=service.text("url", example="http://127.0.0.1:8080"),
        grpc_target=service.text("grpc_target", default="127.0.0.1:7070", example="127.0.0.1:7070"),
        token_file=base / token_file if token_file else None,
        model=service.text("model", example="cxr-densenet"),
        methods=service.names("methods", default=("cam",), example="[cam, rap, latent_shift]"),
        targets=targets,
        transport="grpc" if transport == "grpc" else "rest",
        timeout_s=service.number("timeout_s", default=120.0),
        retry_budget_s=service.number("retry_budget_s", default=60.0, minimum=0.0),
    )
    service.done()

    kind = dest.text("kind", example="dimse or stow")
    destination: DimseDestination | StowDestination
    if kind == "dimse":
        destination = DimseDestination(dest.ae_title("ae_title"), dest.text("host", example="127.0.0.1"),
                                       dest.port("port"), dest.ae_title("calling_ae_title", default=ae_title))
    elif kind == "stow":
        password = dest.text("password_file", default=None, example="secrets/pacs-password")
        destination = StowDestination(dest.text("url", example="http://127.0.0.1:8042/dicom-web"),
                                      dest.text("username", default=None, example="gateway"),
                                      base / password if password else None)
        if (destination.username is None) != (destination.password_file is None):
            raise dest.error("username", "give both username and password_file (HTTP basic auth), or neither")
    else:
        raise dest.error("kind", f"got {kind!r}; write dimse (C-STORE) or stow (DICOMweb STOW-RS)")
    dest.done()

    cfg_processing = Processing(
        concurrency=processing.integer("concurrency", default=Processing.concurrency, minimum=1),
        retries=processing.integer("retries", default=Processing.retries, minimum=0),
        retry_delay_s=processing.number("retry_delay_s", default=Processing.retry_delay_s, minimum=0.0),
    )
    processing.done()
    cfg_metrics = None
    if metrics.present:
        cfg_metrics = Metrics(metrics.text("host", default="127.0.0.1"), metrics.port("port", default=8083))
        metrics.done()
    return GatewayConfig(cfg_listen, cfg_service, destination, outputs, storage, cfg_metrics, cfg_processing,
                         source)


class _Section:
    """One mapping of the file: typed reads that name the key on error, and a check for unknown keys."""

    def __init__(self, data: object, prefix: str, where: str) -> None:
        self.prefix, self.where = prefix, where
        self.present = data is not None
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            name = prefix.rstrip(".") or "the top level"
            raise ConfigError(f"{where}: {name} must be a mapping of keys (key: value), "
                              f"got {type(data).__name__}")
        self.data = dict(data)
        self.read: set[str] = set()

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.where}: {self.prefix}{key}: {message}")

    def raw(self, key: str, default: Any = _MISSING, example: str = "") -> Any:
        self.read.add(key)
        if key not in self.data or self.data[key] is None:
            if default is _MISSING:
                hint = f", e.g. {key}: {example}" if example else ""
                raise self.error(key, f"missing; add it{hint}")
            return default
        return self.data[key]

    def section(self, key: str, optional: bool = False) -> _Section:
        value = self.raw(key, default=None if optional else _MISSING,
                         example="{...} (see gateway.example.yaml)")
        return _Section(value, f"{self.prefix}{key}.", self.where)

    def text(self, key: str, default: Any = _MISSING, example: str = "") -> Any:
        value = self.raw(key, default, example)
        if value is default:
            return value
        if not isinstance(value, str | int | float) or isinstance(value, bool) or str(value).strip() == "":
            hint = f"; e.g. {key}: {example}" if example else ""
            raise self.error(key, f"expected text, got {value!r}{hint}")
        return str(value)

    def number(self, key: str, default: float, minimum: float = 1e-9) -> float:
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
            raise self.error(key, f"expected a number of seconds >= {minimum:g}, got {value!r}")
        return float(value)

    def integer(self, key: str, default: int, minimum: int) -> int:
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(key, f"expected a whole number >= {minimum}, got {value!r}")
        return value

    def port(self, key: str, default: Any = _MISSING) -> int:
        value = self.raw(key, default, example="11112")
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            raise self.error(key, f"expected a TCP port number from 1 to 65535, got {value!r}")
        return value

    def ae_title(self, key: str, default: Any = _MISSING) -> str:
        value = self.text(key, default, example="ORTHANC")
        self.check_ae_title(key, value)
        return str(value)

    def check_ae_title(self, key: str, value: str) -> None:
        if not _AE_TITLE.match(value) or not value.strip():
            raise self.error(key, f"{value!r} is not an AE title: 1 to 16 printable ASCII characters, "
                                  "no backslash")

    def names(self, key: str, choices: tuple[str, ...] | None = None, default: Any = _MISSING,
              example: str = "") -> tuple[str, ...]:
        value = self.raw(key, default, example)
        if isinstance(value, str):
            value = [value]
        if (not isinstance(value, list | tuple) or not value
                or not all(isinstance(v, str) and v.strip() for v in value)):
            raise self.error(key, f"expected a list of names, got {value!r}" + (f"; e.g. {key}: {example}"
                                                                                 if example else ""))
        if choices is not None:
            unknown = [v for v in value if v not in choices]
            if unknown:
                raise self.error(key, f"unknown {unknown}: choose from {list(choices)}")
        return tuple(value)

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.read)
        if unknown:
            raise self.error(unknown[0], f"unknown key; the keys here are {sorted(self.read)} "
                                         "(docs/gateway.md lists them)")

"""``cxrexplain``: the command line of the client SDK.

Examples::

    cxrexplain health --token-file key_file.json
    cxrexplain models
    cxrexplain describe densenet
    cxrexplain predict cxr.png --model densenet
    cxrexplain explain cxr.png --model densenet --methods cam,rap,latent_shift --targets Cardiomegaly \
        --out out/
    cxrexplain explain cxr.png --model densenet --methods gradcam,latent_shift --gif --frames 6 \
        --option gradcam.layer=features.denseblock4 --option latent_shift.search=exhaustive

``explain`` has one flag per request option of ``protos/options.json`` (``--top-k``, ``--gif``, ``--steps``,
``--value-range``, ...) and ``--option METHOD.OPTION=VALUE`` for each method's own options.

The token comes from ``--token``, ``--token-file`` (TorchServe's key_file.json) or ``CXREXPLAIN_TOKEN``.
Exit codes: 0 ok, 2 usage or invalid input, 3 unauthorized, 4 model not found, 5 unavailable, 6 timeout,
1 other.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from . import __version__
from ._core import DEFAULT_GRPC_MANAGEMENT_TARGET, DEFAULT_GRPC_TARGET, DEFAULT_MANAGEMENT_URL, DEFAULT_URL
from ._proto import options_schema as schema
from .client import ExplainClient
from .errors import (
    CxrExplainClientError,
    DeadlineExceeded,
    InvalidInput,
    ModelNotFound,
    ServerUnavailable,
    Unauthorized,
)
from .results import Explanation

EXIT_CODES: tuple[tuple[type[CxrExplainClientError], int], ...] = (
    (InvalidInput, 2),
    (Unauthorized, 3),
    (ModelNotFound, 4),
    (ServerUnavailable, 5),
    (DeadlineExceeded, 6),
)


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


_FLAG_TYPES: dict[str, Any] = {"int": int, "float": float}


def _add_option_flags(group: argparse._ArgumentGroup) -> None:
    """One flag per SDK keyword option of the schema, and ``--option`` for the methods' own options."""
    for key in schema.SDK_KEYWORDS:
        spec = schema.REQUEST_OPTIONS[key]
        flag = "--" + key.replace("_", "-")
        text = spec.help.replace("%", "%%")
        if spec.type == "bool":
            group.add_argument(flag, dest=key, action=argparse.BooleanOptionalAction, help=text)
        elif spec.type == "choice":
            group.add_argument(flag, dest=key, choices=spec.choices, help=text)
        else:  # everything else is checked by the SDK, with a message naming the option
            group.add_argument(flag, dest=key, type=_FLAG_TYPES.get(spec.type, str), help=text)
    known = ", ".join(spec.key for options in schema.METHOD_OPTIONS.values() for spec in options.values())
    group.add_argument(
        "--option",
        dest="method_options",
        action="append",
        default=[],
        metavar="METHOD.OPTION=VALUE",
        help=f"a method's own option, repeatable; one of: {known}",
    )


def _method_options(pairs: Sequence[str]) -> dict[str, dict[str, str]]:
    """``["gradcam.layer=features.28"]`` -> ``{"gradcam": {"layer": "features.28"}}`` (checked later)."""
    out: dict[str, dict[str, str]] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        method, dot, option = key.strip().partition(".")
        if not sep or not dot or not method or not option:
            raise InvalidInput(f"--option takes METHOD.OPTION=VALUE, for example gradcam.layer=features.28; "
                               f"got {pair!r}")
        out.setdefault(method, {})[option] = value
    return out


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    conn = common.add_argument_group("connection")
    conn.add_argument("--url", default=DEFAULT_URL, help="inference REST address (default %(default)s)")
    conn.add_argument("--grpc-target", default=DEFAULT_GRPC_TARGET, help="inference gRPC host:port")
    conn.add_argument("--management-url", default=DEFAULT_MANAGEMENT_URL, help="management REST address")
    conn.add_argument("--grpc-management-target", default=DEFAULT_GRPC_MANAGEMENT_TARGET)
    conn.add_argument("--transport", choices=("rest", "grpc"), default="rest")
    conn.add_argument("--token", help="bearer token (default: $CXREXPLAIN_TOKEN)")
    conn.add_argument(
        "--token-file", help="TorchServe key_file.json (its inference/management keys are used)"
    )
    conn.add_argument("--timeout", type=float, default=120.0, help="seconds per call (default %(default)s)")
    conn.add_argument(
        "--retries", type=int, default=None, help="most retries of a lost call (default: within 60 s)"
    )
    conn.add_argument("-v", "--verbose", action="store_true", help="log requests and retries")

    parser = argparse.ArgumentParser(
        prog="cxrexplain",
        description="Chest X-ray findings and explanations from a cxrexplain server "
        "(not for diagnostic use). Connection options go after the command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("health", parents=[common], help="is the server up?")
    sub.add_parser("models", parents=[common], help="list registered models (management API)")
    p = sub.add_parser("describe", parents=[common], help="labels, operating points, methods of a model")
    p.add_argument("model")
    p.add_argument("--model-version")

    p = sub.add_parser("predict", parents=[common], help="findings for an image")
    p.add_argument("image")
    p.add_argument("--model", required=True)
    p.add_argument("--model-version")
    p.add_argument("--top-k", type=int)

    p = sub.add_parser(
        "explain", parents=[common], help="findings and explanations; writes overlays, GIFs, JSON"
    )
    p.add_argument("image")
    p.add_argument("--model", required=True)
    p.add_argument("--model-version")
    p.add_argument("--methods", default="cam", help="comma-separated (cam,gradcam,lrp,rap,latent_shift,...)")
    p.add_argument("--targets", default="positive", help="comma-separated labels or indices, or 'positive'")
    _add_option_flags(p.add_argument_group("request options (protos/options.json)"))
    p.add_argument("--stream", action="store_true", help="stream parts over gRPC as they are ready")
    p.add_argument("--out", default="cxrexplain-out", help="output folder (default %(default)s)")
    p.add_argument("--alpha", type=float, default=0.6, help="overlay opacity at the heatmap maximum")
    return parser


def _client(args: argparse.Namespace) -> ExplainClient:
    return ExplainClient(
        args.url,
        args.grpc_target,
        token=args.token,
        token_file=args.token_file,
        management_url=args.management_url,
        grpc_management_target=args.grpc_management_target,
        timeout=args.timeout,
        retries=args.retries,
        transport=args.transport,
    )


def _print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=False) + "\n")


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def write_outputs(ex: Explanation, image: str, out: Path, alpha: float = 0.6) -> list[Path]:
    """Write each target's overlays (PNG), the latent-shift GIF and a JSON summary into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for target, res in ex.results.items():
        for method in res.heatmaps:
            path = out / f"{_safe(target)}_{_safe(method)}.png"
            res.overlay(method, image, alpha=alpha).save(path)
            written.append(path)
        if res.latent_shift is not None and len(res.latent_shift.frames):
            written.append(res.latent_shift.save_gif(out / f"{_safe(target)}_latent_shift.gif"))
    summary = out / "summary.json"
    summary.write_text(json.dumps(ex.summary(), indent=2) + "\n", encoding="utf-8")
    written.append(summary)
    return written


def _run(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.command == "health":
            health = client.health()
            _print_json({"status": health.status})
            return 0 if health.healthy else 5
        if args.command == "models":
            _print_json([asdict(m) for m in client.models()])
            return 0
        if args.command == "describe":
            _print_json(asdict(client.describe(args.model, version=args.model_version)))
            return 0
        if args.command == "predict":
            ex = client.predict(args.image, args.model, version=args.model_version, top_k=args.top_k)
            _print_json(ex.summary())
            return 0
        options: dict[str, Any] = {key: getattr(args, key) for key in schema.SDK_KEYWORDS}
        options.update(version=args.model_version, method_options=_method_options(args.method_options))
        targets: Any = _split(args.targets)
        if targets == ["positive"]:
            targets = "positive"
        methods = _split(args.methods) or ["cam"]
        if args.stream:
            final = None
            for part in client.stream_explain(args.image, args.model, methods, targets, **options):
                logging.getLogger("cxrexplain").info("received part %s", part.kind)
                final = part.explanation
            if final is None:
                raise CxrExplainClientError("the server streamed no parts")
            ex = final
        else:
            ex = client.explain(args.image, args.model, methods, targets, transport=args.transport, **options)
        written = write_outputs(ex, args.image, Path(args.out), alpha=args.alpha)
        _print_json({**ex.summary(), "files": [str(p) for p in written]})
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cxrexplain`` command; returns the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return _run(args)
    except CxrExplainClientError as exc:
        sys.stderr.write(f"cxrexplain: {type(exc).__name__}: {exc}\n")
        for cls, code in EXIT_CODES:
            if isinstance(exc, cls):
                return code
        return 1


if __name__ == "__main__":
    raise SystemExit(main())

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
    cxrexplain explain studies/ more.dcm --model densenet --methods cam,rap,latent_shift --concurrency 4 \
        --out out/ --report

One file: its files go straight into ``--out`` and the summary is printed as JSON (errors exit with their
code). Several paths or a folder (walked recursively: PNG, JPEG, DICOM by extension or preamble): each image
gets ``--out/<name>/`` (DICOM: its SOP Instance UID, never the file name; PNG/JPEG: the file stem, made
unique), a progress bar goes to stderr, a table (file, findings, status) to stdout, and the exit code is
non-zero when an input failed (stderr names each). ``--report`` adds ``--out/<study>.html``.

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

from . import __version__, batch, codec
from ._core import DEFAULT_GRPC_MANAGEMENT_TARGET, DEFAULT_GRPC_TARGET, DEFAULT_MANAGEMENT_URL, DEFAULT_URL
from ._proto import options_schema as schema
from .client import ExplainClient
from .errors import (
    CxrExplainClientError,
    DeadlineExceeded,
    InvalidInput,
    ModelNotFound,
    OutputNotWritable,
    ServerUnavailable,
    Unauthorized,
)
from .inputs import InputImage, collect
from .report import write_reports
from .results import MAX_RECONSTRUCTION_GAP, Explanation

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
        "explain", parents=[common], help="findings and explanations; writes overlays, arrays, GIFs, JSON"
    )
    p.add_argument("images", nargs="+", metavar="PATH", help="image files and folders (PNG, JPEG, DICOM)")
    p.add_argument("--model", required=True)
    p.add_argument("--model-version")
    p.add_argument("--methods", default="cam", help="comma-separated (cam,gradcam,lrp,rap,latent_shift,...)")
    p.add_argument("--targets", default="positive", help="comma-separated labels or indices, or 'positive'")
    _add_option_flags(p.add_argument_group("request options (protos/options.json)"))
    p.add_argument("--stream", action="store_true", help="stream parts over gRPC as they are ready")
    p.add_argument("--out", default="cxrexplain-out", help="output folder (default %(default)s)")
    p.add_argument("--alpha", type=float, default=0.6, help="overlay opacity at the heatmap maximum")
    p.add_argument("--concurrency", type=int, default=4, help="most images in flight (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--report", action="store_true", help="write one HTML page per study into --out")
    p.add_argument(
        "--max-reconstruction-gap",
        type=float,
        default=MAX_RECONSTRUCTION_GAP,
        help="the report warns above this |f(x) - f(D(E(x)))| (default %(default)s)",
    )
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


def write_outputs(ex: Explanation, image: str, out: Path, alpha: float = 0.6) -> list[Path]:
    """Write each target's overlays (PNG), arrays (.npy), the latent-shift GIF and a JSON summary into ``out``
    (:meth:`Explanation.save`)."""
    return ex.save(out, image, alpha=alpha)


def _explain_call(client: ExplainClient, args: argparse.Namespace) -> Any:
    """Path -> Explanation with the command line's model, methods, targets and options (unary or streamed)."""
    options: dict[str, Any] = {key: getattr(args, key) for key in schema.SDK_KEYWORDS}
    options.update(method_options=_method_options(args.method_options))
    targets: Any = _split(args.targets)
    if targets == ["positive"]:
        targets = "positive"
    methods = _split(args.methods) or ["cam"]
    # Checked once, before any file is read: a bad option fails the run, not every image of it.
    codec.build_options(methods=methods, targets=targets, **options)
    options.update(version=args.model_version)

    def explain(path: Path) -> Explanation:
        if not args.stream:
            return client.explain(
                str(path), args.model, methods, targets, transport=args.transport, **options
            )
        final = None
        for part in client.stream_explain(str(path), args.model, methods, targets, **options):
            logging.getLogger("cxrexplain").info("received part %s", part.kind)
            final = part.explanation
        if final is None:
            raise CxrExplainClientError("the server streamed no parts")
        return final

    return explain


def _exit_code(exc: BaseException) -> int:
    for cls, code in EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return 1


def _explain_one(args: argparse.Namespace, item: InputImage, explain: Any) -> int:
    """One file: files straight into ``--out``, the summary as JSON on stdout, errors raised (exit codes)."""
    if item.error:
        raise InvalidInput(f"{item.path}: {item.error}")
    out = Path(args.out)
    ex = explain(item.path)
    written = write_outputs(ex, str(item.path), out, alpha=args.alpha)
    if args.report:
        written += write_reports([batch.Outcome(item, out, ex, written)], out, args.max_reconstruction_gap)
    _print_json({**ex.summary(), "files": [str(p) for p in written]})
    return 0


def _explain_many(args: argparse.Namespace, items: list[InputImage], explain: Any) -> int:
    """Several images: one folder each, a progress bar, a table, and a non-zero exit naming what failed."""
    if args.concurrency < 1:
        raise InvalidInput(f"--concurrency takes a number of images >= 1, got {args.concurrency}")
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputNotWritable(f"cannot create {out}: {exc.strerror}; pass an --out folder you can write to",
                                path=str(out)) from exc
    progress = not args.quiet and sys.stderr.isatty()
    outcomes = batch.run(items, [out / item.name for item in items], explain, concurrency=args.concurrency,
                         alpha=args.alpha, progress=progress)
    batch.print_table(outcomes, sys.stdout)
    if args.report:
        pages = write_reports(outcomes, out, args.max_reconstruction_gap)
        sys.stdout.write(f"{len(pages)} report page(s) in {out}\n")
    failed = [o for o in outcomes if not o.ok]
    if not items:
        sys.stderr.write("cxrexplain: no PNG, JPEG or DICOM file found in the paths given\n")
        return 2
    if not failed:
        return 0
    sys.stderr.write(f"cxrexplain: {len(failed)} of {len(outcomes)} inputs failed:\n")
    for o in failed:
        sys.stderr.write(f"  {o.item.path}: {o.reason}\n")
    codes = {_exit_code(o.error) for o in failed if o.error is not None}
    return codes.pop() if len(codes) == 1 else 1


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
        explain = _explain_call(client, args)
        items = collect(args.images)
        if len(args.images) == 1 and not Path(args.images[0]).is_dir():
            return _explain_one(args, items[0], explain)
        return _explain_many(args, items, explain)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cxrexplain`` command; returns the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return _run(args)
    except CxrExplainClientError as exc:
        sys.stderr.write(f"cxrexplain: {type(exc).__name__}: {exc}\n")
        return _exit_code(exc)


if __name__ == "__main__":
    raise SystemExit(main())

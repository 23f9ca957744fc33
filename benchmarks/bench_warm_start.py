"""Start warm: a fresh worker's first request of each kind over the median of the warm ones, with and without
the handler's warm-up (issue #10: at most 2x; ``cxrexplain_serving.warmup``).

``python -m benchmarks.bench_warm_start [--quick] [--arch densenet121 resnet50] [--kinds predict cam lrp ...]``

Per architecture (random weights, torchvision's 224 px spec, ONNX predictions path, batch size 1): two
archives of the same files, ``<arch>-warm`` (the default) and ``<arch>-cold`` (recipe ``warm_up: false``),
served by one real TorchServe. For each archive and each request kind: the worker is replaced by a fresh one
(the management API scales the model to 0 workers and back to 1, synchronously; the time to READY is the
worker's start time, warm-up included), the kind's first request is timed end to end over REST, then
``--warm`` more; the figure is first / median(warm). Kinds run in separate fresh workers so that one kind's
first use does not warm the next.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import torch
import yaml

import cxrexplain

from . import common
from .bench_serving import explain_request, png_image

log = logging.getLogger("benchmarks.warm_start")
TARGET = 2.0
KINDS = ("predict", "cam", "gradcam", "lrp", "rap", "saliency", "guided_backprop", "integrated_gradients")


def build_store(root: Path, archs: list[str], threads: int) -> Path:
    """Weights saved like a user's, then the real exporter: a ``-warm`` and a ``-cold`` archive per arch."""
    from export import cli as export_cli

    models = []
    for arch in archs:
        torch.manual_seed(0)
        cxrexplain.save_classifier(cxrexplain.load_classifier(arch), root / "weights" / f"{arch}.pt")
        fields = {"kind": "classifier", "architecture": arch, "weights": f"weights/{arch}.pt", "version": "1.0",
                  "onnx": True, "torch_threads": threads, "batch_size": 1, "max_batch_delay_ms": 1}
        models += [{"name": f"{arch}-warm", **fields}, {"name": f"{arch}-cold", **fields, "warm_up": False}]
    (root / "recipe.yaml").write_text(yaml.safe_dump({"models": models}))
    store = root / "model_store"
    if export_cli.main([str(root / "recipe.yaml"), "--store", str(store)]) != 0:
        raise RuntimeError("the exporter failed; see its log above")
    return store


def fresh_worker(server: Any, model: str) -> float:
    """Replace ``model``'s worker by a new one; returns the seconds until the new one is READY."""
    url = f"{server.management_url}/models/{model}"
    headers = server.headers("management")
    r = httpx.put(url, params={"min_worker": 0, "max_worker": 0, "synchronous": "true"}, headers=headers,
                  timeout=120)
    r.raise_for_status()
    started = time.perf_counter()
    r = httpx.put(url, params={"min_worker": 1, "max_worker": 1, "synchronous": "true"}, headers=headers,
                  timeout=600)
    r.raise_for_status()
    while not any(w["status"] == "READY" for w in httpx.get(url, headers=headers, timeout=10).json()[0]["workers"]):
        time.sleep(0.05)
    return time.perf_counter() - started


def run(args: argparse.Namespace) -> dict[str, Any]:
    from export.launcher import Ports, TorchServe

    common.set_threads(args.threads)
    results: dict[str, Any] = {"machine": common.machine(), "args": vars(args), "rows": []}
    image = png_image()
    with tempfile.TemporaryDirectory(prefix="cxrexplain-bench-warm-") as tmp_name:
        tmp = Path(tmp_name)
        store = build_store(tmp, args.arch, args.threads)
        with TorchServe(store, tmp / "run", ports=Ports.free()) as server, httpx.Client() as client:
            for arch in args.arch:
                for kind in args.kinds:
                    for variant in ("warm", "cold"):
                        model = f"{arch}-{variant}"
                        start_s = fresh_worker(server, model)
                        first = explain_request(client, server, model, image, kind=kind)
                        warm = statistics.median(explain_request(client, server, model, image, kind=kind)
                                                 for _ in range(args.warm))
                        log.info("%s %s: first %.2f s, warm %.2f s, worker start %.1f s", model, kind, first, warm,
                                 start_s)
                        results["rows"].append({"arch": arch, "kind": kind, "warm_up": variant == "warm",
                                                "first_over_warm": first / warm, "first_ms": first * 1000,
                                                "warm_ms": warm * 1000, "worker_start_s": start_s})
    return results


def markdown(results: dict[str, Any], command: str) -> str:
    out = [common.header("Start warm: first request of a fresh worker over a warm one", command, results["machine"])]
    out.append(f"\nFirst request / median of {results['args']['warm']} warm requests of the same kind, each kind "
               f"in a fresh worker (target <= {TARGET}x with warm-up); worker start = scale-up to READY:\n")
    by_key = {(r["arch"], r["kind"], r["warm_up"]): r for r in results["rows"]}
    rows = []
    for arch in results["args"]["arch"]:
        for kind in results["args"]["kinds"]:
            warm, cold = by_key[(arch, kind, True)], by_key[(arch, kind, False)]
            met = "met" if warm["first_over_warm"] <= TARGET else "NOT met"
            rows.append([arch, kind, f"**{warm['first_over_warm']:.2f}x** {met}", f"{cold['first_over_warm']:.2f}x",
                         round(warm["warm_ms"]), f"{warm['worker_start_s']:.1f}", f"{cold['worker_start_s']:.1f}"])
    out.append(common.table(["model", "kind", "first / warm, warm-up on", "warm-up off", "warm ms (for scale)",
                             "worker start s, on", "off"], rows))
    return "\n".join(out) + "\n"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_warm_start",
                                description=(__doc__ or "").split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: ResNet-18, predict and cam, 2 warm requests")
    p.add_argument("--arch", nargs="+", default=["densenet121", "resnet50"])
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    p.add_argument("--warm", type=int, default=5, help="warm requests per kind after the first")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker (recipe torch_threads)")
    p.add_argument("--json", help="also write every figure here")
    p.add_argument("--max-load", type=float, default=0.0,
                   help="wait (up to 30 min) for the 1-min load average to fall below this before starting")
    args = p.parse_args(argv)
    if args.quick:
        args.arch, args.kinds, args.warm = ["resnet18"], ["predict", "cam"], 2
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the raw figures (the Markdown goes to stdout)."""
    return common.report(parse(argv), run, markdown, quiet=common.SERVER_CHATTER)


if __name__ == "__main__":
    main()

"""Soak: the demo archives under 4 and then 16 SDK clients for 10 minutes: latency per kind, errors, requests per
second, and the workers' resident-memory growth (issue #10; goal: 0 errors, growth at most 5 %).

``python -m benchmarks.soak [--store model_store] [--minutes 10] [--clients 4 16] [--warmup-s 60] [--json out]``
(``make soak``; ``make soak SOAK_MINUTES=2`` for a shorter one).

A TorchServe is started on free ports with its state in ``--run-dir`` (never the demo's ``.run``), serving
every archive of ``--store``; the clients are :mod:`benchmarks.load`'s (the load test's own), on a 512 px
phantom radiograph, explaining the model's first label. A warm-up at the largest client count comes first and is
not counted: the workers' memory grows to its working size there (batches, the allocator's caches). Then each
client count runs for an equal share of the rest. Resident memory of each worker is read after the warm-up, every
``--sample-s`` seconds, and at the end; the growth is end over after-warm-up. Exits 1 when a call failed, a
worker was replaced, or a worker grew by more than ``--max-growth``.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from PIL import Image

from cxrexplain_lab.phantom import make_phantom
from export.launcher import Ports, TorchServe

from . import common
from .load import LoadResult, Server, load, worker_rss

MODEL = "cxr-densenet"


def phantom_png(size: int = 512, seed: int = 910_000) -> bytes:
    """A phantom chest radiograph with a finding, as an 8-bit PNG of ``size`` pixels (decoded and resized by the
    server like a real upload)."""
    sample = make_phantom(seed, size=size, findings=["Cardiomegaly"])
    buf = io.BytesIO()
    Image.fromarray((sample.image * 255).astype("uint8")).save(buf, format="PNG")
    return buf.getvalue()


class RssLog:
    """Every worker's RSS every ``interval_s`` seconds on a background thread: (seconds since start, readings)."""

    def __init__(self, ts: TorchServe, interval_s: float) -> None:
        self.ts, self.interval_s = ts, interval_s
        self.readings: list[dict[tuple[str, int], float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.readings.append(worker_rss(self.ts.management_url, self.ts.headers("management")))

    def __enter__(self) -> RssLog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run(args: argparse.Namespace) -> dict[str, Any]:
    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="cxrexplain-soak-"))
    image = phantom_png()
    total_s = args.minutes * 60.0
    phase_s = (total_s - args.warmup_s) / len(args.clients)
    if phase_s <= 0:
        raise SystemExit(f"--minutes {args.minutes} leaves no time after the {args.warmup_s} s warm-up: "
                         "give more minutes or a shorter --warmup-s")
    with TorchServe(Path(args.store), run_dir, ports=Ports.free()) as ts:
        server = Server(ts.url, ts.grpc_target, ts.run_dir / "key_file.json", args.model)
        mgmt = ts.headers("management")
        started = worker_rss(ts.management_url, mgmt)
        warmup = load(server, image, max(args.clients), args.warmup_s, seed=99)
        warm = worker_rss(ts.management_url, mgmt)
        with RssLog(ts, args.sample_s) as rss_log:
            phases = [load(server, image, clients, phase_s, seed=i) for i, clients in enumerate(args.clients)]
        end = worker_rss(ts.management_url, mgmt)
    workers = []
    for key in sorted(set(warm) | set(end)):
        seen = [r[key] for r in rss_log.readings if key in r] + [v for v in (warm.get(key), end.get(key)) if v]
        workers.append({"model": key[0], "pid": key[1], "start_mb": started.get(key, math.nan),
                        "warm_mb": warm.get(key, math.nan), "end_mb": end.get(key, math.nan),
                        "max_mb": max(seen, default=math.nan),
                        "growth_pct": 100 * (end.get(key, math.nan) / warm.get(key, math.nan) - 1)})
    return {"machine": common.machine(), "args": vars(args), "warmup": summary(warmup),
            "phases": [summary(p) for p in phases], "workers": workers,
            "replaced_workers": sorted(set(warm) ^ set(end))}


def summary(result: LoadResult) -> dict[str, Any]:
    return {"clients": result.clients, "seconds": result.seconds, "calls": len(result.samples),
            "requests_per_s": result.requests_per_s, "errors": result.errors, "retries": result.retries,
            "rows": result.rows()}


def markdown(results: dict[str, Any], command: str) -> str:
    out = [common.header("Soak: 4 and 16 SDK clients on the demo archives", command, results["machine"])]
    warm = results["warmup"]
    out.append(f"Warm-up (not counted): {warm['clients']} clients, {warm['seconds']:.0f} s, {warm['calls']} calls, "
               f"{len(warm['errors'])} errors.\n")
    for phase in results["phases"]:
        out.append(f"**{phase['clients']} clients**, {phase['seconds']:.0f} s: {phase['calls']} calls, "
                   f"{phase['requests_per_s']:.1f} requests/s, {len(phase['errors'])} errors, "
                   f"{len(phase['retries'])} SDK retries\n")
        out.append(common.table(["kind", "n", "p50 ms", "p95 ms", "p99 ms"], phase["rows"]) + "\n")
        out += [f"- error: {e}" for e in phase["errors"][:10]]
    out.append("Worker resident memory (MiB; growth = end over after the warm-up):\n")
    out.append(common.table(["model", "pid", "start", "after warm-up", "end", "max sampled", "growth %"],
                            [[w["model"], w["pid"], w["start_mb"], w["warm_mb"], w["end_mb"], w["max_mb"],
                              w["growth_pct"]] for w in results["workers"]]) + "\n")
    if results["replaced_workers"]:
        out.append(f"Workers replaced during the soak: {results['replaced_workers']}\n")
    return "\n".join(out) + "\n"


def failures(results: dict[str, Any], max_growth: float) -> list[str]:
    """What misses the soak's goals: failed calls, replaced workers, memory growth above ``max_growth`` %."""
    found = [f"{len(p['errors'])} failed calls with {p['clients']} clients" for p in results["phases"] if p["errors"]]
    if results["replaced_workers"]:
        found.append(f"workers replaced: {results['replaced_workers']}")
    found += [f"{w['model']} worker {w['pid']} grew {w['growth_pct']:.1f} % (goal <= {max_growth} %)"
              for w in results["workers"] if not w["growth_pct"] <= max_growth]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--store", default=str(common.REPO / "model_store"),
                        help="model store with the demo archives (make archives)")
    parser.add_argument("--model", default=MODEL, help="the classifier to call (with its autoencoder)")
    parser.add_argument("--run-dir", default=None, help="TorchServe's state (default: a fresh temporary folder)")
    parser.add_argument("--minutes", type=float, default=10.0, help="whole soak, warm-up included")
    parser.add_argument("--clients", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--warmup-s", type=float, default=60.0)
    parser.add_argument("--sample-s", type=float, default=15.0, help="seconds between RSS readings")
    parser.add_argument("--max-growth", type=float, default=5.0, help="goal for RSS growth, percent")
    parser.add_argument("--max-load", type=float, default=None, help="wait for a 1-min load average below this")
    parser.add_argument("--json", default=None, help="also write every figure here")
    args = parser.parse_args(argv)
    if not list(Path(args.store).glob("*.mar")):
        raise SystemExit(f"no archives in {args.store}: build the demo ones with `make archives`, or pass --store")
    results = common.report(args, run, markdown, quiet=common.SERVER_CHATTER)
    problems = failures(results, args.max_growth)
    for problem in problems:
        print(f"soak goal missed: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

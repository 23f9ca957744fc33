"""Shared plumbing for the benchmarks: threads, interleaved timing, peak memory, machine facts, tables.

Every benchmark reports *ratios measured in one run* (a method's time over one plain forward pass of the same
model in the same process, ours over a peer's), never absolute seconds: the machines are shared and noisy, so
absolute times move from run to run while ratios measured side by side, interleaved, stay put.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cxrexplain import keep_freed_memory

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("benchmarks")


def set_threads(threads: int) -> None:
    """Fix torch's intra-op threads (inter-op: 1) so every measurement of a run uses the same setting, and
    keep freed memory in the process as a serving worker does (:func:`cxrexplain.keep_freed_memory`)."""
    keep_freed_memory()
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set once in this process
        pass


def machine() -> dict[str, Any]:
    """What the figures were measured on: CPU, cores, load, versions, date, commit."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
        commit += " (+ uncommitted changes)" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="minutes"),
        "commit": commit,
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "loadavg_1min": round(os.getloadavg()[0], 2),
    }


def wait_for_quiet(max_load: float, timeout_s: float) -> float:
    """Wait (up to ``timeout_s``) until the 1-minute load average is below ``max_load``; returns the load."""
    deadline = time.monotonic() + timeout_s
    load = os.getloadavg()[0]
    while load >= max_load and time.monotonic() < deadline:
        log.info("load average %.2f >= %.2f: waiting", load, max_load)
        time.sleep(15)
        load = os.getloadavg()[0]
    return load


@dataclass
class Timings:
    """Seconds per callable, one list each, from interleaved rounds."""

    seconds: dict[str, list[float]] = field(default_factory=dict)
    loads: list[float] = field(default_factory=list)

    def median(self, name: str) -> float:
        return statistics.median(self.seconds[name])

    def ratio(self, name: str, unit: str) -> float:
        return self.median(name) / self.median(unit)

    def spread(self, name: str) -> float:
        """(max - min) / median: how noisy this callable's repeats were."""
        values = self.seconds[name]
        return (max(values) - min(values)) / statistics.median(values) if len(values) > 1 else 0.0


def interleaved(
    fns: Mapping[str, Callable[[], Any]],
    repeats: int,
    warmup: int = 1,
    slow_s: float = float("inf"),
    slow_repeats: int = 3,
) -> Timings:
    """Time every callable ``repeats`` times, round-robin with a rotated order each round, so load drifts hit
    all of them alike. A callable whose warm-up took longer than ``slow_s`` seconds runs only in the first
    ``slow_repeats`` rounds, and its warm-up counts as its first sample (median of fewer samples, but the run
    stays affordable; warm-up effects are small next to a call that long)."""
    names = list(fns)
    out = Timings({name: [] for name in names})
    warm: dict[str, float] = {}
    for name in names:
        start = time.perf_counter()
        for _ in range(warmup):
            fns[name]()
        warm[name] = (time.perf_counter() - start) / max(warmup, 1)
        if warm[name] > slow_s:
            out.seconds[name].append(warm[name])
    for round_ in range(repeats):
        out.loads.append(os.getloadavg()[0])
        order = names[round_ % len(names):] + names[:round_ % len(names)]
        for name in order:
            if warm[name] > slow_s and round_ >= slow_repeats - 1:
                continue
            start = time.perf_counter()
            fns[name]()
            out.seconds[name].append(time.perf_counter() - start)
    return out


def peak_rss_mb() -> float:
    """This process's peak RSS (``VmHWM``; ``getrusage`` ``ru_maxrss`` where /proc is missing), MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0: ``5`` to ``/proc/self/clear_refs``),
    so :func:`peak_rss_mb` then reports the peak of what follows. False when the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def current_rss_mb(pid: int | None = None) -> float:
    """Current RSS of a process (this one by default), via psutil."""
    import psutil

    return psutil.Process(pid or os.getpid()).memory_info().rss / 2**20


class RssSampler:
    """Sample a process's RSS in a background thread; ``peak`` is the largest seen (MiB)."""

    def __init__(self, pid: int, interval_s: float = 0.05):
        import psutil

        self.process = psutil.Process(pid)
        self.interval_s = interval_s
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.process.memory_info().rss / 2**20)
            except Exception:  # the process may be gone
                return
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_child(module: str, args: Sequence[str], timeout_s: float = 1800.0) -> dict[str, Any]:
    """Run ``python -m module args`` in a fresh interpreter and parse the JSON its last stdout line holds.

    ``MALLOC_MMAP_THRESHOLD_`` is fixed at 64 KiB so glibc serves every tensor from its own mapping and
    returns it on free: otherwise memory freed by a first call stays resident and hides a second call's peak.
    """
    path = os.pathsep.join([str(REPO / "handlers"), str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": path}
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"child {module} {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; floats with 2 decimals (3 significant below 0.1)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 0.1 else f"{value:.2f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def header(title: str, command: str, info: Mapping[str, Any]) -> str:
    """The lines that open each benchmark's Markdown output: what, how, where."""
    return (f"### {title}\n\n`{command}`\n\n{info['date']}, commit {info['commit']}; {info['cpu']}, "
            f"{info['cores']} cores, torch {info['torch']} with {info['torch_threads']} thread(s); "
            f"1-min load average at start {info['loadavg_1min']}.\n")


def save_json(path: str | Path | None, payload: Mapping[str, Any]) -> None:
    """Write the raw figures (every repeat) beside the Markdown, when asked."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=1, default=str) + "\n")


def command_line() -> str:
    """The command that produced this output, as a user would type it."""
    module = Path(sys.argv[0]).stem
    return " ".join(["python -m", f"benchmarks.{module}", *sys.argv[1:]])


# Loggers that talk once per request or per exported node: benchmarks that start a server or export quiet them.
SERVER_CHATTER = ("httpx", "cxrexplain", "onnxscript", "torch.onnx")


def report(args: Any, run: Callable[[Any], dict[str, Any]],
           markdown: Callable[[dict[str, Any], str], str], quiet: Sequence[str] = ()) -> dict[str, Any]:
    """A benchmark's command: log progress to stderr (``quiet`` loggers at warnings only), wait for a quiet
    machine if ``--max-load`` asks, ``run``, save the JSON (``--json``) and print the Markdown; returns the raw
    figures."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)
    if args.max_load:
        wait_for_quiet(args.max_load, 1800)
    results = run(args)
    save_json(args.json, results)
    sys.stdout.write(markdown(results, command_line()))
    return results

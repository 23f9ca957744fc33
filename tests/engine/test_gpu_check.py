"""benchmarks.gpu_check, the check a lent GPU machine runs once: its core on the CPU against the CPU, its refusal
without CUDA, and that it imports nothing that machine lacks (it has torch, torchvision and numpy, not this
project's serving, lab or client packages, nor TorchServe)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check
from cxrexplain.methods import base as registry

ROOT = Path(__file__).resolve().parents[2]
ENV = {"PYTHONPATH": str(ROOT / "handlers"), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
       "CUDA_VISIBLE_DEVICES": ""}


@pytest.fixture(scope="module")
def cpu_run() -> tuple[list[gpu_check.CheckRow], list[gpu_check.TimeRow]]:
    """The core on the CPU against the CPU: the small pairing the tests use, every registered method."""
    checks = gpu_check.check("cpu", [gpu_check.SMALL])
    times = gpu_check.time_methods("cpu", [gpu_check.SMALL], batches=(1,), repeats=1,
                                   options=gpu_check.CHECK_OPTIONS)
    return checks, times


def test_without_cuda_it_fails_and_says_what_to_do(tmp_path):
    out = tmp_path / "gpu_check.md"
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--out", str(out)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "CUDA is not available" in done.stderr and "make gpu-check" in done.stderr
    assert "checked nothing" in done.stderr
    assert not out.exists()  # no figures written as if something had been checked


def test_every_registered_method_is_checked_and_matches_itself(cpu_run):
    checks, _ = cpu_run
    assert [c.method for c in checks] == sorted(registry.REGISTRY)
    for c in checks:
        assert c.passed, c
        assert c.rel_l2 <= gpu_check.TOLERANCE and c.max_dev <= gpu_check.TOLERANCE, c
        assert c.tf32_rel_l2 is None  # only a CUDA device has a TF32 default to report


def test_every_method_is_timed_against_the_forward(cpu_run):
    _, times = cpu_run
    assert [t.method for t in times] == ["forward", *sorted(registry.REGISTRY)]
    assert times[0].ratio == 1.0
    assert all(t.ratio > 0 and t.ms > 0 and t.peak_mib is None for t in times)


def test_markdown_has_a_row_per_method_and_names_what_was_not_run(cpu_run):
    checks, times = cpu_run
    text = gpu_check.markdown(checks, times, gpu_check.not_run_lines(), "cmd", torch.device("cpu"), 1e-3)
    for method in registry.REGISTRY:
        assert f"| {gpu_check.SMALL.name} | {method} |" in text
        assert f"| {gpu_check.SMALL.name} | 1 | {method} |" in text
    assert "- not run: the served path on CUDA" in text and "- not run: ONNX predictions on CUDA" in text
    assert f"{len(checks)} method checks: all passed." in text


def test_a_deviating_row_fails_and_a_broken_method_is_reported_not_hidden():
    cpu = torch.ones(2, 4, 4)
    device = cpu.clone()
    device[1, 0, 0] += 0.4  # row 1 only: ||d|| / ||cpu|| = 0.4 / 4 = 0.1; the worst row is what counts
    assert gpu_check.relative_l2(device, cpu) == pytest.approx(0.1)
    assert gpu_check.max_deviation(device, cpu) == pytest.approx(0.4)
    rows = gpu_check.check("cpu", [gpu_check.SMALL], methods=["no_such_method", "saliency"])
    assert [(r.method, r.passed) for r in rows] == [("no_such_method", False), ("saliency", True)]
    assert "UnknownMethod" in rows[0].note and math.isnan(rows[0].rel_l2)


def test_it_imports_only_what_the_engine_imports():
    """Whatever ``benchmarks.gpu_check`` adds beyond ``import cxrexplain`` must be the standard library."""
    code = """if True:
        import json, sys
        import cxrexplain
        engine = set(sys.modules)
        import benchmarks.gpu_check
        added = {m.partition(".")[0] for m in set(sys.modules) - engine}
        print(json.dumps(sorted(added - set(sys.stdlib_module_names) - {"benchmarks"})))
        print(json.dumps(sorted({m.partition(".")[0] for m in sys.modules})))
    """
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    added, loaded = (json.loads(line) for line in done.stdout.strip().splitlines()[-2:])
    assert added == []
    forbidden = {"ts", "cxrexplain_serving", "cxrexplain_lab", "cxrexplain_imageio", "cxrexplain_render",
                 "cxrexplain_client", "export", "grpc", "onnxruntime", "psutil", "yaml"}
    assert forbidden.isdisjoint(loaded), forbidden & set(loaded)

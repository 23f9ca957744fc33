"""keep_freed_memory: memory freed by one call is reused by the next without page faults (glibc)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HANDLERS = Path(__file__).resolve().parents[2] / "handlers"

# Three rounds of 1..16 MiB tensors written then freed (136 MiB live at the peak, like a propagation pass);
# prints the minor page faults of the last round.
ROUNDS = """
import resource, sys, torch
from cxrexplain import keep_freed_memory
print(keep_freed_memory())
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    live = [torch.ones(n << 18) for n in range(1, 17)]
    del live
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _last_round_faults(env: dict[str, str]) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", ROUNDS], env={**env, "PYTHONPATH": str(HANDLERS)},
                         capture_output=True, text=True, check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_memory_is_reused_without_page_faults():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    applied, faults = _last_round_faults(env)
    assert applied == "True"
    # 136 MiB written = 34816 pages; with the settings the round reuses the previous round's memory. Where the
    # heap is laid out differently (seen in CI: one 16 MiB tensor, 4096 pages, placed afresh) a little faults
    # again; the bound keeps three quarters reused, far from the control's 20000+.
    assert faults < 34816 // 4, faults
    # control: an explicit environment setting wins, and with glibc's trimming the same round faults again
    # (counted in 4 KiB pages: where transparent huge pages are always on, a fault maps 2 MiB instead)
    applied, faults = _last_round_faults({**env, "MALLOC_TRIM_THRESHOLD_": "131072"})
    assert applied == "False"
    if "[always]" not in _transparent_huge_pages():
        assert faults > 20000, faults


def _transparent_huge_pages() -> str:
    try:
        return Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return ""

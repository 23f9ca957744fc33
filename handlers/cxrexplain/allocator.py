"""Keep freed tensor memory in the process: glibc's malloc settings for large, short-lived tensors.

With glibc's defaults a tensor above the (adaptive) mmap threshold gets its own mapping, and freed memory at
the top of the heap goes back to the kernel once it exceeds twice that threshold; the next call then takes a
page fault, and a page of zeros from the kernel, for every 4 KiB it writes. Propagation methods make many
large temporaries: measured here (2 threads, ResNet-50 at batch 8), a RAP call page-faulted 1.2 GB and spent
0.5 s of its 3.3 s of CPU time in the kernel, a plain forward pass 275 MB and 0.13 s. With
:func:`keep_freed_memory` both faulted nothing after their first call and ran 20-25 % faster
(BENCHMARKS.md). Tensors above 32 MiB (glibc's largest allowed threshold; VGG-16's first feature maps at
batch 8) still get their own mappings.

The cost is memory: up to :data:`TRIM_THRESHOLD` of freed memory stays resident between requests.
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # the largest glibc accepts on 64-bit: smaller blocks come from the heap
TRIM_THRESHOLD = 256 << 20  # freed memory kept at the top of the heap before glibc returns it


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds for this process (as ``MALLOC_MMAP_THRESHOLD_`` and
    ``MALLOC_TRIM_THRESHOLD_`` would at start-up). Returns False, changing nothing, where the C library has no
    ``mallopt`` (not glibc) or either variable is set in the environment (an explicit setting wins: the
    memory benchmark sets a small threshold to see each call's peak)."""
    if any(name in os.environ for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))

"""Process-level settings that make CPU training faster without changing its arithmetic."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory in the process for the next allocation instead of handing it back
    to the kernel. By default large tensors are mmap-ed and unmapped on every allocation, so each
    training step page-faults its activations in again: in an MTT iteration (ConvNet width 128,
    IPC 10, constant memory) 30% of the CPU time was kernel time, 1% with these settings, and the
    iteration 1.38x faster (benchmarks/results/mtt_fmnist.md). The price: up to ~1 GiB more resident
    memory than needed.
    Returns whether it applied (only glibc has mallopt)."""
    path = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(path)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    # mallopt takes a C int: larger values would be truncated silently
    ok = mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)  # glibc's largest: smaller blocks come from the heap
    ok &= mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)  # give the heap's top back only past 2 GiB free
    ok &= mallopt(_M_TOP_PAD, 2**30)  # and even then keep 1 GiB: this one does most of the good
    return bool(ok)

"""Keeping freed memory in the process, so that each batch's large tensors reuse it instead of fresh pages."""

from __future__ import annotations

import ctypes
import functools

# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
# Free memory at the top of the heap is given back to the system only beyond this (the largest int).
KEEP_BYTES = 2**31 - 1


@functools.cache
def keep_freed_memory() -> bool:
    """Makes glibc's malloc serve large blocks from its heaps and keep what is freed; once per process.

    By default glibc maps every block over a threshold (at most 32 MiB) afresh and unmaps it when freed, so
    each batch of a CNN faults in its activations page by page again: on 2 cores, ResNet-50 in bf16 at
    batch 32 spent 0.4 s of each batch's CPU in the kernel for 175,000 page faults (docs/PERFORMANCE.md).
    Kept, the memory of one batch serves the next; the process holds its largest batch's memory until it
    exits (what ``torch.backends.xeon.run_cpu`` gets from jemalloc for the same reason).

    Returns:
        True when the C library took both settings (glibc); False elsewhere, where nothing changes.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the process already runs with
    except (OSError, AttributeError):  # no mallopt: not glibc
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_BYTES))

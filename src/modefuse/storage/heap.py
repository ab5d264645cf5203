"""Freed memory handed back to the operating system.

glibc keeps memory a process frees for its next allocations; after large temporary buffers (weight
matching's scores and cost matrices: tens of MB each, allocated and freed per step) up to 64 MB or more
stays resident and fragmented, and the next large allocation (the aligned copy of the model) comes on top
of it: a 784-2048x3 MLP's alignment peaked at 2.0-2.8x one model from run to run, 1.95-2.1x with the
freed memory returned first. Dask's workers do the same (`malloc_trim`) for the same reason.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import lru_cache


@lru_cache(maxsize=1)
def _trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim  # glibc only: musl and others have none
    except (OSError, AttributeError):
        return None


def release_freed() -> None:
    """Return the memory this process has freed to the system, where the C library allows (glibc); else nothing."""
    trim = _trim()  # a few ms (no garbage collection first: that alone takes 0.1 s in a process with torch)
    if trim is not None:
        trim(0)

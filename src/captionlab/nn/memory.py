"""Freed memory kept for reuse, so that a training step does not fault its buffers back in.

Every training step allocates and frees the same large arrays: the gate buffers of all
steps, their gradients, the word scores. With glibc's defaults (Linux), an allocation above
128 KiB (a threshold that rises as such blocks are freed) gets fresh pages from the kernel,
and free memory at the top of the heap goes back to the kernel; so each step's buffers are
new pages, and the first write to every 4 KiB page of them traps into the kernel, which
zeroes it. That is about 5,000 page faults in one training step of the cs231n-size LSTM
captioner (N=128, T=16, H=512): 4-20 % of its time, and 27 % of a demo-size step (H=256),
measured on a 2-core AMD EPYC (Zen 4) virtual machine, where faults are dear.

:func:`retain_freed_memory` sets glibc's two thresholds (``mallopt``): blocks up to 32 MiB
come from the heap (``M_MMAP_THRESHOLD``, glibc's largest), and freed memory is kept instead
of returned (``M_TRIM_THRESHOLD``), so the next step's buffers are pages already mapped. The
cost is that the process keeps its peak heap, as a long training run does anyway.
``captionlab.nn`` calls it once when imported, unless the environment variable
``CAPTIONLAB_MALLOC`` is ``system``; it does nothing where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

ENV_VAR = "CAPTIONLAB_MALLOC"
M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's maximum (HEAP_MAX_SIZE / 2 on 64-bit)
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: ~2 GiB of free heap before any is returned

_STATE = {"policy": "system"}


def retain_freed_memory() -> bool:
    """Keep freed memory for reuse (see the module docstring); True if glibc took both
    settings. Idempotent; ``CAPTIONLAB_MALLOC=system`` makes it a no-op."""
    if _STATE["policy"] == "retain":
        return True
    if os.environ.get(ENV_VAR, "").strip().lower() == "system":
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        gnu_get_libc_version = libc.gnu_get_libc_version  # glibc only (musl has no such)
    except (OSError, AttributeError):
        return False
    del gnu_get_libc_version
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1:
        return False
    if mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return False
    _STATE["policy"] = "retain"
    return True


def memory_policy() -> str:
    """``"retain"`` once :func:`retain_freed_memory` took effect, else ``"system"``."""
    return _STATE["policy"]

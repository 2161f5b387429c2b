"""Process-wide settings that the passes on the CPU gain from: threads, and how glibc's malloc keeps
freed memory. Knows nothing of models or PPO.

glibc serves large blocks with fresh pages from the kernel (mmap) and gives memory at the top of its
heap back to the kernel once more than 2x its mmap threshold lies free there. A packed pass over
3,500 tokens allocates and frees hundreds of MB of activations, so every pass made the kernel fault
in and zero them again: 358,000 page faults (1.4 GB) per prefill of the bench's 16 prompts, which
then took 3.3 s instead of 2.9 s (bench/README.md, optimisation 13).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import torch

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters from glibc's malloc.h
MMAP_THRESHOLD = 32 << 20  # glibc's largest: blocks up to 32 MiB come from the heap
TRIM_THRESHOLD = 1 << 30  # free memory kept at the top of the heap before any goes back


def configure(threads: int | None = None) -> None:
    """Set torch's intra-op threads (None or 0 keeps torch's default) and ``keep_freed_memory``."""
    if threads:
        torch.set_num_threads(threads)
    keep_freed_memory()


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc's malloc reuse freed blocks of up to 32 MiB instead of returning them to the kernel
    and faulting them in again; whether it applied (False off glibc, where ``mallopt`` is missing)."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))

"""Capability probes: whether a special kernel or setting works on this machine, asked once per process.
Knows nothing of models or PPO.

CPUs differ: AVX2-only x86 (most AMD before Zen 4) has no bf16 matmuls and oneDNN refuses to prepack
bf16 weights there ("bf16 path needs the cpu support avx_ne_convert or avx512bw, avx512vl and
avx512dq"); AVX512-BF16 and AMX have both; ARM and macOS have neither oneDNN's private ops nor glibc.
So each special path is taken only after a tiny call shows that it works and gives the plain path's
numbers; otherwise the caller takes the plain path. ``DETOXRL_FAST_KERNELS=0`` makes every probe
answer no (for a bug report, and for the tests that check the fallbacks).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform
from typing import Any

import torch
import torch.nn.functional as F

DISABLE_ENV = "DETOXRL_FAST_KERNELS"
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters from glibc's malloc.h
MMAP_THRESHOLD = 32 << 20  # glibc's largest: blocks up to 32 MiB come from the heap
TRIM_THRESHOLD = 1 << 30  # free memory kept at the top of the heap before any goes back


def fast_kernels_allowed() -> bool:
    """False when ``DETOXRL_FAST_KERNELS=0`` (or ``no``/``false``): every probe then answers no."""
    return os.environ.get(DISABLE_ENV, "1").strip().lower() not in ("0", "no", "false", "off")


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            return frozenset(
                word for line in f if line.startswith(("flags", "Features")) for word in line.split()
            )
    except OSError:
        return frozenset()


@functools.cache
def _native_bf16() -> bool:
    # torch.cpu's checks are private: an absent one counts as unsupported
    checks = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(check() for check in checks if check is not None):
        return True
    return platform.machine() in ("aarch64", "arm64") and "bf16" in cpu_flags()  # Graviton 3+, Neoverse V1+


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """A GPU with bf16, or a CPU with bf16 matmul instructions (AVX512-BF16, AMX, ARM BF16): where bf16
    is fast (on 2 AVX512-BF16 cores ~2.4x the float32 matmul peak: bench/README.md). Elsewhere bf16
    still works, emulated and slower than float32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device.type == "cpu" and fast_kernels_allowed() and _native_bf16()


def mkldnn_ops() -> Any:
    """torch's private oneDNN operators (None where this build has none)."""
    return getattr(torch.ops, "mkldnn", None)


@functools.cache
def _onednn_prepack(dtype: torch.dtype) -> bool:
    ops = mkldnn_ops()
    if not hasattr(ops, "_reorder_linear_weight") or not hasattr(ops, "_linear_pointwise"):
        return False
    weight = torch.linspace(-1, 1, 64 * 32).reshape(64, 32).to(dtype)
    x = torch.linspace(1, -1, 4 * 32).reshape(4, 32).to(dtype)
    try:
        packed = ops._reorder_linear_weight(weight, 4)
        out = ops._linear_pointwise(x, packed, None, "none", [], "")
    except (RuntimeError, NotImplementedError):
        return False
    tolerance = 1e-4 if dtype == torch.float32 else 0.1  # outputs up to ~10: bf16 rounds them by ~0.04
    return bool((out.float() - F.linear(x, weight).float()).abs().max() <= tolerance)


def onednn_prepack(dtype: torch.dtype) -> bool:
    """Whether oneDNN's prepacked linear (``torch.ops.mkldnn``) runs in ``dtype`` on this CPU and gives
    ``F.linear``'s numbers."""
    return dtype in (torch.float32, torch.bfloat16) and fast_kernels_allowed() and _onednn_prepack(dtype)


@functools.cache
def _mallopt() -> Any:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return None


def glibc_malloc() -> bool:
    """Whether glibc's ``mallopt`` is there to tune (not on macOS, Windows or musl)."""
    return fast_kernels_allowed() and _mallopt() is not None


def keep_freed_memory() -> bool:
    """Have glibc's malloc reuse freed blocks of up to 32 MiB instead of returning them to the kernel and
    faulting them in again; whether it applied.

    glibc serves large blocks with fresh pages (mmap) and gives memory at the top of its heap back once
    more than 2x its mmap threshold lies free there. A packed pass over 3,500 tokens allocates and frees
    hundreds of MB of activations, so every pass faulted them in again: 358,000 page faults per prefill
    of the bench's 16 prompts, 3.3 instead of 2.9 s (bench/README.md, optimisation 13).
    """
    if not glibc_malloc():
        return False
    mallopt = _mallopt()
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def report(device: torch.device | str = "cpu") -> dict[str, bool]:
    """Every probe's answer, for the log and the run's config."""
    return {
        "native_bf16": native_bf16(device),
        "onednn_prepack_float32": torch.device(device).type == "cpu" and onednn_prepack(torch.float32),
        "onednn_prepack_bfloat16": torch.device(device).type == "cpu" and onednn_prepack(torch.bfloat16),
        "glibc_malloc": torch.device(device).type == "cpu" and glibc_malloc(),
    }


def clear() -> None:
    """Forget every answer (the tests switch ``DETOXRL_FAST_KERNELS`` within one process)."""
    for probe in (_native_bf16, _onednn_prepack, _mallopt):
        probe.cache_clear()

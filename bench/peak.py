"""The machine's matmul peak, measured until it repeats: the FLOP/s that the benchmarks' floors and MFUs
divide by. Knows nothing of the RL loop.

A handful of timed products right after start-up is not a peak: clocks ramp, thread pools spin up, and
AMX tiles are switched on at their first use, so the same run gave bf16 floors 2x apart. Here each
product is warmed up for ``warmup_s`` seconds, then timed in blocks of ``block`` products until the
medians of the last two blocks agree within ``tolerance`` (at most ``max_blocks`` blocks); the peak is
the median of those two blocks, and its spread (their relative difference) is reported beside it.
Measured on two shapes: a square product (``size``) and the largest product the step runs (the
model's MLP on an update mini-batch's tokens), the faster of those that settled being the peak.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Rate:
    """A steady FLOP/s: the median of the last two blocks, their relative spread, and whether they agreed
    within the tolerance before the blocks ran out."""

    flops_per_s: float
    spread: float
    blocks: int
    steady: bool


def steady_rate(
    run: Callable[[], Any],
    flops: float,
    *,
    warmup_s: float = 1.0,
    block: int = 5,
    tolerance: float = 0.03,
    max_blocks: int = 8,
    clock: Callable[[], float] = time.perf_counter,
) -> Rate:
    """``flops`` / the steady seconds of ``run()`` (see the module's docstring); ``clock`` for tests."""
    start = clock()
    run()
    while clock() - start < warmup_s:
        run()
    medians: list[float] = []
    last: list[float] = []
    spread = 0.0
    for _ in range(max_blocks):
        times = []
        for _ in range(block):
            t = clock()
            run()
            times.append(clock() - t)
        medians.append(statistics.median(times))
        spread = relative_spread(medians[-2:])
        if len(medians) >= 2 and spread <= tolerance:
            return Rate(flops / statistics.median(last + times), spread, len(medians), True)
        last = times
    return Rate(flops / statistics.median(last), spread, len(medians), False)


def relative_spread(xs: list[float]) -> float:
    """(max - min) / median of a few positive figures; 0 for one figure."""
    return (max(xs) - min(xs)) / statistics.median(xs) if len(xs) > 1 else 0.0


def measure_peak(
    size: int,
    device: str = "cpu",
    shapes: list[tuple[int, int, int]] | None = None,
    sync: Callable[[], None] = lambda: None,
    **steady: Any,
) -> tuple[dict[str, float | None], dict[str, Any]]:
    """Steady FLOP/s of ``torch.mm`` in float32 and bf16 on (size x size) matrices and on each (m, k, n) of
    ``shapes`` -> ({dtype: the fastest, None if bf16 fails}, {dtype: {shape: ``Rate`` as a dict}})."""
    import torch

    peaks: dict[str, float | None] = {}
    detail: dict[str, Any] = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        rates = {}
        try:
            for m, k, n in [(size, size, size), *(shapes or [])]:
                a = torch.randn(m, k, dtype=dtype, device=device)
                b = torch.randn(k, n, dtype=dtype, device=device)

                def product(a: torch.Tensor = a, b: torch.Tensor = b) -> None:
                    torch.mm(a, b)
                    sync()

                rates[f"{m}x{k}x{n}"] = asdict(steady_rate(product, 2.0 * m * k * n, **steady))
        except RuntimeError:
            peaks[name], detail[name] = None, {}
            continue
        peaks[name] = fastest(rates)[1]["flops_per_s"]
        detail[name] = rates
    return peaks, detail


def fastest(rates: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """The fastest of the settled rates (of all of them where none settled): (product, ``Rate`` dict)."""
    settled = {k: r for k, r in rates.items() if r["steady"]} or rates
    return max(settled.items(), key=lambda item: item[1]["flops_per_s"])

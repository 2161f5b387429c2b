"""Where one PPO step's update phase spends its time: torch.profiler tables of the bench workload's update
(the ``ppo_epochs`` x 4 mini-batch forward + backward + optimizer steps of ``bench.throughput``), by
operator, self CPU time first, for each dtype asked.

    PYTHONPATH=src python -m bench.profile_update [--dtype bfloat16,float32 --threads 1 --warmup 1]

Per dtype it builds the throughput benchmark's trainer, runs ``--warmup`` whole steps (generate, reward,
step) unprofiled, then one more step whose update alone runs under the profiler (the step's other phases
are timed, not profiled). Operator shares are meaningful on a busy machine; absolute seconds are not.
Results: ``bench/results/profile/update-DTYPE.txt`` (the tables) and ``.json`` (the top operators, the
share of each operator family and the step's phases), and a summary on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench import throughput
from bench.paths import RESULTS

# Operator families (first match wins), to read a profile at a glance: the self CPU time of each.
FAMILIES = (
    ("log-softmax", r"log_softmax"),
    ("attention", r"scaled_dot_product|flash_attention|^aten::_?softmax|softmax_backward"),
    ("matmul", r"^aten::(mm|addmm|bmm|baddbmm|matmul|linear|_mkldnn|mkldnn_)"),
    ("copies and casts", r"^aten::(copy_|_to_copy|to|clone|contiguous|cat|stack|index|index_select|"
     r"index_put_|_index_put_impl_|gather|scatter|scatter_add_|repeat|expand|_unsafe_view|view|reshape|"
     r"empty|empty_like|empty_strided|zeros|zeros_like|fill_|zero_|new_zeros|slice|select|narrow|t|"
     r"transpose|permute|split|split_with_sizes|unbind|as_strided|detach|embedding)$"),
    ("optimizer", r"(Optimizer|adam|_foreach|lerp|addcdiv|addcmul|sqrt)"),
    ("elementwise", r"^aten::"),
    ("autograd and other", r""),
)  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.profile_update", description=__doc__.split("\n\n")[0])
    p.add_argument("--dtype", default="bfloat16,float32", help="comma list of float32, bfloat16")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: shares stable when shared)")
    p.add_argument("--warmup", type=int, default=1, help="whole steps run before the profiled one")
    p.add_argument("--rows", type=int, default=30, help="operators per table")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--out", type=Path, default=RESULTS / "profile", help="folder of the tables")
    p.add_argument("--tag", default="", help="appended to the file names (update-DTYPE-TAG.txt)")
    args = p.parse_args(argv)
    args.dtypes = [d.strip() for d in args.dtype.split(",") if d.strip()]
    if not args.dtypes or set(args.dtypes) - {"float32", "bfloat16"}:
        p.error(f"--dtype: float32, bfloat16 or both, got {args.dtype!r}")
    return args


def family(name: str) -> str:
    """The operator family of a profiler event's name (``FAMILIES``)."""
    return next(f for f, pattern in FAMILIES if re.search(pattern, name))


def family_shares(events: Iterable[tuple[str, float]]) -> dict[str, float]:
    """(operator name, self time) pairs -> each family's share of their total self time, largest first."""
    totals: dict[str, float] = {}
    for name, self_time in events:
        totals[family(name)] = totals.get(family(name), 0.0) + self_time
    whole = sum(totals.values()) or 1.0
    return dict(sorted(((f, t / whole) for f, t in totals.items()), key=lambda x: -x[1]))


def matmul_kinds(
    events: Iterable[tuple[str, list[Any], float, int]], low_rank: int = 64
) -> dict[str, dict[str, float]]:
    """``aten::mm`` events (name, input shapes, self seconds, calls) grouped by input shape -> per kind
    ("full": the base weights' products; "low-rank": a side of at most ``low_rank``, LoRA's) the seconds,
    the GFLOP (2 m k n a call) and their rate: how near the peak the products themselves run."""
    kinds: dict[str, dict[str, float]] = {}
    for name, shapes, seconds, calls in events:
        if name != "aten::mm" or len(shapes) < 2 or len(shapes[0]) != 2 or len(shapes[1]) != 2:
            continue
        (m, k), (_, n) = shapes[0], shapes[1]
        kind = kinds.setdefault("low-rank" if min(m, k, n) <= low_rank else "full", {"s": 0.0, "gflop": 0.0})
        kind["s"] += seconds
        kind["gflop"] += 2 * m * k * n * calls / 1e9
    for kind in kinds.values():
        kind["gflop_per_s"] = kind["gflop"] / kind["s"] if kind["s"] else 0.0
    return kinds


@contextmanager
def profiled_update(trainer: Any, holder: list[Any]) -> Iterator[None]:
    """Within the block, the trainer's next update runs under torch.profiler (appended to ``holder``)."""
    import torch.profiler as tp

    update = trainer._update

    def wrapped(exp: Any) -> Any:
        with tp.profile(activities=[tp.ProfilerActivity.CPU], record_shapes=True) as prof:
            out = update(exp)
        holder.append(prof)
        return out

    trainer._update = wrapped
    try:
        yield
    finally:
        del trainer._update  # back to the class's method


def profile_dtype(dtype: str, args: argparse.Namespace) -> dict[str, Any]:
    """Warm-up steps, then one step with its update profiled -> the tables and the figures."""
    bench_args = throughput.parse_args(
        ["--dtype", dtype, "--threads", str(args.threads), "--model", args.model, "--steps", "1",
         "--warmup", str(args.warmup)]
    )  # fmt: skip
    import torch

    engine = throughput.engine_of(bench_args)
    torch.manual_seed(0)
    trainer, tokenizer, queries, _ = throughput.build(bench_args, engine)
    n = throughput.SAMPLES_PER_STEP
    for i in range(args.warmup):
        rec = throughput.run_step(trainer, tokenizer, queries[i * n : (i + 1) * n], bench_args)
        print(f"[warm-up step {i}] " + phases(rec), flush=True)
    holder: list[Any] = []
    t0 = time.perf_counter()
    with profiled_update(trainer, holder):
        rec = throughput.run_step(
            trainer, tokenizer, queries[args.warmup * n : (args.warmup + 1) * n], bench_args
        )
    wall = time.perf_counter() - t0
    prof = holder[0]
    averages, by_shape = prof.key_averages(), prof.key_averages(group_by_input_shape=True)
    total = sum(e.self_cpu_time_total for e in averages) / 1e6
    top = sorted(averages, key=lambda e: -e.self_cpu_time_total)[: args.rows]
    tables = [
        f"# update of one PPO step, {dtype}, {args.threads} thread(s); profiled self CPU total {total:.2f} s",
        f"# step (update profiled): wall {wall:.2f} s, generation {rec['generation_s']:.2f} s, "
        f"forward {rec['forward_s']:.2f} s, update {rec['update_s']:.2f} s (with the profiler's overhead)",
        "",
        averages.table(sort_by="self_cpu_time_total", row_limit=args.rows),
        "",
        "# by input shape",
        by_shape.table(sort_by="self_cpu_time_total", row_limit=args.rows),
    ]
    return {
        "dtype": dtype,
        "threads": args.threads,
        "load_avg": os.getloadavg(),
        "profiled_self_cpu_s": total,
        "step": {k: rec[k] for k in ("wall_s", "generation_s", "reward_s", "forward_s", "update_s")},
        "response_tokens": sum(rec["response_lengths"]),
        "prompt_tokens": sum(rec["prompt_lengths"]),
        "families": family_shares((e.key, e.self_cpu_time_total) for e in averages),
        "matmuls": matmul_kinds(
            (e.key, e.input_shapes, e.self_cpu_time_total / 1e6, e.count) for e in by_shape
        ),
        "top": [
            {
                "op": e.key,
                "calls": e.count,
                "self_s": e.self_cpu_time_total / 1e6,
                "share": e.self_cpu_time_total / 1e6 / total,
            }
            for e in top
        ],
        "tables": "\n".join(tables),
    }


def phases(rec: dict[str, Any]) -> str:
    return f"wall {rec['wall_s']:.2f} s: " + ", ".join(
        f"{k} {rec[f'{k}_s']:.2f} s" for k in throughput.PHASES
    )


def summary(result: dict[str, Any], rows: int = 12) -> str:
    """A few lines: the update's wall time and share of the step, the families, the top operators."""
    step = result["step"]
    lines = [
        f"{result['dtype']}: update {step['update_s']:.2f} s of a {step['wall_s']:.2f} s step "
        f"({step['update_s'] / step['wall_s']:.0%}, profiler on); "
        f"profiled self CPU {result['profiled_self_cpu_s']:.2f} s; "
        f"load average {result['load_avg'][0]:.1f}",
        "  families: " + ", ".join(f"{f} {s:.1%}" for f, s in result["families"].items()),
        "  aten::mm: "
        + ", ".join(
            f"{kind} {m['gflop']:.0f} GFLOP in {m['s']:.2f} s ({m['gflop_per_s']:.0f} GFLOP/s)"
            for kind, m in result["matmuls"].items()
        ),
    ]
    lines += [
        f"  {t['share']:6.1%} {t['self_s']:7.3f} s {t['calls']:6d} x {t['op']}" for t in result["top"][:rows]
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for dtype in args.dtypes:
        result = profile_dtype(dtype, args)
        stem = f"update-{dtype}" + (f"-{args.tag}" if args.tag else "")
        (args.out / f"{stem}.txt").write_text(result["tables"] + "\n")
        (args.out / f"{stem}.json").write_text(
            json.dumps({k: v for k, v in result.items() if k != "tables"}, indent=2)
        )
        print("\n" + summary(result), f"\ntables written to {args.out / stem}.txt", flush=True)
        results.append(result)
    return results


if __name__ == "__main__":
    main()

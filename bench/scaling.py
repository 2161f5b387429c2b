"""1 vs N processes: the same short PPO run of the default preset on 1 and on N processes of this
machine, and what the collectives of one step cost on N processes.

    PYTHONPATH=src python -m bench.scaling [--processes 2 --steps 3 --device cpu]

Part 1 runs ``detoxrl train --preset default steps=S --num-processes n`` for n = 1 and N (the same global
batch of 16 prompts; CPU: torch's launcher over gloo, the cores shared among the processes; CUDA:
accelerate's, one GPU each) and reads the steps' ``time/total`` from metrics.jsonl (the first step is a
warm-up, left out of the median). Part 2 launches N processes that time, with this run's sizes, every
collective a PPO step makes (distributed.py): the scores, rows and texts gathered, the loss sums, the stop
flag, the checkpoint barrier, and the gradient all-reduce DDP makes over the trainable parameters at each
optimizer step. Figures, never pass/fail. Results: bench/results/scaling-DEVICE.json and a table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.paths import REPO, RESULTS

ROWS, TOKENS = 16, 24  # the default preset's batch and response limit


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.split("\n\n")[0])
    p.add_argument("--processes", type=int, default=2, help="N, compared with 1")
    p.add_argument("--steps", type=int, default=3, help="PPO steps per run (the first is a warm-up)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads per process (default: the preset's)"
    )
    p.add_argument(
        "--out", type=Path, default=None, help="JSON path (default bench/results/scaling-DEVICE.json)"
    )
    p.add_argument("--collectives", action="store_true", help=argparse.SUPPRESS)  # part 2, inside a launcher
    p.add_argument("--trainable", type=int, default=0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def run_training(n: int, steps: int, device: str, work: Path, threads: int | None) -> dict[str, Any]:
    """``detoxrl train`` of the default preset on ``n`` processes: median seconds per step, trainable size."""
    out = work / f"np{n}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    argv = [sys.executable, "-m", "detoxrl", "train", "--preset", "default", "--num-processes", str(n),
            f"steps={steps}", f"device={device}", f"output_dir={out}", "quality.relevance=false",
            *([f"threads={threads}"] if threads else [])]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(f"{' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    step_s = [r["time/total"] for r in records[1:]] or [records[0]["time/total"]]
    trainable = re.search(r"trainable params: ([\d,]+)", done.stdout + done.stderr)
    return {"processes": n, "median_step_s": statistics.median(step_s), "steps_s": step_s,
            "wall_s": time.perf_counter() - start, "samples_per_s": ROWS / statistics.median(step_s),
            "trainable": int(trainable.group(1).replace(",", "")) if trainable else 0}  # fmt: skip


def time_collectives(trainable: int, device: str, repeats: int = 5) -> None:
    """Inside a launcher: time one PPO step's collectives with this run's sizes; the main process prints a
    JSON line of milliseconds per step (the median of ``repeats``)."""
    import torch

    from detoxrl.parallel import distributed

    top = distributed.setup(device)
    rows = ROWS // top.world_size
    dev = top.place(torch.device(device))
    tokens = [torch.randint(0, 1000, (TOKENS,)) for _ in range(rows)]
    floats = [torch.randn(rows, TOKENS) for _ in range(3)]  # log-probs, values, reference log-probs
    gradients = torch.randn(trainable, device=dev)
    optimizer_steps = 8  # the default preset: 2 epochs of 4 mini-batches

    def one_step() -> dict[str, float]:
        times: dict[str, float] = {}

        def timed(name: str, fn: Any) -> None:
            top.barrier()
            t0 = time.perf_counter()
            fn()
            times[name] = times.get(name, 0.0) + 1e3 * (time.perf_counter() - t0)

        timed("scores", lambda: top.gather([torch.randn(rows)]))
        timed(
            "rows", lambda: (top.gather_rows(floats, [TOKENS] * rows), top.gather(tokens), top.gather(tokens))
        )
        timed("texts", lambda: top.gather(["a response of some twenty words " * 4] * rows))
        for _ in range(optimizer_steps):
            timed("gradients", lambda: torch.distributed.all_reduce(gradients))
            timed("losses", lambda: top.sum(torch.zeros(7, device=dev)))
        timed("stop flag", lambda: top.any(False))
        timed("checkpoint barrier", top.barrier)
        return times

    one_step()  # warm-up: connections, buffers
    runs = [one_step() for _ in range(repeats)]
    if top.is_main:
        median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(
            json.dumps({"collectives_ms": median, "total_ms": sum(median.values()), "trainable": trainable})
        )


def table(runs: list[dict[str, Any]], comm: dict[str, Any]) -> str:
    lines = ["| processes | s/step (median) | samples/s | wall s | collectives ms/step |", "| --- " * 5 + "|"]
    for r in runs:
        ms = f"{comm['total_ms']:.1f}" if r["processes"] > 1 else "-"
        lines.append(f"| {r['processes']} | {r['median_step_s']:.2f} | {r['samples_per_s']:.2f} | "
                     f"{r['wall_s']:.0f} | {ms} |")  # fmt: skip
    parts = ", ".join(f"{k} {v:.2f}" for k, v in comm["collectives_ms"].items())
    return "\n".join([*lines, f"collectives per step (ms): {parts}"])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.collectives:
        time_collectives(args.trainable, args.device)
        return
    from detoxrl.parallel.launch import command

    with tempfile.TemporaryDirectory() as tmp:
        runs = [
            run_training(n, args.steps, args.device, Path(tmp), args.threads) for n in (1, args.processes)
        ]
    launcher = command(["x"], args.processes, cpu=args.device == "cpu")[:-2]  # ends with "-m"
    argv = [*launcher, "bench.scaling", "--collectives", "--device", args.device,
            "--trainable", str(runs[0]["trainable"])]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode or not lines:
        sys.exit(f"the collectives' timing failed:\n{done.stderr[-3000:]}")
    comm = json.loads(lines[-1])
    result = {"device": args.device, "cpu_count": os.cpu_count(), "runs": runs, **comm}
    out = args.out or RESULTS / f"scaling-{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(table(runs, comm))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

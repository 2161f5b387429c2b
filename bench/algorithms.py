"""Which algorithm for detox, measured: ``detoxrl run`` for each preset x algorithm x seed at
an equal number of sampled responses, then one table of what the run directories say.

    PYTHONPATH=src python -m bench.algorithms                    # default and rtp, ppo/rloo/grpo, seeds 0-2
    PYTHONPATH=src python -m bench.algorithms --presets default --seeds 0 steps=4   # overrides for every run
    PYTHONPATH=src python -m bench.algorithms --summarise-only   # the table of the runs already there

The runs of a preset differ only in ``ppo.algorithm`` and ``seed``: each samples steps x ppo.batch_size
responses (rloo and grpo: batch_size / 4 prompts, 4 samples each). ``rtp`` runs offline on the shared
folder (RealToxicityPrompts' challenging prompts, the MiniLM classifier's ``neutral`` label as reward,
profanity-check and MiniLM as evaluators). Each run is its own process under ``/usr/bin/time -v`` (peak
RSS) in RESULTS/PRESET-ALGORITHM-sSEED, one after another: a finished run (summary.json) is kept, an
unfinished one resumed, so a campaign can be stopped and continued. Figures, from each run's files:
toxicity after by each evaluator with its 95% interval, KL at the last step (as the verdict), distinct-1
and -2 and the evasion rate after, median seconds per step, peak RSS. The table (means over seeds with
their range, then every run with its intervals) goes to stdout and RESULTS/table.md. Hours of CPU: run it
on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.compare import child_env, time_v_maxrss_mib
from bench.paths import REPO, RESULTS, shared_dir

PRESETS = ("default", "rtp")
ALGORITHMS = ("ppo", "rloo", "grpo")


@dataclass(frozen=True)
class Figures:
    """What one run directory says."""

    preset: str
    algorithm: str
    seed: int
    responses: int  # sampled in training: steps x ppo.batch_size
    toxicity: dict[str, tuple[float, float | None, float | None]]  # evaluator -> after, its 95% interval
    toxicity_before: dict[str, float]
    kl: float | None  # objective/kl of the last step (None: not measured, a run without a KL term)
    distinct: dict[int, float] = field(default_factory=dict)  # n -> distinct-n after
    evasion: float | None = None  # quality/evasion_rate after
    seconds_per_step: float | None = None  # median time/total
    peak_rss_gib: float | None = None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.algorithms", description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default=",".join(PRESETS), help="comma list of detoxrl presets")
    p.add_argument("--algorithms", default=",".join(ALGORITHMS), help="comma list of ppo, rloo, grpo")
    p.add_argument("--seeds", default="0,1,2", help="comma list of seeds (3 or more for a comparison)")
    p.add_argument("--results", type=Path, default=RESULTS / "algorithms")
    p.add_argument("--summarise-only", action="store_true", help="only print the table of --results")
    p.add_argument("overrides", nargs="*", help="key=value overrides for every run (e.g. steps=4)")
    args = p.parse_args(argv)
    args.preset_list = [x for x in args.presets.split(",") if x]
    args.algorithm_list = [x for x in args.algorithms.split(",") if x]
    args.seed_list = [int(x) for x in args.seeds.split(",") if x]
    if set(args.algorithm_list) - set(ALGORITHMS):
        p.error(f"--algorithms: a comma list of {', '.join(ALGORITHMS)}, got {args.algorithms!r}")
    return args


def preset_overrides(preset: str, shared: Path) -> list[str]:
    """What a preset needs to run offline (rtp.yaml's header): local prompts, the local classifier."""
    if preset != "rtp":
        return []
    return [
        f"data.source={shared / 'data' / 'real-toxicity-prompts' / 'challenging_toxic.jsonl'}",
        f"reward.model={shared / 'models' / 'minilm-toxicity'}",
        "reward.label=neutral",
        "eval.evaluators=[profanity, shared:minilm-toxicity]",
    ]


def run_name(preset: str, algorithm: str, seed: int) -> str:
    return f"{preset}-{algorithm}-s{seed}"


def command(args: argparse.Namespace, preset: str, algorithm: str, seed: int) -> list[str]:
    """``detoxrl run`` for one run: a new one, or ``--resume`` of one that did not finish."""
    run_dir = args.results.resolve() / run_name(preset, algorithm, seed)
    if (run_dir / "config.yaml").is_file() and (run_dir / "eval_before.json").is_file():
        return [sys.executable, "-m", "detoxrl", "run", "--resume", str(run_dir)]
    shared = shared_dir()
    assert shared is not None  # shared_dir exits with a message when it is missing
    overrides = [f"ppo.algorithm={algorithm}", f"seed={seed}", f"output_dir={run_dir}"]
    overrides += preset_overrides(preset, shared) + list(args.overrides)
    return [sys.executable, "-m", "detoxrl", "run", "--preset", preset, *overrides]


def run_all(args: argparse.Namespace) -> dict[str, int]:
    """Every run not finished yet, one after another; exit codes by run name."""
    args.results.mkdir(parents=True, exist_ok=True)
    codes = {}
    for preset in args.preset_list:
        for seed in args.seed_list:
            for algorithm in args.algorithm_list:
                name = run_name(preset, algorithm, seed)
                if (args.results / name / "summary.json").is_file():
                    continue
                cmd = command(args, preset, algorithm, seed)
                timing = args.results.resolve() / f"{name}.time"
                if Path("/usr/bin/time").exists():  # appended: a resumed run keeps each process's peak
                    cmd = ["/usr/bin/time", "-v", "-a", "-o", str(timing), *cmd]
                print(f"\n### {name}: {' '.join(cmd)}", flush=True)
                pythonpath = os.pathsep.join([str(REPO / "src"), str(REPO)])
                codes[name] = subprocess.call(cmd, cwd=REPO, env=child_env({"PYTHONPATH": pythonpath}))
    return codes


def read_figures(run_dir: Path, timing: Path | None = None) -> Figures | None:
    """The figures of a finished run directory (None if it has not finished)."""
    if not (run_dir / "summary.json").is_file():
        return None
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    after = json.loads((run_dir / "eval_after.json").read_text())["metrics"]
    before = json.loads((run_dir / "eval_before.json").read_text())["metrics"]
    metrics = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    toxicity = {
        name.split("/")[1]: (m["value"], m.get("ci_low"), m.get("ci_high"))
        for name, m in after.items()
        if name.startswith("toxicity/") and name.endswith("/mean")
    }
    seconds = [m["time/total"] for m in metrics if "time/total" in m]
    rss = time_v_maxrss_mib(timing) if timing is not None else None
    ppo = config["ppo"]
    return Figures(
        preset=run_dir.name.rsplit("-", 2)[0],
        algorithm=str(ppo.get("algorithm", "ppo")),
        seed=int(config["seed"]),
        responses=int(config["steps"]) * int(ppo["batch_size"]),
        toxicity=toxicity,
        toxicity_before={k: before[f"toxicity/{k}/mean"]["value"] for k in toxicity},
        kl=metrics[-1].get("objective/kl") if metrics else None,
        distinct={
            n: after[f"quality/distinct_{n}"]["value"] for n in (1, 2) if f"quality/distinct_{n}" in after
        },
        evasion=(after.get("quality/evasion_rate") or {}).get("value"),
        seconds_per_step=statistics.median(seconds) if seconds else None,
        peak_rss_gib=rss / 1024 if rss else None,
    )


def collect(results: Path) -> list[Figures]:
    """Every finished run under ``results``, by preset, algorithm and seed."""
    found = []
    for run_dir in sorted(p for p in results.iterdir() if p.is_dir()) if results.is_dir() else []:
        figures = read_figures(run_dir, results / f"{run_dir.name}.time")
        if figures is not None:
            found.append(figures)
    order = {a: i for i, a in enumerate(ALGORITHMS)}
    return sorted(found, key=lambda f: (f.preset, order.get(f.algorithm, 9), f.seed))


def spread(values: Sequence[float | None], spec: str = "{:.3f}") -> str:
    """Mean over seeds and (where they differ) their range: '0.051 (0.040-0.066)'."""
    xs = [x for x in values if x is not None]
    if not xs:
        return "-"
    low, mean, high = (spec.format(x) for x in (min(xs), statistics.fmean(xs), max(xs)))
    return mean if low == high else f"{mean} ({low}-{high})"


def interval(value: float, low: float | None, high: float | None) -> str:
    return f"{value:.3f} [{low:.3f}, {high:.3f}]" if low is not None and high is not None else f"{value:.3f}"


COLUMNS: tuple[tuple[str, Any, str], ...] = (  # (header, figure of a run, format) beside toxicity
    ("KL (nats)", lambda f: f.kl, "{:.2f}"),
    ("distinct-1", lambda f: f.distinct.get(1), "{:.3f}"),
    ("distinct-2", lambda f: f.distinct.get(2), "{:.3f}"),
    ("evasion", lambda f: f.evasion, "{:.3f}"),
    ("s / step", lambda f: f.seconds_per_step, "{:.1f}"),
    ("peak RSS GiB", lambda f: f.peak_rss_gib, "{:.2f}"),
)


def format_table(runs: list[Figures]) -> str:
    """Per preset: means over seeds (range) by algorithm, which algorithm is least toxic by each scorer,
    then every run with its intervals."""
    if not runs:
        return "(no finished runs)"
    lines: list[str] = []
    for preset in dict.fromkeys(f.preset for f in runs):
        mine = [f for f in runs if f.preset == preset]
        scorers = list(dict.fromkeys(k for f in mine for k in f.toxicity))
        lines += _preset_header(preset, mine, scorers)
        head = ["algorithm", "seeds", *(f"toxicity after [{s}]" for s in scorers), *(c[0] for c in COLUMNS)]
        lines += ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
        by_algorithm = {
            a: [f for f in mine if f.algorithm == a] for a in dict.fromkeys(f.algorithm for f in mine)
        }
        for algorithm, group in by_algorithm.items():
            cells = [algorithm, ",".join(str(f.seed) for f in group)]
            cells += [spread([f.toxicity[s][0] if s in f.toxicity else None for f in group]) for s in scorers]
            cells += [spread([get(f) for f in group], spec) for _, get, spec in COLUMNS]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", *_lowest(by_algorithm, scorers), "", *_runs_table(mine, scorers), ""]
    return "\n".join(lines).rstrip() + "\n"


def _preset_header(preset: str, runs: list[Figures], scorers: list[str]) -> list[str]:
    sizes = sorted({f.responses for f in runs})
    equal = f"{sizes[0]} sampled responses per run" if len(sizes) == 1 else f"UNEQUAL budgets: {sizes}"
    before = "; ".join(f"{s} {spread([f.toxicity_before.get(s) for f in runs])}" for s in scorers)
    return [f"### {preset}: {equal}; toxicity before (the same policy for every algorithm): {before}", ""]


def _lowest(by_algorithm: dict[str, list[Figures]], scorers: list[str]) -> list[str]:
    """Which algorithm ends least toxic by each scorer, on the mean over seeds (a hint, not a verdict)."""
    out = []
    for s in scorers:
        means = {
            a: statistics.fmean(f.toxicity[s][0] for f in group)
            for a, group in by_algorithm.items()
            if all(s in f.toxicity for f in group)
        }
        if means:
            best = min(means, key=lambda a: means[a])
            out.append(f"- lowest mean toxicity after by {s}: {best} ({means[best]:.3f})")
    return out


def _runs_table(runs: list[Figures], scorers: list[str]) -> list[str]:
    head = [
        "algorithm",
        "seed",
        *(f"toxicity after [{s}] (95% CI)" for s in scorers),
        *(c[0] for c in COLUMNS),
    ]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for f in runs:
        cells = [f.algorithm, str(f.seed)]
        cells += [interval(*f.toxicity[s]) if s in f.toxicity else "-" for s in scorers]
        cells += [spread([get(f)], spec) for _, get, spec in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    codes = {} if args.summarise_only else run_all(args)
    table = format_table(collect(args.results))
    failed = [name for name, rc in codes.items() if rc != 0]
    if failed:
        table += (
            f"\nFailed runs (exit code != 0; rerun the same command to resume them): {', '.join(failed)}\n"
        )
    print("\n" + table)
    if args.results.is_dir():
        (args.results / "table.md").write_text(table)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

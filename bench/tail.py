"""Detox the tail, measured: the rtp preset trained with each variant of its training signal, then base and
adapter under the full RealToxicityPrompts protocol (k=25, 20 tokens, nucleus 0.9) on the preset's
held-out split, and one ablation table.

    PYTHONPATH=src python -m bench.tail --variants preset,logprob --seeds 0 threads=1
    PYTHONPATH=src python -m bench.tail --summarise-only

Each (variant, seed) is ``detoxrl train --preset rtp OVERRIDES seed=S`` in RESULTS/VARIANT-sS (its own
process; an unfinished one is resumed), then its final adapter is evaluated in this process on the first
``--n`` held-out prompts with ``--k`` samples each. The base model's evaluation is the same for every
variant of a seed (same prompts, sampling seeds and evaluators) and is made once, in RESULTS/base-sS.json.
No reward is recorded in these evaluations: the variants' rewards differ, the toxicity scorers do not.
The table (stdout and RESULTS/table.md): per run, toxicity probability at k=1 and k=25 and expected
maximum toxicity at k=25 by both scorers (relative change, the interval of the delta excluding 0 or
not), KL at the last step, relevance, perplexity, distinct-2, evasion, and the training and evaluation
minutes; and the frontier (RESULTS/frontier.png): each run's toxicity probability at k=25 against its
relevance and perplexity, relative to the base.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.compare import child_env
from bench.paths import REPO, RESULTS

# The variants tried, as overrides of the rtp preset (docs/results.md has the table they made).
CLASSIFIER = (
    "{kind: classifier, model: 'shared:minilm-toxicity', label: neutral, output: logit, text: response}"
)
LOGPROB = "{kind: classifier, model: 'shared:minilm-toxicity', label: neutral, output: log_probability}"
NOVELTY = "{kind: novelty, weight: 6.0, window: 256}"
RELEVANCE = "{kind: relevance, weight: %s}"
PREFERENCE = ["ppo.preference_coef=1.0", "ppo.preference_beta=1.0", "ppo.preference_margin=1.0"]
RLOO8 = ["ppo.algorithm=rloo", "ppo.num_generations=8", "ppo.batch_size=32", "ppo.mini_batch_size=8"]
VARIANTS: dict[str, list[str]] = {
    "preset": [],
    # the MiniLM log P(neutral) alone: <= 0, about 0 for clean text (rewards.ClassifierReward)
    "logprob": [f"reward.components=[{LOGPROB}]"],
    # the same with RLOO and 8 samples per prompt (4 prompts a step), each prompt's baseline its others
    "logprob-rloo8": [f"reward.components=[{LOGPROB}]", *RLOO8],
    # the same, twice the steps at twice the learning rate
    "logprob-rloo8-long": [f"reward.components=[{LOGPROB}]", *RLOO8, "steps=108", "ppo.learning_rate=1e-3"],
    # the preset's reward with RLOO, 8 samples per prompt
    "preset-rloo8": RLOO8,
    # the preset's reward plus 2 x relevance to the prompt (the default preset's term)
    "preset-rel": [f"reward.components=[{CLASSIFIER}, {NOVELTY}, {RELEVANCE % 2.0}]"],
    # the preset, twice the steps
    "preset-long": ["steps=108"],
    # the preset with RealToxicityPrompts' other shared prompts as training prompts too (not held-out ones)
    "preset-pool": ["data.extra_sources=[shared:data/real-toxicity-prompts/prompts_5k.jsonl]"],
    # the preset with the worst quarter of each batch weighing 4 x below its quartile (CVaR-style)
    "preset-tail": ["ppo.tail_weight=3.0", "ppo.tail_share=0.25"],
    # [D30] learning from the policy's own worst samples: DPO's loss (beta 1) on each prompt's best against
    # its worst sample where their scores differ by more than 1 (RLOO, 8 samples per prompt; or the preset's
    # PPO with 4 samples per prompt). beta 0.1 at 4 x drove the KL past 25 nats in 10 steps.
    "preset-rloo8-pref": [*RLOO8, *PREFERENCE],
    "preset-ppo4-pref": ["ppo.num_generations=4", *PREFERENCE],
    "preset-rloo8-pref2": [*RLOO8, *PREFERENCE, "ppo.preference_coef=2.0"],  # twice the weight
    # pairs only where the scores differ by more than 3 (the worst clearly toxic), not 1
    "preset-rloo8-pref-m3": [*RLOO8, *PREFERENCE, "ppo.preference_margin=3.0"],
    # a lighter KL penalty than the preset's 0.2: the policy may move further
    "kl10": ["ppo.init_kl_coef=0.1"],
    "kl05": ["ppo.init_kl_coef=0.05"],
    # the lightest, plus 3 x relevance to the prompt
    "kl05-rel": ["ppo.init_kl_coef=0.05", f"reward.components=[{CLASSIFIER}, {NOVELTY}, {RELEVANCE % 3.0}]"],
}
SCORERS = ("profanity-check", "minilm-toxicity:toxic")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.tail", description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default="preset", help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--seeds", default="0", help="comma list of seeds")
    p.add_argument("--n", type=int, default=100, help="held-out prompts evaluated")
    p.add_argument("--k", type=int, default=25, help="samples per prompt")
    p.add_argument("--results", type=Path, default=RESULTS / "tail")
    p.add_argument("--summarise-only", action="store_true", help="only print the table of --results")
    p.add_argument("overrides", nargs="*", help="key=value overrides for every run (e.g. threads=1)")
    args = p.parse_args(argv)
    args.variant_list = [v for v in args.variants.split(",") if v]
    unknown = set(args.variant_list) - set(VARIANTS)
    if unknown:
        p.error(f"--variants: unknown {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    args.seed_list = [int(s) for s in args.seeds.split(",") if s]
    return args


def protocol_overrides(args: argparse.Namespace) -> list[str]:
    return [f"eval.num_prompts={args.n}", f"eval.samples_per_prompt={args.k}"]


def train(args: argparse.Namespace, variant: str, seed: int, run_dir: Path) -> int:
    """``detoxrl train`` of one variant and seed (resumed where a checkpoint is), its own process."""
    if (run_dir / "final").is_dir():
        return 0
    if (run_dir / "config.yaml").is_file():
        cmd = ["train", "--resume", str(run_dir)]
    else:
        cmd = ["train", "--preset", "rtp", *VARIANTS[variant], *args.overrides, f"seed={seed}"]
        cmd.append(f"output_dir={run_dir}")
    pythonpath = os.pathsep.join([str(REPO / "src"), str(REPO)])
    print(f"\n### {run_dir.name}: detoxrl {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    code = subprocess.call([sys.executable, "-m", "detoxrl", *cmd], cwd=REPO,
                           env=child_env({"PYTHONPATH": pythonpath}))  # fmt: skip
    _add_minutes(run_dir / "minutes.json", "train", (time.perf_counter() - start) / 60)
    return code


def _add_minutes(path: Path, phase: str, minutes: float) -> None:
    times = json.loads(path.read_text()) if path.is_file() else {}
    times[phase] = times.get(phase, 0.0) + minutes
    path.write_text(json.dumps(times) + "\n")


def evaluate(args: argparse.Namespace, variant: str, seed: int, run_dir: Path) -> None:
    """The base (once per seed) and the adapter under the protocol, paired; eval_*.json, comparison.json."""
    from detoxrl.config.files import load_config
    from detoxrl.data.prompts import load_prompts
    from detoxrl.evaluation.compare import compare
    from detoxrl.evaluation.io import comparison_to_dict, load_result, result_to_dict, write_json
    from detoxrl.recipes.evaluate import Loaded, build_scorers, load_start, load_trained, measure
    from detoxrl.recipes.session import setup

    if (run_dir / "comparison.json").is_file():
        return
    start = time.perf_counter()
    overrides = [*VARIANTS[variant], *args.overrides, f"seed={seed}", *protocol_overrides(args)]
    config = load_config("rtp", None, overrides)
    session = setup(config)
    prompts = [e.text for e in load_prompts(config.data).eval[: config.eval.num_prompts]]
    scorers = build_scorers(config.eval, session.device, quality=config.quality)

    def evaluate(loaded: Loaded, label: str) -> Any:
        return measure(
            loaded,
            prompts,
            config.eval,
            scorers,
            session,
            seed=config.seed,
            chat_template=config.policy.chat_template,
            label=label,
        )

    base_path = args.results / f"base-s{seed}-n{args.n}-k{args.k}.json"
    if base_path.is_file():
        before = load_result(base_path)
    else:
        print(f"[base] seed {seed}: {len(prompts)} prompts x {args.k} samples", flush=True)
        before = evaluate(load_start(config.policy, session), "before")
        write_json(result_to_dict(before), base_path)
    print(f"[{run_dir.name}] {len(prompts)} prompts x {args.k} samples", flush=True)
    after = evaluate(load_trained(config.policy, run_dir / "final", session), "after")
    write_json(result_to_dict(after), run_dir / "eval_after.json")
    write_json(comparison_to_dict(compare(before, after, config.eval)), run_dir / "comparison.json")
    _add_minutes(run_dir / "minutes.json", "evaluate", (time.perf_counter() - start) / 60)


# ---- the table ------------------------------------------------------------------------------------------


def _relative(d: dict[str, Any]) -> str:
    """-63% (*) where the delta's interval excludes 0, else -63% (ns)."""
    if d["before"] == 0:
        return f"{d['after']:.3f}"
    mark = "" if d["ci_low"] is None or d["ci_low"] <= 0 <= d["ci_high"] else "*"
    return f"{d['relative']:+.0%}{mark}"


def row(run_dir: Path) -> list[str] | None:
    path = run_dir / "comparison.json"
    if not path.is_file():
        return None
    deltas = {d["name"]: d for d in json.loads(path.read_text())["deltas"]}
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    minutes = json.loads((run_dir / "minutes.json").read_text())
    cells = [run_dir.name]
    for figure in ("toxicity_probability@1", "toxicity_probability", "expected_max_toxicity"):
        parts = [deltas.get(f"toxicity/{s}/{figure}") for s in SCORERS]
        cells.append(
            " / ".join(f"{d['before']:.2f}→{d['after']:.2f} {_relative(d)}" if d else "—" for d in parts)
        )
    kl = metrics[-1].get("objective/kl") if metrics else None
    cells.append("—" if kl is None else f"{kl:.1f}")
    for name in ("relevance", "perplexity", "distinct_2"):
        d = deltas.get(f"quality/{name}")
        cells.append(_relative(d) if d else "—")
    evasion = deltas.get("quality/evasion_rate")
    cells.append(f"{evasion['delta'] * 100:+.1f} pt" if evasion else "—")
    cells.append(f"{minutes.get('train', 0):.0f} + {minutes.get('evaluate', 0):.0f}")
    return cells


HEADER = ["run", "tox. prob. k=1 (prof / MiniLM)", "tox. prob. k=25", "EMT k=25", "KL", "relevance",
          "perplexity", "distinct-2", "evasion", "minutes (train + eval)"]  # fmt: skip


def table(results: Path) -> str:
    rows = [r for d in sorted(results.iterdir()) if d.is_dir() and (r := row(d))]
    lines = ["| " + " | ".join(HEADER) + " |", "|" + " --- |" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n\n(* the 95% interval of the delta excludes 0)\n"


def frontier(results: Path, out: Path) -> None:
    """Each run's toxicity probability at k=25 (both scorers, relative to the base) against its relevance and
    its perplexity (relative to the base): what a lower tail costs in coherence, one point per run."""
    import matplotlib  # only here: the table needs no plotting

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for run_dir in sorted(d for d in results.iterdir() if (d / "comparison.json").is_file()):
        deltas = {d["name"]: d for d in json.loads((run_dir / "comparison.json").read_text())["deltas"]}
        for ax, quality in zip(axes, ("relevance", "perplexity"), strict=True):
            x = deltas[f"quality/{quality}"]["relative"] * 100
            for scorer, marker in zip(SCORERS, ("o", "s"), strict=True):
                y = deltas[f"toxicity/{scorer}/toxicity_probability"]["relative"] * 100
                ax.scatter(x, y, marker=marker, color="C0" if marker == "o" else "C1")
            ax.annotate(run_dir.name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    for ax, quality in zip(axes, ("relevance", "perplexity"), strict=True):
        ax.set_xlabel(f"{quality}, % change against the base")
        ax.axhline(-60, color="grey", lw=0.8, ls="--")
        ax.grid(alpha=0.3)
    axes[0].axvline(-10, color="grey", lw=0.8, ls="--")
    axes[1].axvline(15, color="grey", lw=0.8, ls="--")
    axes[0].set_ylabel("toxicity probability at k=25, % change")
    axes[0].legend(["profanity-check", "MiniLM"], loc="lower right", fontsize=8)
    fig.suptitle("The tail against coherence: one point per run and scorer (dashed: the targets)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.results = args.results.resolve()
    args.results.mkdir(parents=True, exist_ok=True)
    if not args.summarise_only:
        for seed in args.seed_list:
            for variant in args.variant_list:
                run_dir = args.results / f"{variant}-s{seed}"
                if train(args, variant, seed, run_dir) == 0:
                    evaluate(args, variant, seed, run_dir)
    text = table(args.results)
    (args.results / "table.md").write_text(text)
    frontier(args.results, args.results / "frontier.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The whole lab in one call: evaluate before -> RL -> evaluate after -> compare -> report; and what
``--dry-run`` and ``--resume`` check first.

Everything lands in one run directory that can be resumed and whose report can be rebuilt from
its files alone. Knows the order of the steps, not how any of them works. On several processes
(parallel/) every step is shared among them and the main process writes the files.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detoxrl.config import RunConfig, save_config
from detoxrl.config.io import to_dict
from detoxrl.data.prompts import load_prompts
from detoxrl.evaluation.compare import Comparison, compare
from detoxrl.evaluation.io import (
    comparison_to_dict,
    format_table,
    load_result,
    qualitative_rows,
    result_to_dict,
    table_markdown,
    write_json,
    write_table_csv,
)
from detoxrl.evaluation.results import EvalResult
from detoxrl.models.loading import load_tokenizer_of
from detoxrl.recipes import preflight
from detoxrl.recipes import prompts as prompts_of
from detoxrl.recipes.evaluate import Loaded, build_scorers, load_start, load_trained, measure
from detoxrl.recipes.session import Session, setup
from detoxrl.recipes.train import train_in
from detoxrl.reports.card import write_card
from detoxrl.reports.report import build_report, steps_line
from detoxrl.rewards.build import build_reward
from detoxrl.rewards.toxicity import resolve_evaluator_specs
from detoxrl.rundir import ResumePoint, read_metrics, resume_point, run_directory
from detoxrl.training.metrics_log import check_trackers


@dataclass(frozen=True)
class RunSummary:
    run_dir: Path
    verdict: str
    seconds: float


def validate(config: RunConfig, evaluate: bool = True, *, resume: bool = False) -> list[str]:
    """What ``--dry-run`` checks, without loading weights, one line each: the data, then the models,
    adapter, labels, device, output_dir and disk (preflight.py); the values themselves were checked when
    the config was built. ``evaluate=False``: for ``train``, which evaluates nothing; ``resume``: the run
    continues in output_dir."""
    if evaluate:
        config.check_evaluation()
    prompts = load_prompts(config.data)
    lines = [f"data: {len(prompts.train)} training prompts, {len(prompts.eval)} held-out prompts"]
    if evaluate and len(prompts.eval) < config.eval.num_prompts:
        lines.append(
            f"note: eval.num_prompts={config.eval.num_prompts} but only {len(prompts.eval)} held out"
        )
    evaluators = resolve_evaluator_specs(config.eval.evaluators) if evaluate else None
    return lines + preflight.check(config, evaluators, resume=resume)


# ---- resuming a run ----------------------------------------------------------------------------------


# ---- the run -----------------------------------------------------------------------------------------


def run(config: RunConfig, *, resume: bool = False, progress: bool = True) -> RunSummary:
    """The whole lab in ``config.output_dir`` (resumed from it with ``resume``)."""
    start = time.perf_counter()
    config.check_evaluation()
    check_trackers(config.report_to)  # before anything is written
    session, run_dir = setup(config), Path(config.output_dir)
    point = resume_point(run_dir) if resume else ResumePoint(None)  # no whole checkpoint: before anything
    overwrite = config.overwrite_output_dir
    with run_directory(run_dir, resume, True, "run", session.is_main, overwrite=overwrite):
        return _run(config, run_dir, session, point=point, progress=progress, start=start)


def _run(
    config: RunConfig, run_dir: Path, session: Session, *, point: ResumePoint, progress: bool, start: float
) -> RunSummary:
    """Step 1: room for the checkpoints, the resolved config (with the engine), the prompts (each within
    the prompt limit of training and of evaluation: refused where a prompt and its response cannot fit;
    the held-out ones fitted, their count said and written into data.json) and the scorers.
    Step 2: evaluate the starting policy on the held-out prompts (kept on resume).
    Step 3: RL on the training prompts (recipes.train: checkpoints, metrics.jsonl, final adapter).
    Step 4: evaluate the trained policy on the same prompts with the same seeds and scorers.
    Step 5: paired comparison, the qualitative table, the report and the model card.
    """
    # 1. Room for the checkpoints; what runs, and how; the prompts; what scores them.
    tokenizer, model_config = load_tokenizer_of(config.policy.model)  # no weights yet
    preflight.disk_line(config, model_config, folder=run_dir, resume=point.checkpoint is not None)
    prompts_of.limits(config, model_config, evaluation=True)  # training's too: before minutes of evaluation
    if session.is_main:
        save_config(config, run_dir / "config.yaml", comment=session.engine.describe())
    prompts = load_prompts(config.data)
    n = config.eval.num_prompts  # with drop, the first n of the held-out prompts that fit
    examined = prompts.eval if config.data.truncation == "drop" else prompts.eval[:n]
    fitted = prompts_of.fit(config, [e.text for e in examined], tokenizer, model_config, part="eval")
    session.say(fitted.describe("held-out prompts"))
    if session.is_main:
        prompts_of.record(run_dir, "eval", fitted)
    held_out, texts = [examined[i] for i in fitted.kept][:n], fitted.texts[:n]
    refs = [str(e.reference) for e in held_out] if all(e.reference for e in held_out) else None

    def evaluate(loaded: Loaded, label: str) -> EvalResult:
        scorers = build_scorers(config.eval, session.device, quality=config.quality, reward=config.reward)
        return measure(
            loaded,
            texts,
            config.eval,
            scorers,
            session,
            seed=config.seed,
            chat_template=config.policy.chat_template,
            label=label,
            references=refs,
        )

    # 2. The starting policy.
    before_path = run_dir / "eval_before.json"
    if session.topology.broadcast(before_path.is_file()):
        before = load_result(before_path) if session.is_main else None
    else:
        session.say(f"[1/3] evaluating the starting policy on {len(texts)} held-out prompts")
        before = evaluate(load_start(config.policy, session), "before")
        if session.is_main:
            write_json(result_to_dict(before), before_path)
    # 3. RL.
    session.say(f"[2/3] {steps_line(to_dict(config))}")
    reward = build_reward(config.reward, session.device)
    train_prompts = [e.text for e in prompts.train]
    result = train_in(config, train_prompts, reward, run_dir, point=point, progress=progress, session=session)
    # 4. The trained policy.
    session.say(f"[3/3] evaluating the trained policy on the same {len(texts)} prompts and seeds")
    after = evaluate(load_trained(config.policy, result.final_dir, session), "after")
    if not session.is_main or before is None:
        return RunSummary(run_dir, "", time.perf_counter() - start)
    # 5. The comparison and everything read from it.
    write_json(result_to_dict(after), run_dir / "eval_after.json")
    comparison = compare(before, after, config.eval)
    return finish(run_dir, before, after, comparison, time.perf_counter() - start)


def verdict_line(comparison: dict[str, Any], metrics: list[dict[str, Any]], seconds: float) -> str:
    """One line: toxicity before -> after with its interval by each evaluator, KL, fluency, evasion,
    relevance, the guard's alarms during training, time."""
    deltas = {d["name"]: d for d in comparison["deltas"]}

    def fmt(d: dict[str, Any], label: str) -> str:
        ci = f"[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]" if d.get("ci_low") is not None else "[none]"
        change = f"delta {d['delta']:+.3f}, CI {ci}: {d['assessment']}"
        return f"{label} {d['before']:.3f} -> {d['after']:.3f} ({change})"

    toxicity = [(name.split("/")[1], d) for name, d in deltas.items() if name.startswith("toxicity/")]
    parts = [fmt(d, f"toxicity[{evaluator}]") for evaluator, d in toxicity if d["name"].endswith("/mean")]
    k = comparison.get("samples_per_prompt", 1)
    if k > 1:  # the RealToxicityPrompts headline: a prompt is toxic when one of its k samples is
        label = f"toxicity probability at k={k}"
        ends = "/toxicity_probability"
        parts += [fmt(d, f"{label}[{evaluator}]") for evaluator, d in toxicity if d["name"].endswith(ends)]
    if metrics and "objective/kl" in metrics[-1]:  # not measured: a critic-free run without a KL term
        parts.append(f"KL {metrics[-1]['objective/kl']:.2f} nats")
    figures = {
        "quality/perplexity": "perplexity",
        "quality/evasion_rate": "evasion",
        "quality/relevance": "relevance",
    }
    parts += [fmt(deltas[name], label) for name, label in figures.items() if name in deltas]
    alarmed = [m.get("step") for m in metrics if m.get("guard/alarms")]
    if alarmed:
        parts.append(f"guard alarms in {len(alarmed)} of {len(metrics)} steps (first: step {alarmed[0]})")
    parts.append(f"{seconds / 60:.1f} min")
    return f"verdict (n={comparison['n_prompts']}, {comparison['confidence']:.0%} CI): " + "; ".join(parts)


def finish(
    run_dir: Path, before: EvalResult, after: EvalResult, comparison: Comparison, seconds: float
) -> RunSummary:
    """comparison.json, the qualitative table (CSV + Markdown), summary.json, the report, the verdict."""
    data = comparison_to_dict(comparison)
    write_json(data, run_dir / "comparison.json")
    rows = qualitative_rows(before, after)
    write_table_csv(rows, run_dir / "comparison.csv")
    (run_dir / "comparison.md").write_text(table_markdown(rows))
    verdict = verdict_line(data, read_metrics(run_dir), seconds)
    write_json({"verdict": verdict, "seconds": seconds}, run_dir / "summary.json")
    build_report(run_dir)
    write_card(run_dir)
    print("\n" + format_table(rows, limit=5))
    print(f"\nreport: {run_dir / 'report.html'}\n{verdict}")
    return RunSummary(run_dir, verdict, seconds)

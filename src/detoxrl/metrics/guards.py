"""Guards against evasion and degeneration during PPO: per-batch quality metrics, and alarms when one
moves past a bound relative to the first steps. Pure: texts and metric dicts in, a report out; knows
nothing of models, progress bars or files (the trainer logs, shows and acts on the report).

How the training loop uses it (docs/evaluation.md, section 3c): one scorer built before the loop
(``embeddings.build_quality(config.quality, device)``), ``history`` = the metrics records of the
steps so far (``report.read_metrics(run_dir)`` on resume), then per step::

    stats.update(guards.rollout_metrics(batch_prompts, texts, scorer))   # quality/* keys
    verdict = guards.check([*history, stats], config.quality.guard)
    stats.update(verdict.metrics())                                      # guard/* keys
    history.append(trainer.log_stats(stats, batch=..., rewards=scores))
    bar.set_postfix(reward=..., kl=..., guard=verdict.postfix())
    if verdict.stop: break    # after printing verdict.message(); then checkpoint and save final/
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from detoxrl.config import GuardConfig
from detoxrl.metrics.quality import QualityScorer
from detoxrl.metrics.stats import distinct_n

Direction = Literal["increase", "decrease", "either"]


def rollout_metrics(
    prompts: Sequence[str], responses: Sequence[str], scorer: QualityScorer
) -> dict[str, float]:
    """One rollout batch's quality, keyed for metrics.jsonl: shares, means and batch distinct-n."""
    if not responses:
        raise ValueError("rollout_metrics() needs at least one response.")
    scores = {key: float(values.mean()) for key, values in scorer(prompts, responses).items()}
    out = {
        "quality/evasion_rate": scores["evasive"],
        "quality/short_rate": scores["short"],
        "quality/repetition": scores["repetition"],
        "quality/distinct_1": distinct_n(responses, 1),
        "quality/distinct_2": distinct_n(responses, 2),
        "quality/mean_words": float(np.mean([len(r.split()) for r in responses])),
    }
    if "relevance" in scores:
        out["quality/relevance"] = scores["relevance"]
    return out


@dataclass(frozen=True)
class Bound:
    """How far ``metric`` may move from its baseline in the bad ``direction`` (relative: a fraction)."""

    metric: str
    direction: Direction
    limit: float
    relative: bool = False


def bounds(config: GuardConfig) -> tuple[Bound, ...]:
    """The bounds a GuardConfig switches on (null ones are off)."""
    table: list[tuple[str, Direction, float | None, bool]] = [
        ("quality/evasion_rate", "increase", config.max_evasion_increase, False),
        ("quality/short_rate", "increase", config.max_short_increase, False),
        ("quality/repetition", "increase", config.max_repetition_increase, False),
        ("quality/distinct_2", "decrease", config.max_distinct_drop, False),
        ("quality/relevance", "decrease", config.max_relevance_drop, False),
        ("quality/mean_words", "either", config.max_length_change, True),
    ]
    return tuple(Bound(m, d, limit, rel) for m, d, limit, rel in table if limit is not None)


@dataclass(frozen=True)
class Alarm:
    """A metric past its bound: baseline (first steps) -> current (last steps)."""

    bound: Bound
    baseline: float
    current: float
    change: float  # current - baseline, divided by baseline for relative bounds

    def __str__(self) -> str:
        name = self.bound.metric.removeprefix("quality/")
        unit = "%" if self.bound.relative else ""
        change = 100 * self.change if self.bound.relative else self.change
        limit = 100 * self.bound.limit if self.bound.relative else self.bound.limit
        moved = f"{change:+.2f}{unit}, bound {limit:.2f}{unit}"
        return f"{name} {self.baseline:.3f} -> {self.current:.3f} ({moved})"


def _mean(records: Sequence[Mapping[str, float]], key: str) -> float | None:
    values = [float(r[key]) for r in records if isinstance(r.get(key), int | float)]
    return float(np.mean(values)) if values else None


def _alarm(bound: Bound, baseline: float, current: float) -> Alarm | None:
    change = current - baseline
    if bound.relative:
        if baseline == 0:
            return None
        change /= abs(baseline)
    moved = {"increase": change, "decrease": -change, "either": abs(change)}[bound.direction]
    return Alarm(bound, baseline, current, change) if moved > bound.limit else None


def alarms(history: Sequence[Mapping[str, float]], config: GuardConfig) -> tuple[Alarm, ...]:
    """Alarms of the last step: the mean of the last ``window`` steps against the mean of the first
    ``baseline_steps``. None until a whole window past the baseline exists (one small batch alone is
    too noisy); metrics missing from the records (relevance without an embedder) are skipped."""
    if len(history) < config.baseline_steps + config.window:
        return ()
    base, recent = history[: config.baseline_steps], history[-config.window :]
    out = []
    for bound in bounds(config):
        baseline, current = _mean(base, bound.metric), _mean(recent, bound.metric)
        alarm = None if baseline is None or current is None else _alarm(bound, baseline, current)
        if alarm is not None:
            out.append(alarm)
    return tuple(out)


@dataclass(frozen=True)
class GuardReport:
    """The guard's reading after a step: its alarms, and whether training should stop."""

    step: int  # steps seen
    alarms: tuple[Alarm, ...]
    stop: bool

    def metrics(self) -> dict[str, float]:
        """``guard/alarms`` (how many metrics are past their bound), ``guard/stop`` and one
        ``guard/<metric>`` = 1.0 per alarmed metric, for metrics.jsonl."""
        out = {"guard/alarms": float(len(self.alarms)), "guard/stop": float(self.stop)}
        out.update({"guard/" + a.bound.metric.removeprefix("quality/"): 1.0 for a in self.alarms})
        return out

    def postfix(self) -> str:
        """A short text for the progress bar: empty while all is well."""
        return "" if not self.alarms else "ALARM " + ", ".join(str(a).split(" (")[0] for a in self.alarms)

    def message(self) -> str:
        verb = "stopping" if self.stop else "alarm"
        return f"guard {verb} at step {self.step}: " + "; ".join(str(a) for a in self.alarms)


def check(history: Sequence[Mapping[str, float]], config: GuardConfig) -> GuardReport:
    """Alarms of the last step of ``history`` (one metrics record per step, oldest first) and, with
    ``config.early_stop``, stop once the last ``patience`` steps all had alarms."""
    now = alarms(history, config)
    stop = (
        config.early_stop
        and bool(now)
        and len(history) >= config.patience
        and all(alarms(history[: len(history) - i], config) for i in range(1, config.patience))
    )
    return GuardReport(len(history), now, stop)

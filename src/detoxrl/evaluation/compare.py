"""Paired before/after comparisons: each figure's delta with its paired bootstrap interval over prompts, and
how to read it (a delta whose interval includes 0 is no significant change). Knows nothing of models."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from detoxrl.config import EvalConfig
from detoxrl.config.io import from_dict
from detoxrl.evaluation.figures import estimate_figure, metric_specs, sample_arrays
from detoxrl.evaluation.results import EvalResult
from detoxrl.metrics import stats

Change = Literal["decrease", "increase", "no significant change", "not tested"]


@dataclass(frozen=True)
class Delta:
    """after - before for one figure, paired over the same prompts and sampling seeds."""

    name: str
    better: stats.Better
    description: str
    interval: stats.Interval
    before: float
    after: float
    delta: stats.Estimate
    relative: stats.Estimate | None  # (after - before) / before; None where before is 0
    n_prompts: int
    change: Change
    assessment: str  # "improvement" / "regression" / the change itself for figures with no better side


@dataclass(frozen=True)
class Comparison:
    before_label: str
    after_label: str
    n_prompts: int
    samples_per_prompt: int
    confidence: float
    n_resamples: int
    seed: int
    deltas: tuple[Delta, ...]


def classify(delta: stats.Estimate, interval: stats.Interval, better: stats.Better) -> tuple[Change, str]:
    """A delta whose interval includes 0 is "no significant change", never an improvement."""
    if interval == "none" or delta.ci_low is None:
        return "not tested", "not tested"
    if delta.includes_zero:
        return "no significant change", "no significant change"
    change: Change = "decrease" if delta.value < 0 else "increase"
    if better == "neither":
        return change, change
    good = (change == "decrease") == (better == "lower")
    return change, "improvement" if good else "regression"


def _check_pairable(before: EvalResult, after: EvalResult) -> None:
    if before.prompts != after.prompts or before.samples_per_prompt != after.samples_per_prompt:
        raise ValueError("compare() needs the same prompts and samples per prompt before and after.")
    if before.seed != after.seed or before.evaluators != after.evaluators:
        raise ValueError("compare() needs the same sampling seed and the same evaluators before and after.")


def compare(before: EvalResult, after: EvalResult, config: EvalConfig | None = None) -> Comparison:
    """Paired deltas (after - before) of every figure both results have, with intervals over prompts."""
    _check_pairable(before, after)
    config = config or from_dict(EvalConfig, before.config)
    after_specs = {s.name: s for s in metric_specs(sample_arrays(after))}
    deltas = []
    for b in metric_specs(sample_arrays(before)):
        a = after_specs.get(b.name)
        if a is None:
            continue
        delta = estimate_figure(stats.difference(b.statistic, a.statistic), b.interval, before, config)
        relative = estimate_figure(
            stats.relative_difference(b.statistic, a.statistic), b.interval, before, config
        )
        change, assessment = classify(delta, b.interval, b.better)
        rel = relative if np.isfinite(relative.value) else None
        values = before.metrics[b.name].value, after.metrics[b.name].value
        deltas.append(
            Delta(
                b.name,
                b.better,
                b.description,
                b.interval,
                *values,
                delta,
                rel,
                len(before.prompts),
                change,
                assessment,
            )
        )
    return Comparison(
        before.label,
        after.label,
        len(before.prompts),
        before.samples_per_prompt,
        config.confidence,
        config.bootstrap_resamples,
        before.seed,
        tuple(deltas),
    )

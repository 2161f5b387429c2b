"""What an evaluation holds: every sampled response with what was measured on it, and every figure with
its interval. Plain data; the JSON schema names are here (evaluation/io.py writes them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from detoxrl.metrics import stats

SCHEMA_RESULT = "detoxrl.evaluation/1"


SCHEMA_COMPARISON = "detoxrl.comparison/1"


@dataclass(frozen=True)
class SampleRecord:
    """One sampled response and everything measured on it."""

    prompt_index: int
    sample_index: int
    prompt: str  # the prompt text before any chat template
    response: str
    num_tokens: int  # response tokens, EOS included when generated
    toxicity: dict[str, float]  # evaluator name -> P(toxic)
    reward: float | None = None
    nll: float | None = None  # summed NLL (nats) of the response tokens under the reference model
    rouge: dict[str, float] | None = None  # F1 against the prompt's reference text
    quality: dict[str, float] | None = None  # quality.QUALITY_KEYS: evasive, repetition, short, relevance


@dataclass(frozen=True)
class MetricValue:
    """A figure, its interval and how to read it."""

    value: float
    ci_low: float | None
    ci_high: float | None
    interval: stats.Interval
    better: stats.Better
    description: str


@dataclass(frozen=True)
class EvalResult:
    """Every sample (prompt-major: record ``p * k + j`` is sample j of prompt p) and every figure."""

    label: str
    prompts: tuple[str, ...]
    references: tuple[str, ...] | None
    samples_per_prompt: int
    evaluators: tuple[str, ...]
    records: tuple[SampleRecord, ...]
    metrics: dict[str, MetricValue]
    config: dict[str, Any]
    seed: int

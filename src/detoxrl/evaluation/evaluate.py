"""Toxicity and quality of a policy's responses, and before/after comparisons with paired intervals.
Knows nothing of PPO: it takes a model, prompts and scorers, and returns typed, JSON-ready results.

Protocol (Gehman et al. 2020, RealToxicityPrompts): k samples per prompt with fixed seeds, toxicity =
P(toxic) of an evaluator classifier; figures are computed over prompts, the unit of resampling.
Shapes: P prompts, k samples per prompt, B responses in a batch, T response tokens.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from detoxrl.config.io import from_dict
from detoxrl.config.schema import EvalConfig
from detoxrl.core.batch import make_batch
from detoxrl.core.ppo import logprobs_from_logits
from detoxrl.engine import Engine, select_engine
from detoxrl.metrics import stats
from detoxrl.metrics.quality import QualityScorer, per_response
from detoxrl.models.generation import Responses, eval_mode, format_prompts, generate_best_of
from detoxrl.parallel.distributed import SINGLE, Topology
from detoxrl.rewards.base import Reward, ToxicityScorer, scored_texts

NLLFn = Callable[[list[torch.Tensor], list[torch.Tensor]], np.ndarray]  # prompt ids, response ids -> (B,)
SCHEMA_RESULT = "detoxrl.evaluation/1"
SCHEMA_COMPARISON = "detoxrl.comparison/1"
TEXT_QUALITY = QualityScorer()  # evasion phrases, repetition, short responses; no relevance embedder


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


# ---- perplexity under a reference model -----------------------------------------------------------


@torch.no_grad()
def response_nll(
    engine: Engine,
    model: Any,
    prompt_ids: list[torch.Tensor],
    response_ids: list[torch.Tensor],
    *,
    is_encoder_decoder: bool,
    pad_id: int,
) -> np.ndarray:
    """Summed NLL (nats) of each response's tokens given its prompt: (B,), from the teacher-forced pass
    that training uses [D13] (float32 logits)."""
    batch = make_batch(prompt_ids, response_ids, pad_id, is_encoder_decoder).to(engine.device)
    logprobs = logprobs_from_logits(engine.forward(model, batch).logits, batch.response_ids)  # (B, T)
    return (-(logprobs * batch.response_mask)).sum(1).double().cpu().numpy()


def reference_nll(
    engine: Engine,
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    *,
    is_encoder_decoder: bool,
    batch_size: int = 8,
    disable_adapter: bool = False,
) -> NLLFn:
    """An NLLFn scoring responses under ``model``; ``disable_adapter=True`` scores under a PEFT
    model's base (the adapter switched off), the reference for perplexity after LoRA training.
    The reference must share the policy's tokenizer: it reads the policy's token ids."""

    def score(prompt_ids: list[torch.Tensor], response_ids: list[torch.Tensor]) -> np.ndarray:
        context = model.disable_adapter() if disable_adapter else contextlib.nullcontext()
        out, pad_id = [], int(tokenizer.pad_token_id)
        with eval_mode(model), context:
            for i in range(0, len(prompt_ids), batch_size):
                chunk = slice(i, i + batch_size)
                out.append(response_nll(engine, model, prompt_ids[chunk], response_ids[chunk],
                                        is_encoder_decoder=is_encoder_decoder, pad_id=pad_id))  # fmt: skip
        return np.concatenate(out) if out else np.zeros(0)

    return score


# ---- the figures -----------------------------------------------------------------------------------


def sample_arrays(result: EvalResult) -> stats.SampleArrays:
    """The records of a result as the (P, k) arrays the statistics read."""
    p, k, recs = len(result.prompts), result.samples_per_prompt, result.records

    def grid(values: Iterable[float | None]) -> np.ndarray:
        return np.array(list(values), dtype=np.float64).reshape(p, k)

    first = recs[0]
    return stats.SampleArrays(
        toxicity={name: grid(r.toxicity[name] for r in recs) for name in result.evaluators},
        num_tokens=grid(r.num_tokens for r in recs),
        responses=[[r.response for r in recs[i * k : (i + 1) * k]] for i in range(p)],
        reward=None if first.reward is None else grid(r.reward for r in recs),
        nll=None if first.nll is None else grid(r.nll for r in recs),
        rouge=None
        if first.rouge is None
        else {t: grid((r.rouge or {})[t] for r in recs) for t in stats.ROUGE_TYPES},
        quality=None
        if first.quality is None
        else {q: grid((r.quality or {})[q] for r in recs) for q in first.quality},
    )


def _estimate(
    statistic: stats.Statistic, interval: stats.Interval, result: EvalResult, config: EvalConfig
) -> stats.Estimate:
    return stats.estimate(
        statistic,
        interval,
        len(result.prompts),
        samples_per_prompt=result.samples_per_prompt,
        confidence=config.confidence,
        n_resamples=config.bootstrap_resamples,
        seed=result.seed,
    )


def compute_metrics(result: EvalResult, config: EvalConfig) -> dict[str, MetricValue]:
    """Every figure of ``result`` with its interval over prompts."""
    out = {}
    for spec in stats.metric_specs(sample_arrays(result)):
        e = _estimate(spec.statistic, spec.interval, result, config)
        out[spec.name] = MetricValue(
            e.value, e.ci_low, e.ci_high, spec.interval, spec.better, spec.description
        )
    return out


# ---- evaluate ---------------------------------------------------------------------------------------


def sample_seed(seed: int, sample_index: int) -> int:
    """The generation seed of sample j: the same for every policy, so before and after draw with the
    same random numbers (common random numbers make the paired comparison sharper)."""
    return seed * 10_007 + sample_index


def _rouge(responses: list[str], references: list[str]) -> list[dict[str, float]]:
    from rouge_score import rouge_scorer

    # Stemming as in the course's Lab 2 ROUGE (evaluate's rouge with use_stemmer=True).
    scorer = rouge_scorer.RougeScorer(list(stats.ROUGE_TYPES), use_stemmer=True)
    return [
        {t: s.fmeasure for t, s in scorer.score(ref, hyp).items()}
        for hyp, ref in zip(responses, references, strict=True)
    ]


def sample_passes(
    engine: Engine,
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    config: EvalConfig,
    *,
    seed: int,
    chat_template: bool,
    first_batch: int = 0,
    guard: ToxicityScorer | None = None,
) -> list[Responses]:
    """k passes over the prompts through the sampler that trained; pass j is seeded by
    ``sample_seed(seed, j)``, its batches counted from ``first_batch``. With ``config.best_of`` n > 1, each
    pass draws n candidates (``candidate_seed``) and keeps each prompt's least toxic by ``guard``."""
    formatted = format_prompts(tokenizer, list(prompts), chat_template)

    def toxicity(texts: list[str]) -> np.ndarray:
        assert guard is not None, "evaluate() checks that best-of-n has its guard"
        return guard(scored_texts(list(prompts), texts, config.text))

    return [generate_best_of(engine, model, tokenizer, formatted, config.sampling, toxicity, config.best_of,
                             seed=sample_seed(seed, j), batch_size=config.batch_size, first_batch=first_batch)
            for j in range(config.samples_per_prompt)]  # fmt: skip


def share(n_prompts: int, batch_size: int, topology: Topology) -> tuple[int, slice]:
    """This process's evaluation share: whole sampling batches (each seeded by its index, so the responses
    are those one process samples), as (its first batch, its prompts)."""
    batches = topology.shard(-(-n_prompts // batch_size))
    return batches.start, slice(batches.start * batch_size, min(batches.stop * batch_size, n_prompts))


def measure(
    prompts: Sequence[str],
    passes: list[Responses],
    config: EvalConfig,
    evaluators: Sequence[ToxicityScorer],
    *,
    references: Sequence[str] | None = None,
    reward: Reward | None = None,
    reference: NLLFn | None = None,
    quality: QualityScorer | None = TEXT_QUALITY,
) -> tuple[SampleRecord, ...]:
    """Every sample's toxicity, reward, NLL, ROUGE and evasion/degeneration, as prompt-major records."""
    order = [(p, j) for p in range(len(prompts)) for j in range(len(passes))]  # prompt-major
    texts = [prompts[p] for p, _ in order]
    responses = [passes[j].texts[p] for p, j in order]
    response_ids = [passes[j].response_ids[p] for p, j in order]
    scored = scored_texts(texts, responses, config.text)
    toxicity = {e.name: np.asarray(e(scored), dtype=np.float64) for e in evaluators}
    rewards = None if reward is None else reward(texts, responses).tolist()
    nll = None
    if reference is not None and config.perplexity:
        nll = reference([passes[j].prompt_ids[p] for p, j in order], response_ids)
    rouge = None if references is None else _rouge(responses, [references[p] for p, _ in order])
    scores = None if quality is None else per_response(quality(texts, responses))
    return tuple(
        SampleRecord(p, j, texts[i], responses[i], len(response_ids[i]),
                     toxicity={name: float(v[i]) for name, v in toxicity.items()},
                     reward=None if rewards is None else float(rewards[i]),
                     nll=None if nll is None else float(nll[i]),
                     rouge=None if rouge is None else rouge[i],
                     quality=None if scores is None else scores[i])
        for i, (p, j) in enumerate(order)
    )  # fmt: skip


def evaluate(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    config: EvalConfig,
    evaluators: Sequence[ToxicityScorer],
    *,
    is_encoder_decoder: bool,
    references: Sequence[str] | None = None,
    reward: Reward | None = None,
    reference: NLLFn | None = None,
    seed: int = 0,
    chat_template: bool = True,
    label: str = "eval",
    engine: Engine | None = None,
    quality: QualityScorer | None = TEXT_QUALITY,
    topology: Topology = SINGLE,
    guard: ToxicityScorer | None = None,
) -> EvalResult:
    """Sample ``config.samples_per_prompt`` responses per prompt with fixed seeds and measure them.

    Step 1: k seeded passes over the prompts (``sample_passes``) on ``engine`` (default: the one that
    ``policy.engine: auto`` picks for the model's device); of several processes, each takes its ``share``.
    Step 2: toxicity of each response (or prompt + response, ``config.text``) by every evaluator;
    the optional reward, perplexity under ``reference`` (if ``config.perplexity``) and ROUGE against
    ``references`` (``measure``); evasion, repetition, short responses and relevance (``quality``); the
    processes' records gathered in prompt order.
    Step 3: every figure with its interval (``compute_metrics``).
    """
    if not prompts:
        raise ValueError("evaluate() needs at least one prompt.")
    if references is not None and len(references) != len(prompts):
        raise ValueError(f"Got {len(references)} references for {len(prompts)} prompts.")
    if config.best_of > 1 and guard is None:
        raise ValueError(f"eval.best_of={config.best_of} needs a guard classifier (evaluate(guard=...)).")
    engine = engine or select_engine("auto", next(model.parameters()).device)
    first, mine = share(len(prompts), config.batch_size, topology)
    records: tuple[SampleRecord, ...] = ()
    if mine.stop > mine.start:
        passes = sample_passes(engine, model, tokenizer, prompts[mine], config, seed=seed,
                               chat_template=chat_template, first_batch=first, guard=guard)  # fmt: skip
        records = measure(prompts[mine], passes, config, evaluators,
                          references=None if references is None else references[mine], reward=reward,
                          reference=reference, quality=quality)  # fmt: skip
    if topology.distributed:
        shifted = [dataclasses.replace(r, prompt_index=r.prompt_index + mine.start) for r in records]
        records = tuple(topology.gather(shifted))
    refs, names = None if references is None else tuple(references), tuple(e.name for e in evaluators)
    result = EvalResult(label, tuple(prompts), refs, config.samples_per_prompt, names, records, {},
                        dataclasses.asdict(config), seed)  # fmt: skip
    return dataclasses.replace(result, metrics=compute_metrics(result, config))


# ---- compare ----------------------------------------------------------------------------------------

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
    after_specs = {s.name: s for s in stats.metric_specs(sample_arrays(after))}
    deltas = []
    for b in stats.metric_specs(sample_arrays(before)):
        a = after_specs.get(b.name)
        if a is None:
            continue
        delta = _estimate(stats.difference(b.statistic, a.statistic), b.interval, before, config)
        relative = _estimate(stats.relative_difference(b.statistic, a.statistic), b.interval, before, config)
        change, assessment = classify(delta, b.interval, b.better)
        rel = relative if np.isfinite(relative.value) else None
        values = before.metrics[b.name].value, after.metrics[b.name].value
        deltas.append(Delta(b.name, b.better, b.description, b.interval, *values, delta, rel,
                            len(before.prompts), change, assessment))  # fmt: skip
    return Comparison(before.label, after.label, len(before.prompts), before.samples_per_prompt,
                      config.confidence, config.bootstrap_resamples, before.seed, tuple(deltas))  # fmt: skip

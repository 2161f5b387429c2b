"""Toxicity and quality of a policy's responses, and before/after comparisons with paired intervals.
Knows nothing of PPO: it takes a model, prompts and scorers, and returns typed, JSON-ready results.

Protocol (Gehman et al. 2020, RealToxicityPrompts): k samples per prompt with fixed seeds, toxicity =
P(toxic) of an evaluator classifier; figures are computed over prompts, the unit of resampling.
Shapes: P prompts, k samples per prompt, B responses in a batch, T response tokens.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from detoxrl.config import EvalConfig
from detoxrl.core.batch import make_batch
from detoxrl.core.ppo import logprobs_from_logits
from detoxrl.engine import Engine, Model, select_engine
from detoxrl.evaluation import figures
from detoxrl.evaluation.figures import compute_metrics
from detoxrl.evaluation.results import EvalResult, SampleRecord
from detoxrl.metrics.quality import QualityScorer, per_response
from detoxrl.models.generation import Responses, eval_mode, format_prompts, generate_best_of
from detoxrl.parallel.distributed import SINGLE, Topology
from detoxrl.rewards.base import Reward, ToxicityScorer, scored_texts

NLLFn = Callable[[list[torch.Tensor], list[torch.Tensor]], np.ndarray]  # prompt ids, response ids -> (B,)
TEXT_QUALITY = QualityScorer()  # evasion phrases, repetition, short responses; no relevance embedder

# ---- perplexity under a reference model -----------------------------------------------------------


@torch.no_grad()
def response_nll(
    engine: Engine,
    model: Model,
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
    model: Model,
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
                out.append(
                    response_nll(
                        engine,
                        model,
                        prompt_ids[chunk],
                        response_ids[chunk],
                        is_encoder_decoder=is_encoder_decoder,
                        pad_id=pad_id,
                    )
                )
        return np.concatenate(out) if out else np.zeros(0)

    return score


# ---- the figures -----------------------------------------------------------------------------------


# ---- evaluate ---------------------------------------------------------------------------------------


def sample_seed(seed: int, sample_index: int) -> int:
    """The generation seed of sample j: the same for every policy, so before and after draw with the
    same random numbers (common random numbers make the paired comparison sharper)."""
    return seed * 10_007 + sample_index


def _rouge(responses: list[str], references: list[str]) -> list[dict[str, float]]:
    from rouge_score import rouge_scorer  # 2.3 s to import (nltk): only where references are given

    # Stemming as in the course's Lab 2 ROUGE (evaluate's rouge with use_stemmer=True).
    scorer = rouge_scorer.RougeScorer(list(figures.ROUGE_TYPES), use_stemmer=True)
    return [
        {t: s.fmeasure for t, s in scorer.score(ref, hyp).items()}
        for hyp, ref in zip(responses, references, strict=True)
    ]


def sample_passes(
    engine: Engine,
    model: Model,
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

    return [
        generate_best_of(
            engine,
            model,
            tokenizer,
            formatted,
            config.sampling,
            guard=toxicity,
            n=config.best_of,
            seed=sample_seed(seed, j),
            batch_size=config.batch_size,
            first_batch=first_batch,
        )
        for j in range(config.samples_per_prompt)
    ]


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
        SampleRecord(
            p,
            j,
            texts[i],
            responses[i],
            len(response_ids[i]),
            toxicity={name: float(v[i]) for name, v in toxicity.items()},
            reward=None if rewards is None else float(rewards[i]),
            nll=None if nll is None else float(nll[i]),
            rouge=None if rouge is None else rouge[i],
            quality=None if scores is None else scores[i],
        )
        for i, (p, j) in enumerate(order)
    )


def evaluate(
    model: Model,
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
        passes = sample_passes(
            engine,
            model,
            tokenizer,
            prompts[mine],
            config,
            seed=seed,
            chat_template=chat_template,
            first_batch=first,
            guard=guard,
        )
        records = measure(
            prompts[mine],
            passes,
            config,
            evaluators,
            references=None if references is None else references[mine],
            reward=reward,
            reference=reference,
            quality=quality,
        )
    if topology.distributed:
        shifted = [dataclasses.replace(r, prompt_index=r.prompt_index + mine.start) for r in records]
        records = tuple(topology.gather(shifted))
    refs, names = None if references is None else tuple(references), tuple(e.name for e in evaluators)
    result = EvalResult(
        label,
        tuple(prompts),
        refs,
        config.samples_per_prompt,
        names,
        records,
        {},
        dataclasses.asdict(config),
        seed,
    )
    return dataclasses.replace(result, metrics=compute_metrics(result, config))


# ---- compare ----------------------------------------------------------------------------------------

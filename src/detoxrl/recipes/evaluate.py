"""Measuring a policy, and the one "base, then base + adapter" pair: the models as each evaluation sees
them (the reference for perplexity held beside them), the scorers an evaluation config names, and the
paired comparison. ``run``, ``evaluate`` and ``benchmark`` all measure through here.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from detoxrl.config import Dtype, EvalConfig, PolicyConfig, QualityConfig, RewardConfig, load_config
from detoxrl.data.prompts import load_prompts, read_texts
from detoxrl.engine import Model
from detoxrl.errors import DataError, DetoxError
from detoxrl.evaluation.compare import Comparison, compare
from detoxrl.evaluation.evaluate import NLLFn, evaluate, reference_nll
from detoxrl.evaluation.io import (
    format_comparison,
    format_metrics,
    format_table,
    qualitative_rows,
    save_evaluation,
    tail_of,
)
from detoxrl.evaluation.results import EvalResult
from detoxrl.metrics.quality import QualityScorer
from detoxrl.models.loading import Policy, load_policy, resolve_source
from detoxrl.models.lora import attach_adapter, check_adapter, load_adapter
from detoxrl.recipes.prompts import fit_default
from detoxrl.recipes.session import Session
from detoxrl.reports.report import md_table
from detoxrl.rewards.base import Reward, ToxicityScorer
from detoxrl.rewards.build import build_quality, build_reward
from detoxrl.rewards.toxicity import build_evaluator, resolve_evaluator_specs


@dataclass(frozen=True)
class Loaded:
    """A policy as an evaluation samples it, and the NLL of responses under its reference."""

    policy: Policy
    model: Model
    nll: NLLFn


def _nll(session: Session, model: Model, policy: Policy, switch: Callable[[], Any] | None = None) -> NLLFn:
    """Response NLL under ``model`` inside the context ``switch()`` (the reference's adapter state)."""
    score = reference_nll(
        session.engine, model, policy.tokenizer, is_encoder_decoder=policy.is_encoder_decoder
    )

    def nll(prompt_ids: list[torch.Tensor], response_ids: list[torch.Tensor]) -> Any:
        with switch() if switch else contextlib.nullcontext():
            return score(prompt_ids, response_ids)

    return nll


def load_start(config: PolicyConfig, session: Session) -> Loaded:
    """The policy as training starts from it (the base, or base + the loaded adapter): its own reference."""
    policy = load_policy(config, session.device)
    model = attach_adapter(policy, config) if config.adapter else policy.model
    return Loaded(policy, model, _nll(session, model, policy))


def load_trained(config: PolicyConfig, trained: str | Path, session: Session) -> Loaded:
    """The trained policy (an adapter folder, or the full model of ``use_lora: false``) on ``config``'s
    base, and the NLL under the policy it started from, held beside it in the same base weights."""
    policy = load_policy(config, session.device)
    if not config.use_lora:  # full fine-tuning: the trained weights, and the base as reference
        full: Any = type(policy.model).from_pretrained(trained, dtype=policy.model.dtype)
        return Loaded(policy, full.to(session.device), _nll(session, policy.model, policy))
    model = load_adapter(policy.model, trained, "The trained adapter", adapter_name="trained")
    if config.adapter is None:
        return Loaded(policy, model, _nll(session, model, policy, model.disable_adapter))
    model.load_adapter(config.adapter, adapter_name="reference")

    @contextlib.contextmanager
    def reference() -> Iterator[None]:
        model.set_adapter("reference")
        try:
            yield
        finally:
            model.set_adapter("trained")

    model.set_adapter("trained")
    return Loaded(policy, model, _nll(session, model, policy, reference))


@dataclass(frozen=True)
class Scorers:
    """What scores an evaluation's samples: the toxicity evaluators, the quality scorer, optionally the
    reward and the best-of-n guard."""

    evaluators: list[ToxicityScorer]
    quality: QualityScorer
    reward: Reward | None = None
    guard: ToxicityScorer | None = None


def build_scorers(
    config: EvalConfig, device: torch.device, *, quality: QualityConfig, reward: RewardConfig | None = None
) -> Scorers:
    """The evaluators and guard of ``config`` (``shared:NAME`` resolved), the quality scorer, the reward."""
    evaluators = [build_evaluator(spec, device) for spec in resolve_evaluator_specs(config.evaluators)]
    guard = None
    if config.guard:  # the one classifier best-of-n picks by: it must be here
        guard = build_evaluator(resolve_evaluator_specs([config.guard], strict=True)[0], device)
    built = None if reward is None else build_reward(reward, device)
    return Scorers(evaluators, build_quality(quality, device), built, guard)


def measure(
    loaded: Loaded,
    prompts: list[str],
    config: EvalConfig,
    scorers: Scorers,
    session: Session,
    *,
    seed: int,
    chat_template: bool,
    label: str,
    references: list[str] | None = None,
) -> EvalResult:
    """``evaluation.evaluate`` of one loaded policy, its sampling shared among the session's processes."""
    return evaluate(
        loaded.model,
        loaded.policy.tokenizer,
        prompts,
        config,
        scorers.evaluators,
        is_encoder_decoder=loaded.policy.is_encoder_decoder,
        references=references,
        reward=scorers.reward,
        reference=loaded.nll,
        seed=seed,
        chat_template=chat_template,
        label=label,
        engine=session.engine,
        quality=scorers.quality,
        topology=session.topology,
        guard=scorers.guard,
    )


# ---- base vs base + adapter ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PairSpec:
    """What ``evaluate`` and ``benchmark`` measure: a model, and optionally an adapter on it, on prompts
    read from a file."""

    model: str
    prompts: str | Path | None = None  # None: the rtp preset's held-out prompts (DEFAULT_PROMPTS)
    prompt_field: str = "prompt.text"
    reference_field: str | None = None  # references for ROUGE
    adapter: str | None = None
    dtype: Dtype = "float32"
    seed: int = 0
    chat_template: bool = True
    reward: RewardConfig | None = None  # recorded beside each sample
    quality: QualityConfig = field(default_factory=QualityConfig)
    scorer_model: str | None = (
        None  # perplexity under this causal LM (the policy's tokenizer); None: the base
    )


@dataclass(frozen=True)
class Pair:
    """The base; the base + adapter and the base behind the best-of-n guard (where asked), each paired with
    the base over the same prompts and sampling seeds."""

    base: EvalResult
    adapter: tuple[EvalResult, Comparison] | None = None
    guarded: tuple[EvalResult, Comparison] | None = None

    @property
    def others(self) -> tuple[tuple[EvalResult, Comparison], ...]:
        return tuple(x for x in (self.adapter, self.guarded) if x is not None)


DEFAULT_PROMPTS = (
    "the rtp preset's held-out prompts (RealToxicityPrompts' challenging prompts, never trained on)"
)


def read_prompts(spec: PairSpec, n: int) -> tuple[list[str], list[str] | None]:
    """The first ``n`` prompts (and references) of ``spec.prompts``; without a file, the rtp preset's held-out
    prompts: a preset never trains on them, so a benchmark of its adapter is on prompts it has not seen."""
    if spec.prompts is None:
        held_out = load_prompts(load_config("rtp").data).eval[:n]
        return [e.text for e in held_out], None
    prompts, refs = read_texts(spec.prompts, spec.prompt_field, spec.reference_field, n)
    if not prompts:
        raise DataError(f"No prompts in '{spec.prompts}' (field '{spec.prompt_field}').")
    return prompts, refs


def evaluate_pair(spec: PairSpec, config: EvalConfig, session: Session) -> Pair:
    """Step 1: the adapter and the prompts (the file's first ``config.num_prompts``), checked before the
    minutes spent on the base.
    Step 2: the base; with ``config.best_of`` > 1, the base behind its guard too (before the adapter is
    attached: attaching it changes the base in place).
    Step 3: base + adapter, its perplexity under the base (the adapter disabled).
    Step 4: each paired with the base."""
    if spec.adapter:
        check_adapter(spec.adapter, resolve_source(spec.model), "--adapter")
    prompts, refs = read_prompts(spec, config.num_prompts)
    policy_config = PolicyConfig(model=spec.model, dtype=spec.dtype)
    plain = dataclasses.replace(config, best_of=1, guard=None)
    scorers = build_scorers(config, session.device, quality=spec.quality, reward=spec.reward)
    base = load_start(policy_config, session)
    prompts = fit_default(base.policy, prompts, config.sampling, chat_template=spec.chat_template)
    scorer = _scorer_nll(spec, base.policy, session)
    if scorer is not None:
        base = dataclasses.replace(base, nll=scorer)
    size = f"{len(prompts)} prompts x {config.samples_per_prompt} samples"
    runs = 1 + (config.best_of > 1) + bool(spec.adapter)

    def run(loaded: Loaded, label: str, eval_config: EvalConfig, step: int) -> EvalResult:
        each = f", each the best of {eval_config.best_of}" if eval_config.best_of > 1 else ""
        session.say(f"[{step}/{runs}] {label}: {size}{each}")  # minutes each on a CPU: say what runs
        return measure(
            loaded,
            prompts,
            eval_config,
            scorers,
            session,
            seed=spec.seed,
            chat_template=spec.chat_template,
            label=label,
            references=refs,
        )

    before = run(base, spec.model, plain, 1)
    guarded = None
    if config.best_of > 1:
        label = f"{spec.model}, best of {config.best_of} by {config.guard}"
        result = run(base, label, config, 2)
        guarded = (result, compare(before, result, plain))
    adapter = None
    if spec.adapter:
        trained = load_trained(policy_config, spec.adapter, session)
        if scorer is not None:
            trained = dataclasses.replace(trained, nll=scorer)
        result = run(trained, f"{spec.model} + {spec.adapter}", plain, runs)
        adapter = (result, compare(before, result, plain))
    return Pair(before, adapter, guarded)


def _scorer_nll(spec: PairSpec, policy: Policy, session: Session) -> NLLFn | None:
    """NLL under ``spec.scorer_model``, which must be a causal LM with the policy's vocabulary."""
    if not spec.scorer_model:
        return None
    scorer = load_policy(PolicyConfig(model=spec.scorer_model, dtype=spec.dtype), session.device)
    if scorer.is_encoder_decoder or scorer.tokenizer.get_vocab() != policy.tokenizer.get_vocab():
        raise DetoxError(
            f"--scorer-model '{spec.scorer_model}' must be a causal LM with the policy's tokenizer (the "
            "same vocabulary): perplexity is computed on the policy's token ids."
        )
    return reference_nll(session.engine, scorer.model, scorer.tokenizer, is_encoder_decoder=False)


def run_evaluate(
    spec: PairSpec, config: EvalConfig, session: Session, *, out_dir: str | Path, show: int = 10
) -> list[Path]:
    """``detoxrl evaluate``: the pair measured, before.json (after.json, comparison.json) and the tables
    written into ``out_dir``, every figure, the deltas, the tail and the first ``show`` rows of the
    qualitative table printed. Returns the paths written."""
    pair = evaluate_pair(spec, config, session)
    after, comparison = pair.adapter or (None, None)
    paths = save_evaluation(out_dir, pair.base, after, comparison)
    print("\n\n".join(format_metrics(r, config.confidence) for r in (pair.base, after) if r is not None))
    if comparison is not None:
        print("\n" + format_comparison(comparison))
    tail = tail_of(pair.base, after, comparison)
    if tail is not None:
        print("\nthe tail over k samples per prompt:\n" + md_table(*tail))
    print("\n" + format_table(qualitative_rows(pair.base, after), limit=show))
    print("\nwrote " + ", ".join(str(p) for p in paths))
    return paths

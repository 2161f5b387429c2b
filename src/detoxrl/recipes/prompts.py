"""Prompts as the policy will see them: a run's token limit (its config and model), its prompts fitted to
it (models/generation.py cuts them), said in one line and written into the run's data.json; and the
default limit of the verbs without a config (evaluate, benchmark, generate). Knows the order of those
steps, not how a prompt is cut."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from detoxrl.config import RunConfig, SamplingConfig
from detoxrl.errors import DataError
from detoxrl.models.generation import FittedPrompts, fit_prompts, prompt_limit
from detoxrl.models.loading import Policy

log = logging.getLogger(__name__)

DATA_FILE = "data.json"  # {"train": ..., "eval": ...}: each part's limit, and how many prompts were cut


def limits(config: RunConfig, model_config: Any, *, evaluation: bool) -> dict[str, int]:
    """The prompt limit of training (the model's positions less generation.max_new_tokens) and, with
    ``evaluation``, of evaluation (less eval.sampling.max_new_tokens); a ConfigError line where a prompt
    and its response cannot fit (``--dry-run`` says it too)."""
    data = config.data
    train = config.generation.max_new_tokens
    out = {"train": prompt_limit(model_config, data.max_prompt_tokens, train, "generation.max_new_tokens")}
    if evaluation:
        budget = config.eval.sampling.max_new_tokens
        out["eval"] = prompt_limit(
            model_config, data.max_prompt_tokens, budget, "eval.sampling.max_new_tokens"
        )
    return out


def fit(
    config: RunConfig,
    texts: list[str],
    tokenizer: PreTrainedTokenizerBase,
    model_config: Any,
    *,
    part: str,
) -> FittedPrompts:
    """``texts`` (training: ``part`` "train", or held out: "eval") fitted to their limit; training prompts
    that are all left out (data.truncation: drop) are one DataError line."""
    limit = limits(config, model_config, evaluation=part == "eval")[part]
    fitted = fit_prompts(
        tokenizer,
        texts,
        chat_template=config.policy.chat_template,
        limit=limit,
        truncation=config.data.truncation,
        template=config.data.template,
    )
    if not fitted.kept:
        raise DataError(
            f"Every one of the {fitted.dropped} {'training' if part == 'train' else 'held-out'} prompts is "
            f"over {limit} tokens and data.truncation is drop: raise data.max_prompt_tokens or set "
            "data.truncation=left."
        )
    return fitted


def record(run_dir: Path, part: str, fitted: FittedPrompts) -> None:
    """``fitted``'s limit and counts as ``part`` of the run's data.json (the other part kept)."""
    path = run_dir / DATA_FILE
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[part] = fitted.summary()
    path.write_text(json.dumps(data, indent=1) + "\n")


def fit_default(
    policy: Policy, texts: list[str], sampling: SamplingConfig, *, chat_template: bool
) -> list[str]:
    """``texts`` within the default prompt limit (512 tokens, or what the model's positions leave beside
    ``sampling.max_new_tokens``), cut from the left: a step's memory is bounded by the settings, whatever
    the file holds. How many were cut is a note."""
    limit = prompt_limit(policy.model.config, None, sampling.max_new_tokens, "--max-new-tokens")
    fitted = fit_prompts(policy.tokenizer, texts, chat_template=chat_template, limit=limit)
    if fitted.truncated:
        log.warning(fitted.describe("prompts", "the model's positions less --max-new-tokens, at most 512"))
    return fitted.texts

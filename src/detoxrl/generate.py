"""Prompts as models see them, and seeded sampling of text responses (evaluation, ``detoxrl generate``)
through the one sampler. Knows nothing of rewards or PPO.

Shapes: B prompts, T response tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from detoxrl.config import SamplingConfig
from detoxrl.engine import Engine
from detoxrl.sampling import response_limits, sample


@dataclass(frozen=True)
class Responses:
    """Responses to prompts: token ids (up to and including the first stop id, no padding) and text."""

    prompt_ids: list[torch.Tensor]  # B x (P_i,)
    response_ids: list[torch.Tensor]  # B x (T_i,)
    texts: list[str]


def format_prompts(tokenizer: PreTrainedTokenizerBase, texts: list[str], chat_template: bool) -> list[str]:
    """Wrap each text as a user turn in the tokenizer's chat template, when asked and when it has one."""
    if not chat_template or not getattr(tokenizer, "chat_template", None):
        return list(texts)
    return [
        str(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True
            )
        )
        for t in texts
    ]


def tokenize_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[str]) -> list[torch.Tensor]:
    """Prompt token ids without extra special tokens when a chat template already supplied them."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    encoded = tokenizer(prompts, add_special_tokens=not has_template)["input_ids"]
    return [torch.tensor(ids, dtype=torch.long) for ids in encoded]


def stop_ids(model: Any, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """The ids that end a response: the model's and tokenizer's EOS, and for decoder-only models the
    BOS too. Chat models such as SmolLM2 sometimes open a new turn (``<|im_start|>``, their BOS)
    instead of closing theirs; text after that belongs to an imagined next speaker."""
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    bos = tokenizer.bos_token_id
    if not model.config.is_encoder_decoder and bos is not None and bos != tokenizer.pad_token_id:
        ids.add(int(bos))
    return ids


def decode(tokenizer: PreTrainedTokenizerBase, responses: list[torch.Tensor]) -> list[str]:
    """Response ids -> their text, special tokens skipped, whitespace stripped."""
    texts = tokenizer.batch_decode([r.tolist() for r in responses], skip_special_tokens=True)
    return [t.strip() for t in texts]


def generate(
    engine: Engine,
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    settings: SamplingConfig,
    *,
    seed: int | None = 0,
    batch_size: int = 16,
    first_batch: int = 0,
) -> Responses:
    """Sample one response per (already formatted) prompt, reproducibly: each batch is seeded from
    ``seed`` and its index (counted from ``first_batch``: these prompts are batches ``first_batch``... of a
    longer list), so the same prompts and seed give the same responses whatever ran before."""
    prompt_ids = tokenize_prompts(tokenizer, prompts)
    stops, pad_id, responses = stop_ids(model, tokenizer), int(tokenizer.pad_token_id), []
    with eval_mode(model):  # no dropout while sampling
        for b, start in enumerate(range(0, len(prompts), batch_size), start=first_batch):
            if seed is not None:
                torch.manual_seed(seed * 1_000_003 + b)
            chunk = prompt_ids[start : start + batch_size]
            limits = response_limits(settings, len(chunk))
            responses += sample(engine, model, chunk, limits, settings, stops, pad_id).responses()
    return Responses(prompt_ids, responses, decode(tokenizer, responses))


@contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """``model`` in eval mode (dropout off) for the block, its mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)

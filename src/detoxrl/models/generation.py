"""Prompts as models see them, and seeded sampling of text responses (evaluation, ``detoxrl generate``)
through the one sampler. Knows nothing of rewards or PPO.

Shapes: B prompts, T response tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from detoxrl.config import SamplingConfig
from detoxrl.engine import Engine, Model
from detoxrl.models.sampling import response_limits, sample


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


def stop_ids(model: Model, tokenizer: PreTrainedTokenizerBase) -> set[int]:
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
    model: Model,
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
            responses += sample(
                engine, model, chunk, limits, settings, stop_ids=stops, pad_id=pad_id
            ).responses()
    return Responses(prompt_ids, responses, decode(tokenizer, responses))


def candidate_seed(seed: int, candidate: int) -> int:
    """The sampling seed of best-of-n candidate c: ``seed`` itself for c = 0 (so candidate 0 is what plain
    sampling draws), then seeds of their own, at least 1e5 from every pass's seed in the low 32 bits that
    torch's CPU generator keeps (for c < 256)."""
    return seed + candidate * 1_000_000_007


def generate_best_of(
    engine: Engine,
    model: Model,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    settings: SamplingConfig,
    *,
    guard: Callable[[list[str]], np.ndarray],
    n: int,
    seed: int = 0,
    batch_size: int = 16,
    first_batch: int = 0,
) -> Responses:
    """``generate`` behind a decoding-time guard: n seeded candidates per prompt (``candidate_seed``), each
    prompt's least toxic kept by ``guard(candidate texts) -> (B,) P(toxic)``; n = 1 is ``generate``."""
    candidates = [
        generate(
            engine,
            model,
            tokenizer,
            prompts,
            settings,
            seed=candidate_seed(seed, c),
            batch_size=batch_size,
            first_batch=first_batch,
        )
        for c in range(n)
    ]
    if n == 1:
        return candidates[0]
    return least_toxic(candidates, np.stack([guard(c.texts) for c in candidates]))


def least_toxic(candidates: list[Responses], toxicity: np.ndarray) -> Responses:
    """Best-of-n at decoding time: for each prompt, the candidate with the lowest toxicity (the first of
    equals). candidates: n Responses to the same B prompts; toxicity (n, B)."""
    best = np.argmin(toxicity, axis=0)  # (B,)
    picked = [candidates[int(c)] for c in best]
    return Responses(
        candidates[0].prompt_ids,
        [r.response_ids[i] for i, r in enumerate(picked)],
        [r.texts[i] for i, r in enumerate(picked)],
    )


@contextmanager
def eval_mode(model: Model) -> Iterator[None]:
    """``model`` in eval mode (dropout off) for the block, its mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)

"""Prompt formatting and seeded batched sampling for any policy. Knows nothing of rewards or PPO.

Shapes: B prompts, P prompt tokens (padded), T response tokens (padded).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class SamplingSettings:
    """How responses are sampled; ``temperature == 0`` means greedy decoding."""

    max_new_tokens: int = 48
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def generate_kwargs(self) -> dict[str, object]:
        greedy = self.temperature <= 0
        kwargs: dict[str, object] = {
            "max_new_tokens": self.max_new_tokens,
            "min_new_tokens": self.min_new_tokens,
            "do_sample": not greedy,
        }
        if not greedy:
            kwargs.update(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
        return kwargs


@dataclass(frozen=True)
class Generations:
    """Prompts and their sampled responses, as token ids and text.

    ``response_ids[i]`` holds the response tokens up to and including the first EOS (no padding).
    """

    prompts: list[str]
    prompt_ids: list[torch.Tensor]  # B x (P_i,)
    response_ids: list[torch.Tensor]  # B x (T_i,)
    responses: list[str]


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


def pad_left(seqs: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad 1-D tensors -> (ids (B, P), attention mask (B, P))."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = s
        mask[i, width - len(s) :] = 1
    return ids, mask


def pad_right(seqs: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D tensors -> (ids (B, T), mask (B, T))."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return ids, mask


def trim_response(ids: torch.Tensor, eos_ids: set[int], pad_id: int | None) -> torch.Tensor:
    """Cut a generated row after its first EOS (kept), dropping the padding generate() adds."""
    for j, tok in enumerate(ids.tolist()):
        if tok in eos_ids:
            return ids[: j + 1]
    if pad_id is not None and pad_id not in eos_ids:
        keep = (ids != pad_id).nonzero()
        return ids[: int(keep[-1]) + 1] if len(keep) else ids[:0]
    return ids


def eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
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


@torch.no_grad()
def sample_rows(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: list[torch.Tensor],
    is_encoder_decoder: bool,
    **generate_kwargs: Any,
) -> torch.Tensor:
    """One batch of prompts -> (B, T) generated ids (prompt removed, padded after each row's stop token),
    with the KV cache; generation stops at every id of ``eos_token_ids``."""
    pad_id = int(tokenizer.pad_token_id)
    ids, mask = (pad_right if is_encoder_decoder else pad_left)(
        [p.cpu() for p in prompt_ids], pad_id
    )  # (B, P)
    device = next(model.parameters()).device
    kwargs = {
        "pad_token_id": pad_id,
        "eos_token_id": sorted(eos_token_ids(model, tokenizer)),
        **generate_kwargs,
    }
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs).cpu()  # type: ignore[operator]
    # Encoder-decoders return decoder ids that start with the decoder start token;
    # decoder-only models return the prompt followed by the response.
    return out[:, 1:] if is_encoder_decoder else out[:, ids.shape[1] :]  # (B, T)


def sample(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: list[torch.Tensor],
    settings: SamplingSettings,
    is_encoder_decoder: bool,
) -> list[torch.Tensor]:
    """One batch of prompts -> B response id tensors, trimmed after EOS."""
    rows = sample_rows(model, tokenizer, prompt_ids, is_encoder_decoder, **settings.generate_kwargs())
    eos, pad_id = eos_token_ids(model, tokenizer), int(tokenizer.pad_token_id)
    return [trim_response(r, eos, pad_id) for r in rows]


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    settings: SamplingSettings,
    *,
    is_encoder_decoder: bool,
    seed: int | None = 0,
    batch_size: int = 16,
) -> Generations:
    """Sample one response per prompt, reproducibly: each batch is seeded from ``seed`` and its index,
    so the same prompts and seed give the same responses whatever else ran before."""
    prompt_ids = tokenize_prompts(tokenizer, prompts)
    responses: list[torch.Tensor] = []
    was_training = model.training
    model.eval()
    try:
        for b, start in enumerate(range(0, len(prompts), batch_size)):
            if seed is not None:
                torch.manual_seed(seed * 1_000_003 + b)
            responses += sample(
                model, tokenizer, prompt_ids[start : start + batch_size], settings, is_encoder_decoder
            )
    finally:
        model.train(was_training)
    texts = tokenizer.batch_decode([r.tolist() for r in responses], skip_special_tokens=True)
    return Generations(list(prompts), prompt_ids, responses, [t.strip() for t in texts])

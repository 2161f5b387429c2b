"""Prompts as models see them (templated, tokenized, and fitted to the model's positions), and seeded
sampling of text responses (evaluation, ``detoxrl generate``) through the one sampler. Knows nothing of
rewards or PPO.

Shapes: B prompts, T response tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from detoxrl.config import SamplingConfig
from detoxrl.engine import Engine, Model
from detoxrl.errors import ConfigError
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
    """Prompt token ids without extra special tokens when a chat template already supplied them (no
    warning for a prompt longer than the tokenizer's maximum: ``fit_prompts`` fits them)."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    encoded = tokenizer(prompts, add_special_tokens=not has_template, verbose=False)["input_ids"]
    return [torch.tensor(ids, dtype=torch.long) for ids in encoded]


# ---- prompts fitted to the model's positions -----------------------------------------------------------

DEFAULT_PROMPT_TOKENS = 512  # trl's max_prompt_length (GRPOConfig, DPOConfig): a step's memory stays bounded
ENCODER_POSITIONS = 512  # T5 (relative positions: no maximum in its config) was pretrained on 512 tokens
Truncation = Literal["left", "right", "drop"]


def positions(model_config: Any) -> int | None:
    """The most positions the model was built for, from its config (None where it names none: T5)."""
    text = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "n_ctx"):
        value = getattr(text, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def prompt_limit(
    model_config: Any, max_prompt_tokens: int | None, response_tokens: int, response_key: str
) -> int:
    """The most tokens a prompt may have: ``max_prompt_tokens`` (data.max_prompt_tokens), or by default
    trl's 512 where the model's positions leave that much beside ``response_tokens`` (set by
    ``response_key``), else what they leave. A decoder-only model reads prompt and response in one
    sequence; an encoder-decoder reads the prompt in its encoder and writes the response in its decoder,
    each with its own positions (T5 names none: 512, the length it was pretrained on). A prompt and response
    that cannot fit is one ConfigError line."""
    total, key = positions(model_config), "Config key 'data.max_prompt_tokens'"
    if getattr(model_config, "is_encoder_decoder", False):
        if total is not None and response_tokens > total:
            raise ConfigError(
                f"Config key '{response_key}' ({response_tokens}) is more than the model's {total} decoder "
                f"positions: lower it to {total} or less."
            )
        if total is not None and max_prompt_tokens is not None and max_prompt_tokens > total:
            raise ConfigError(
                f"{key} ({max_prompt_tokens}) is more than the model's {total} encoder positions: lower it "
                f"(null: {min(DEFAULT_PROMPT_TOKENS, total)})."
            )
        return max_prompt_tokens or min(DEFAULT_PROMPT_TOKENS, total or ENCODER_POSITIONS)
    if total is None:
        return max_prompt_tokens or DEFAULT_PROMPT_TOKENS
    room = total - response_tokens
    if max_prompt_tokens is not None and max_prompt_tokens > room:
        raise ConfigError(
            f"{key} ({max_prompt_tokens}) and {response_key} ({response_tokens}) add up to "
            f"{max_prompt_tokens + response_tokens} tokens, more than the model's {total} positions: lower "
            f"one of them" + (f" (data.max_prompt_tokens={room} fits)." if room > 0 else ".")
        )
    if room < 1:
        raise ConfigError(
            f"Config key '{response_key}' ({response_tokens}) leaves no room for a prompt in the model's "
            f"{total} positions: lower it."
        )
    return max_prompt_tokens or min(DEFAULT_PROMPT_TOKENS, room)


@dataclass(frozen=True)
class FittedPrompts:
    """Prompts fitted to ``limit`` tokens: the texts kept (cut where they were longer), their tokens as the
    policy sees them, which of the given prompts they are, and how many were cut or left out."""

    texts: list[str]
    ids: list[torch.Tensor]  # B x (P_i,), P_i <= limit
    kept: list[int]  # the kept prompts' places among those given
    limit: int
    truncation: Truncation
    truncated: int = 0
    dropped: int = 0
    longest: int = 0  # tokens of the longest prompt given

    def describe(self, what: str, how: str = "data.max_prompt_tokens, data.truncation") -> str:
        """One line: '400 training prompts, each within 512 tokens' or '3 of 400 training prompts were over
        512 tokens (the longest 12,034): truncated from the left', and ``how`` that is set."""
        given = len(self.kept) + self.dropped
        over = self.truncated + self.dropped
        if not over:
            return f"prompts: {given} {what}, each within {self.limit} tokens (the longest {self.longest})"
        done = "left out" if self.truncation == "drop" else f"truncated from the {self.truncation}"
        return (
            f"prompts: {over} of {given} {what} were over {self.limit} tokens (the longest "
            f"{self.longest:,}): {done} ({how})"
        )

    def summary(self) -> dict[str, Any]:
        return {
            "prompts": len(self.kept) + self.dropped,
            "max_prompt_tokens": self.limit,
            "truncation": self.truncation,
            "truncated": self.truncated,
            "dropped": self.dropped,
            "longest": self.longest,
        }


def fit_prompts(
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    *,
    chat_template: bool,
    limit: int,
    truncation: Truncation = "left",
    template: str = "{text}",
) -> FittedPrompts:
    """Each text, chat-templated and tokenized (``format_prompts``, ``tokenize_prompts``), within ``limit``
    tokens: a prompt that fits is untouched (its tokens exactly as before); a longer one is dropped, or cut
    from the ``left`` (a continuation keeps its end, where the response follows) or the ``right``. The cut
    is made in the text inside its templates, which stay whole: the chat template around it, and the
    data ``template`` (``{text}`` once) when the text was made from it."""
    ids = tokenize_prompts(tokenizer, format_prompts(tokenizer, texts, chat_template))
    out_texts, out_ids, kept, truncated, dropped = [], [], [], 0, 0
    parts = _parts(template)
    for i, (text, tokens) in enumerate(zip(texts, ids, strict=True)):
        if len(tokens) > limit and truncation == "drop":
            dropped += 1
            continue
        if len(tokens) > limit:
            text, tokens = _cut(
                tokenizer,
                text,
                len(tokens),
                limit=limit,
                side=truncation,
                chat_template=chat_template,
                **parts,
            )
            truncated += 1
        out_texts.append(text)
        out_ids.append(tokens)
        kept.append(i)
    longest = max((len(t) for t in ids), default=0)
    return FittedPrompts(out_texts, out_ids, kept, limit, truncation, truncated, dropped, longest)


def _parts(template: str) -> dict[str, str]:
    """A data template's text before and after ``{text}`` (none where it holds ``{text}`` more than once)."""
    before, found, after = template.partition("{text}")
    whole = found and "{text}" not in after
    return {"prefix": before if whole else "", "suffix": after if whole else ""}


def _cut(
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    length: int,
    *,
    limit: int,
    side: Truncation,
    prefix: str,
    suffix: str,
    chat_template: bool,
) -> tuple[str, torch.Tensor]:
    """``text`` (``length`` tokens as the policy sees it) cut to ``limit`` tokens in its core (between
    ``prefix`` and ``suffix``, where it has them): at a token boundary of the core, by character offsets
    (fast tokenizers; else by decoding the kept tokens), shortened until the whole prompt fits."""
    if not (text.startswith(prefix) and text.endswith(suffix) and len(text) >= len(prefix) + len(suffix)):
        prefix = suffix = ""
    core = text[len(prefix) : len(text) - len(suffix)]
    fast = bool(getattr(tokenizer, "is_fast", False))
    encoded = tokenizer(core, add_special_tokens=False, return_offsets_mapping=fast, verbose=False)
    core_ids: list[int] = encoded["input_ids"]
    keep = len(core_ids) - (length - limit)
    while keep > 0:
        if fast:
            spans = encoded["offset_mapping"]
            piece = core[spans[-keep][0] :] if side == "left" else core[: spans[keep - 1][1]]
        else:
            piece = str(tokenizer.decode(core_ids[-keep:] if side == "left" else core_ids[:keep]))
        cut = prefix + piece + suffix
        tokens = tokenize_prompts(tokenizer, format_prompts(tokenizer, [cut], chat_template))[0]
        if len(tokens) <= limit:
            return cut, tokens
        keep -= len(tokens) - limit
    raise ConfigError(
        f"Config key 'data.max_prompt_tokens' ({limit}) leaves no room for a prompt's text: its templates "
        f"alone take about {length - len(core_ids)} tokens; raise it."
    )


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

"""Rollouts: sample responses with a length sampler, then record old log-probs, values and reference
log-probs (no gradients) in a frozen ``Rollout``. Knows nothing of rewards' origin or of the PPO loss.

Shapes: B responses, P prompt tokens (padded), T response tokens (right-padded).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from detoxrl.config import GenerationConfig
from detoxrl.generate import eos_token_ids, pad_left, pad_right, sample_rows, trim_response
from detoxrl.policy import ActorCritic, ResponseBatch
from detoxrl.sampling import sample_decoder

FAST_SAMPLING_KWARGS = {"temperature", "top_k", "top_p", "do_sample"}


class LengthSampler:
    """A uniform integer in ``[min_value, max_value)``, like trl's former ``LengthSampler``.

    Draws from torch's global RNG (or ``generator``), so seeding and checkpointed RNG states cover it.
    """

    def __init__(self, min_value: int, max_value: int) -> None:
        if not 1 <= min_value < max_value:
            raise ValueError(
                f"LengthSampler needs 1 <= min_value < max_value, got ({min_value}, {max_value})."
            )
        self.min_value, self.max_value = min_value, max_value

    def __call__(self, generator: torch.Generator | None = None) -> int:
        return int(torch.randint(self.min_value, self.max_value, (1,), generator=generator))


def batch_indices(n_prompts: int, batch_size: int, step: int, seed: int) -> list[int]:
    """The prompts of a step: consecutive slices of per-epoch seeded permutations (a pure function of
    the step, so a resumed run sees the same prompts)."""
    out = []
    for i in range(step * batch_size, (step + 1) * batch_size):
        epoch, pos = divmod(i, n_prompts)
        perm = torch.randperm(n_prompts, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        out.append(int(perm[pos]))
    return out


def generation_kwargs(gen: GenerationConfig) -> tuple[dict[str, Any], LengthSampler | None]:
    """Sampling kwargs and the per-prompt length sampler; lengths are uniform in [min, max] new tokens."""
    kwargs: dict[str, Any] = {"top_k": gen.top_k, "top_p": gen.top_p, "temperature": gen.temperature}
    if gen.length_sampling == "fixed" or gen.min_new_tokens >= gen.max_new_tokens:
        return {**kwargs, "max_new_tokens": gen.max_new_tokens}, None
    sampler = LengthSampler(max(gen.min_new_tokens, 1), gen.max_new_tokens + 1)
    if gen.length_sampling == "per_batch":
        return {**kwargs, "max_new_tokens": sampler()}, None
    return kwargs, sampler


@dataclass(frozen=True)
class Rollout:
    """One batch of experience, everything the PPO update needs except the advantages."""

    batch: ResponseBatch  # prompts (B, P) and responses (B, T) with their masks
    logprobs: torch.Tensor  # (B, T) under the policy that sampled (temperature applied)
    ref_logprobs: torch.Tensor  # (B, T) under the frozen reference
    values: torch.Tensor  # (B, T) the critic's estimates before the update
    scores: torch.Tensor  # (B,) the (transformed) reward-model scores


def make_batch(
    queries: list[torch.Tensor], responses: list[torch.Tensor], pad_id: int, is_encoder_decoder: bool
) -> ResponseBatch:
    """Pad prompts (left for decoder-only so responses start in one column; right for encoders) and
    responses (right), on the device of the inputs."""
    if len(queries) != len(responses) or not queries:
        raise ValueError(f"Need as many responses as queries (> 0); got {len(queries)} and {len(responses)}.")
    if any(len(r) == 0 for r in responses):
        raise ValueError("Every response needs at least one token (the score sits on its last token).")
    query_ids, query_mask = (pad_right if is_encoder_decoder else pad_left)(
        [q.cpu() for q in queries], pad_id
    )
    response_ids, response_mask = pad_right([r.cpu() for r in responses], pad_id)
    return ResponseBatch(query_ids, query_mask, response_ids, response_mask)


def trim_batch(batch: ResponseBatch, is_encoder_decoder: bool) -> ResponseBatch:
    """Drop columns that are padding in every row (mini-batches are often shorter than the batch)."""
    used = batch.query_mask.sum(0).nonzero()  # columns where some prompt has a real token
    q_slice = slice(0, int(used.max()) + 1) if is_encoder_decoder else slice(int(used.min()), None)
    t = int(batch.response_mask.sum(1).max())
    return ResponseBatch(
        batch.query_ids[:, q_slice],
        batch.query_mask[:, q_slice],
        batch.response_ids[:, :t],
        batch.response_mask[:, :t],
    )


@torch.no_grad()
def generate_responses(
    model: Any,
    tokenizer: Any,
    queries: list[torch.Tensor],
    lengths: list[int],
    is_encoder_decoder: bool,
    generation_kwargs: dict[str, Any],
) -> list[torch.Tensor]:
    """Sample one response per query in one batched ``generate`` call, each cut to its own length.

    Sampling to the longest length and truncating row i after ``lengths[i]`` tokens draws from the
    same distribution as generating row i alone with ``max_new_tokens=lengths[i]`` (tokens are sampled
    left to right), without the lab's one-prompt-at-a-time loop. Rows are also cut after their first EOS.
    """
    kwargs = {"do_sample": True, **generation_kwargs, "max_new_tokens": max(lengths)}
    rows = sample_rows(model, tokenizer, queries, is_encoder_decoder, **kwargs)  # (B, T)
    eos, pad_id = eos_token_ids(model, tokenizer), int(tokenizer.pad_token_id)
    return [trim_response(row[:length], eos, pad_id) for row, length in zip(rows, lengths, strict=True)]


@dataclass(frozen=True)
class SampledRollout:
    """Responses with the sampling policy's log-probs and values, both (B, T) [D17]."""

    queries: list[torch.Tensor]  # B x (P_i,)
    responses: list[torch.Tensor]  # B x (T_i,)
    logprobs: torch.Tensor
    values: torch.Tensor

    def matches(self, queries: list[torch.Tensor], responses: list[torch.Tensor]) -> bool:
        """Whether these are exactly the sampled pairs (then their log-probs and values can be reused)."""
        return _same(queries, self.queries) and _same(responses, self.responses)


def _same(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> bool:
    return len(xs) == len(ys) and all(
        a.shape == b.shape and torch.equal(a.cpu(), b.cpu()) for a, b in zip(xs, ys, strict=True)
    )


def can_sample_fast(actor_critic: ActorCritic, generation_kwargs: dict[str, Any]) -> bool:
    """Plain decoder-only policies with only temperature / top-k / top-p set sample via ``sample_rollout``
    (``do_sample=False`` asks for greedy decoding: transformers' ``generate()`` does that)."""
    plain = actor_critic.causal_parts is not None and set(generation_kwargs) <= FAST_SAMPLING_KWARGS
    return plain and bool(generation_kwargs.get("do_sample", True))


@torch.no_grad()
def sample_rollout(
    actor_critic: ActorCritic,
    tokenizer: Any,
    queries: list[torch.Tensor],
    lengths: list[int],
    generation_kwargs: dict[str, Any],
) -> SampledRollout:
    """[D17] Sample responses (row i at most ``lengths[i]`` tokens, cut at the first stop id) and keep
    each token's log-prob and value from the sampling pass itself: no second policy pass."""
    assert actor_critic.causal_parts is not None, "sample_rollout needs a plain decoder-only policy"
    backbone, lm = actor_critic.causal_parts
    pad_id = int(tokenizer.pad_token_id)
    head = actor_critic.float32_head(lm, rows=len(queries))
    with actor_critic.autocast(), actor_critic.attention(lm):  # attention of the prefill and TransformersStep
        out = sample_decoder(
            backbone, head, queries, lengths, eos_token_ids(lm, tokenizer), pad_id,
            float(generation_kwargs.get("temperature", 1.0)), int(generation_kwargs.get("top_k", 0) or 0),
            float(generation_kwargs.get("top_p", 1.0)), packed=actor_critic.packs_rows,
            lean=actor_critic.lean_decoding,
        )  # fmt: skip
    responses = [row[:n].cpu() for row, n in zip(out.tokens, out.lengths.tolist(), strict=True)]
    t = max(len(r) for r in responses)
    values = actor_critic.value_head(out.hidden[:, :t])
    return SampledRollout(list(queries), responses, out.logprobs[:, :t], values)


@torch.no_grad()
def collect_rollout(
    actor_critic: ActorCritic,
    batch: ResponseBatch,
    scores: torch.Tensor,
    temperature: float = 1.0,
    sampled: SampledRollout | None = None,
) -> Rollout:
    """[D1] Old log-probs and values from the sampling pass (``sampled``) or else from one policy pass,
    and reference log-probs from one reference pass; computed once per rollout, before any update."""
    device = actor_critic.device
    batch = batch.to(device)
    if sampled is None:
        out = actor_critic(batch, temperature)
        logprobs, values = out.logprobs, out.values
    else:
        logprobs, values = sampled.logprobs.to(device), sampled.values.to(device)
    ref_logprobs = actor_critic.reference_logprobs(batch, temperature)
    return Rollout(batch, logprobs, ref_logprobs, values, scores.to(device).float())

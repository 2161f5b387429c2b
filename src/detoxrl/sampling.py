"""Rollout sampling for decoder-only policies without padding waste or a second policy pass.

The prompts are prefilled packed end to end in one pass, or each alone (no padding either way, so
no wasted FLOPs and a mask-free causal attention), then all rows decode together over one
preallocated KV cache (appending writes in place instead of ``torch.cat``-ing the whole cache every
token), a step of ``decoding`` per token. Besides the tokens it returns what PPO needs from the
sampling policy anyway: each sampled token's log-prob (temperature applied, before any top-k /
top-p filtering, as in the training pass) and the final hidden state that produced it, from which
the critic's values follow, so the old log-probs and values need no second pass [D17].

Shapes: B prompts, P longest prompt, T new tokens, H hidden size, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from detoxrl.attention import packed_inputs
from detoxrl.decoding import LlamaStep, TransformersStep, cache_name, prepacked

Head = Callable[[torch.Tensor], torch.Tensor]  # final hidden states (N, H) -> float32 logits (N, V)
HEAD_SLICE = 2048


@dataclass(frozen=True)
class Sampled:
    """Sampled responses, right-padded after each row's end, with the sampling policy's view of them."""

    tokens: torch.Tensor  # (B, T) long, ``pad_id`` after each row's end
    lengths: torch.Tensor  # (B,) tokens per row, its stop token included
    logprobs: torch.Tensor  # (B, T) float32, 0 after each row's end
    hidden: torch.Tensor  # (B, T, H) the final hidden state that predicted each token, 0 after the end


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """(B, V) logits with everything outside the top ``top_k`` and the nucleus ``top_p`` set to -inf
    (0 and 1 switch a filter off; the most likely token always survives)."""
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        before = sorted_logits.softmax(-1).cumsum(-1) - sorted_logits.softmax(-1)  # mass above each token
        drop = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order, before >= top_p)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_tokens(
    logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row from float32 logits (B, V) -> (tokens (B,), their log-probs (B,)).

    The log-prob is that of softmax(logits / temperature), before filtering: the distribution the
    training pass evaluates. Tokens come from ``inverse_cdf`` with torch's global RNG (seeded runs
    repeat), an order of magnitude cheaper than ``torch.multinomial`` over a large vocabulary.
    """
    scaled = logits / temperature
    logprobs = scaled.log_softmax(-1)
    probs = filter_logits(scaled, top_k, top_p).softmax(-1) if top_k or top_p < 1 else logprobs.exp()
    tokens = inverse_cdf(probs)
    return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(1)


def inverse_cdf(weights: torch.Tensor, block: int = 256) -> torch.Tensor:
    """(B, V) non-negative float32 weights -> (B,) an index per row, drawn with probability proportional
    to its weight. One uniform draw per row picks a block of ``block`` indices by the cumulated block
    sums, then an index inside that block by its own cumulated weights, both in float64: exact to
    float32's rounding of each block's sum, without a float64 cumsum over the whole vocabulary (which
    cost 16 ms a token for 16 rows of SmolLM2's 49152)."""
    b, v = weights.shape
    blocks = F.pad(weights, (0, -v % block)).view(b, -1, block)  # (B, N, block)
    sums = blocks.sum(-1).double()  # (B, N)
    cdf = sums.cumsum(-1)
    u = torch.rand(b, 1, dtype=torch.float64, device=weights.device) * cdf[:, -1:]
    k = torch.searchsorted(cdf, u).clamp(max=blocks.shape[1] - 1)  # (B, 1) the block
    inner = blocks.gather(1, k[:, :, None].expand(b, 1, block)).squeeze(1).double().cumsum(-1)  # (B, block)
    mass = sums.gather(1, k)
    share = ((u - cdf.gather(1, k) + mass) / mass.clamp_min(1e-300)).clamp(0, 1)  # where in the block
    j = torch.searchsorted(inner, share * inner[:, -1:]).clamp(max=block - 1)
    return (k * block + j).squeeze(1).clamp(max=v - 1)


@torch.no_grad()
def sample_decoder(
    backbone: Any,
    head: Head,
    prompts: list[torch.Tensor],
    max_new_tokens: list[int],
    stop_ids: set[int],
    pad_id: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    packed: bool = False,
    lean: bool = True,
) -> Sampled:
    """Sample a response to each prompt (1-D token ids), row i at most ``max_new_tokens[i]`` tokens
    and ending at its first stop id; decoding stops when every row has ended.

    ``backbone(input_ids, ...)`` is the transformer without its LM head (its ``last_hidden_state`` is
    what the head reads); ``head`` maps those states to float32 logits. ``packed`` prefills all
    prompts as one sequence, which needs an attention that honours ``row_lengths`` (the backbone's
    config set to ``attention.CAUSAL_ROWS``). ``lean`` decodes Llama-style models through
    ``decoding.LlamaStep`` (others always take transformers' forward).
    """
    if temperature <= 0:
        raise ValueError("PPO rollouts sample: generation.temperature must be > 0.")
    device = next(backbone.parameters()).device
    sizes = [len(q) for q in prompts]
    b, n_max, p_max = len(prompts), max(max_new_tokens), max(sizes)
    lengths = torch.tensor(sizes, device=device)
    cache_arg = cache_name(backbone)
    # 1. Prefill: the prompts packed end to end in one pass (``packed``) or each alone; keep each
    #    prompt's last hidden state and, per layer, its keys and values (G, P_i, d).
    if packed:
        out = backbone(**packed_inputs([q.to(device) for q in prompts]), use_cache=True)
        hidden = out.last_hidden_state[0, lengths.cumsum(0) - 1]  # (B, H)
        kv = [(x.keys[0].split(sizes, 1), x.values[0].split(sizes, 1)) for x in out[cache_arg].layers]
    else:
        outs = [backbone(input_ids=q.to(device)[None], use_cache=True) for q in prompts]
        hidden = torch.cat([o.last_hidden_state[:, -1] for o in outs])
        per_layer = zip(*(o[cache_arg].layers for o in outs), strict=True)  # each layer, one per prompt
        kv = [([x.keys[0] for x in layer], [x.values[0] for x in layer]) for layer in per_layer]
    # 2. One left-padded cache with room for the new tokens: per layer (B, G, P + T, d), each prompt
    #    right-aligned at column P; Llama-style models decode through the lean LlamaStep.
    keys, values = [], []
    for row_keys, row_values in kv:
        g, d = row_keys[0].shape[0], row_keys[0].shape[-1]
        keys.append(row_keys[0].new_zeros(b, g, p_max + n_max, d))
        values.append(torch.zeros_like(keys[-1]))
        for row, (k, v) in enumerate(zip(row_keys, row_values, strict=True)):
            keys[-1][row, :, p_max - sizes[row] : p_max] = k
            values[-1][row, :, p_max - sizes[row] : p_max] = v
    step = (lean and LlamaStep.build(backbone, keys, values, lengths)) or TransformersStep(
        backbone, keys, values, lengths
    )
    # 3. Decode all rows together; rows that have ended keep sampling into padding that is discarded.
    limit = torch.tensor(max_new_tokens, device=device)
    stop = torch.tensor(sorted(stop_ids), device=device)
    tokens, logprobs, states = [], [], []
    ended = torch.zeros(b, dtype=torch.bool, device=device)
    count = torch.zeros(b, dtype=torch.long, device=device)
    for t in range(n_max):
        token, logprob = sample_tokens(head(hidden), temperature, top_k, top_p)
        tokens.append(token.masked_fill(ended, pad_id))
        logprobs.append(logprob.masked_fill(ended, 0.0))
        states.append(hidden.masked_fill(ended[:, None], 0.0))
        count += (~ended).long()
        ended |= torch.isin(token, stop) | (t + 1 >= limit)
        if bool(ended.all()):
            break
        hidden = step(token, t)
    return Sampled(torch.stack(tokens, 1), count, torch.stack(logprobs, 1), torch.stack(states, 1))


def float32_head(model: Any, rows: int = 0) -> Head:
    """The LM head of ``model`` computed in float32, autocast or not: log-probs are never taken from
    bf16 logits (spaced 0.0625 apart between 8 and 16). ``rows`` > 0: for sampling, without gradients,
    ``rows`` at a time through ``decoding.prepacked`` (6.3 instead of 13.6 ms for 16 rows of SmolLM2)."""
    head = model.get_output_embeddings()
    bias = None if getattr(head, "bias", None) is None else head.bias.float()
    if rows:
        matmul = prepacked(head.weight.float(), rows, bias)

        def sampling_logits(hidden: torch.Tensor) -> torch.Tensor:
            with torch.autocast(hidden.device.type, enabled=False):
                return matmul(hidden.float())

        return sampling_logits
    # in slices of 2048 vocabulary rows, which stay in cache: 13 ms instead of 18 ms for 16 rows of
    # SmolLM2 on 2 cores, 73 ms instead of 81 ms for 180
    weights = head.weight.float().split(HEAD_SLICE)
    biases = [None] * len(weights) if bias is None else bias.split(HEAD_SLICE)

    def logits(hidden: torch.Tensor) -> torch.Tensor:
        with torch.autocast(hidden.device.type, enabled=False):
            h = hidden.float()
            return torch.cat([F.linear(h, w, b) for w, b in zip(weights, biases, strict=True)], -1)

    return logits

"""The one sampler: rollouts, evaluation and ``detoxrl generate`` all sample through ``sample``, on
whichever engine runs the model. Knows nothing of PPO or rewards; how a model is run (prefill, KV
cache, kernels) is the engine's.

Besides the tokens it returns what PPO needs from the sampling policy anyway: each sampled token's
log-prob (temperature applied, before any top-k / top-p / min-tokens filtering, as the teacher-forced
pass computes it) and the LM head's input that produced it, from which the critic's values follow, so
the old log-probs and values need no second pass [D17].

Randomness: each token is one uniform draw per row. By default the batch draws them from torch's global
RNG (seeded runs repeat); given ``seeds``, row i draws its own stream from ``seeds[i]``, so a row's
response depends only on its prompt, its seed and the policy, not on which rows share its batch (or which
process samples it: data-parallel rollouts, distributed.py).

Shapes: B prompts, T new tokens, H hidden size, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from detoxrl.config import SamplingConfig
from detoxrl.engine import Model

if TYPE_CHECKING:
    from detoxrl.engine import Engine


@dataclass(frozen=True)
class Sampled:
    """Sampled responses, right-padded after each row's end, with the sampling policy's view of them."""

    tokens: torch.Tensor  # (B, T) long, ``pad_id`` after each row's end
    lengths: torch.Tensor  # (B,) tokens per row, its stop token included
    logprobs: torch.Tensor  # (B, T) float32, 0 after each row's end
    hidden: torch.Tensor  # (B, T, H) the LM head's input that predicted each token, 0 after the end
    temperature: float  # the temperature of ``logprobs``

    def responses(self) -> list[torch.Tensor]:
        """B 1-D tensors of each row's tokens, its stop token included, on the CPU."""
        return [row[:n] for row, n in zip(self.tokens.cpu(), self.lengths.tolist(), strict=True)]


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


def response_limits(settings: SamplingConfig, n: int) -> list[int]:
    """Each of ``n`` responses' token limit: ``max_new_tokens``, or drawn uniformly from [min_new_tokens,
    max_new_tokens] once per prompt or once for the batch (``length_sampling``)."""
    low, high = max(settings.min_new_tokens, 1), settings.max_new_tokens
    if settings.length_sampling == "fixed" or low >= high:
        return [high] * n
    sampler = LengthSampler(low, high + 1)
    if settings.length_sampling == "per_batch":
        return [sampler()] * n
    return [sampler() for _ in range(n)]


# The most likely tokens looked at first for a nucleus (top_p): SmolLM2-135M at 0.9 on 640 steps of the rtp
# training prompts needed 130 tokens (median), 1,098 (90th percentile), 2,897 (99th), 4,649 at most.
NUCLEUS_CANDIDATES = 4096


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """(B, V) logits with everything outside the top ``top_k`` and the nucleus ``top_p`` set to -inf
    (0 and 1 switch a filter off; the most likely token always survives)."""
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        logits = logits.masked_fill(~nucleus(logits, top_p), float("-inf"))
    return logits


def nucleus(logits: torch.Tensor, top_p: float, candidates: int = NUCLEUS_CANDIDATES) -> torch.Tensor:
    """(B, V) logits -> (B, V) bool, True on the smallest set of most likely tokens whose probability
    reaches ``top_p`` (Holtzman et al. 2020). The nucleus is looked for among each row's ``candidates``
    most likely tokens (a top-k, far cheaper than sorting the whole vocabulary on a CPU), and only where
    they do not hold ``top_p`` of the mass does it sort the whole row: the same set either way."""
    probs = logits.softmax(-1)
    top, order = probs.topk(min(candidates, probs.shape[-1]), dim=-1)  # (B, C), sorted descending
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order, top.cumsum(-1) - top < top_p)
    flat = top.sum(-1) < top_p  # (B,) rows whose nucleus may reach past the candidates: sorted whole
    if bool(flat.any()):
        top, order = probs[flat].sort(dim=-1, descending=True)
        keep[flat] = torch.zeros_like(top, dtype=torch.bool).scatter(-1, order, top.cumsum(-1) - top < top_p)
    return keep


def sample_tokens(
    logits: torch.Tensor,
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
    banned: torch.Tensor | None = None,
    *,
    uniform: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row from float32 logits (B, V) -> (tokens (B,), their log-probs (B,)).

    The log-prob is that of softmax(logits / temperature), before filtering: the distribution the
    training pass evaluates. ``banned`` (B, V) bool removes tokens (a stop id before ``min_tokens``).
    Temperature 0 is greedy decoding (log-probs then at temperature 1). Tokens come from
    ``inverse_cdf`` with ``uniform`` (B, 1) in [0, 1) or torch's RNG (seeded runs repeat), an order of
    magnitude cheaper than ``torch.multinomial`` over a large vocabulary on the CPU.
    """
    scaled = logits / temperature if temperature > 0 and temperature != 1 else logits
    if temperature > 0 and banned is None and not top_k and top_p >= 1:  # plain sampling: one exp pass
        top = scaled.amax(-1, keepdim=True)  # (B, 1)
        weights = (scaled - top).exp_()  # (B, V) probabilities times the row's sum
        tokens = inverse_cdf(weights, uniform=uniform)
        logprobs = scaled.gather(-1, tokens[:, None]) - top - weights.sum(-1, keepdim=True).log()
        return tokens, logprobs.squeeze(1)  # = log_softmax(scaled) at the token
    logprobs = scaled.log_softmax(-1)
    filtered = scaled if banned is None else scaled.masked_fill(banned, float("-inf"))
    if temperature <= 0:
        tokens = filtered.argmax(-1)
    else:
        tokens = inverse_cdf(filter_logits(filtered, top_k, top_p).softmax(-1), uniform=uniform)
    return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(1)


def inverse_cdf(weights: torch.Tensor, block: int = 256, uniform: torch.Tensor | None = None) -> torch.Tensor:
    """(B, V) non-negative float32 weights -> (B,) an index per row, drawn with probability proportional
    to its weight. One uniform draw per row (``uniform`` (B, 1) float64, else torch's RNG) picks a block of
    ``block`` indices by the cumulated block sums, then an index inside that block by its own cumulated
    weights, both in float64: exact to float32's rounding of each block's sum, without a float64 cumsum
    over the whole vocabulary (which cost 16 ms a token for 16 rows of SmolLM2's 49152)."""
    b, v = weights.shape
    blocks = (F.pad(weights, (0, -v % block)) if v % block else weights).view(b, -1, block)  # (B, N, block)
    sums = blocks.sum(-1).double()  # (B, N)
    cdf = sums.cumsum(-1)
    if uniform is None:
        uniform = torch.rand(b, 1, dtype=torch.float64, device=weights.device)
    u = uniform * cdf[:, -1:]
    k = torch.searchsorted(cdf, u).clamp(max=blocks.shape[1] - 1)  # (B, 1) the block
    inner = blocks.gather(1, k[:, :, None].expand(b, 1, block)).squeeze(1).double().cumsum(-1)  # (B, block)
    mass = sums.gather(1, k)
    share = ((u - cdf.gather(1, k) + mass) / mass.clamp_min(1e-300)).clamp(0, 1)  # where in the block
    j = torch.searchsorted(inner, share * inner[:, -1:]).clamp(max=block - 1)
    return (k * block + j).squeeze(1).clamp(max=v - 1)


def row_uniforms(seeds: list[int], n: int) -> torch.Tensor:
    """(B, n) float64 uniforms in [0, 1) on the CPU, row i the first ``n`` draws of a generator seeded
    with ``seeds[i]``: a row's t-th draw depends on its seed and t alone."""
    rows = [torch.rand(n, dtype=torch.float64, generator=torch.Generator().manual_seed(s)) for s in seeds]
    return torch.stack(rows)


@torch.no_grad()
def sample(
    engine: Engine,
    model: Model,
    prompts: list[torch.Tensor],
    limits: list[int],
    settings: SamplingConfig,
    *,
    stop_ids: set[int],
    pad_id: int,
    seeds: list[int] | None = None,
) -> Sampled:
    """Sample a response to each prompt (1-D token ids): row i at most ``limits[i]`` tokens, ending at
    its first stop id (none before ``settings.min_tokens`` tokens); decoding stops once every row has
    ended. Rows that have ended keep sampling into padding that is discarded. With ``seeds``, row i's
    draws come from its own stream ``seeds[i]`` (``row_uniforms``), else from torch's global RNG."""
    device = engine.device
    uniforms = None if seeds is None else row_uniforms(seeds, max(limits)).to(device)  # (B, T)
    decoder = engine.decoder(model, [q.to(device) for q in prompts], max(limits))
    limit = torch.tensor(limits, device=device)
    stop = torch.tensor(sorted(stop_ids), dtype=torch.long, device=device)
    ended = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    count = torch.zeros(len(prompts), dtype=torch.long, device=device)
    tokens, logprobs, states = [], [], []
    logits, hidden = decoder.prefill()
    for t in range(max(limits)):
        banned = None
        if t < settings.min_tokens and len(stop):
            banned = torch.zeros_like(logits, dtype=torch.bool).index_fill_(1, stop, True)
        uniform = None if uniforms is None else uniforms[:, t : t + 1]
        token, logprob = sample_tokens(
            logits, settings.temperature, settings.top_k, settings.top_p, banned, uniform=uniform
        )
        tokens.append(token.masked_fill(ended, pad_id))
        logprobs.append(logprob.masked_fill(ended, 0.0))
        states.append(hidden.masked_fill(ended[:, None], 0.0))
        count += (~ended).long()
        ended |= torch.isin(token, stop) | (t + 1 >= limit)
        if t + 1 == max(limits) or ((t + 1) % engine.check_every == 0 and bool(ended.all())):
            break
        logits, hidden = decoder.step(token, t)
    n = int(count.max())  # rows that ended early may leave all-padding columns behind
    columns = [torch.stack(x[:n], 1) for x in (tokens, logprobs, states)]
    return Sampled(columns[0], count, columns[1], columns[2], settings.temperature or 1.0)

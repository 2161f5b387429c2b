"""Causal self-attention of unpadded rows packed end to end, registered with transformers.

Rows of different lengths run as one sequence (``segments``; position ids restart at each row):
every linear layer then sees one large matrix instead of a small one per row, and only attention
needs to know where rows end. Each row attends causally to itself alone, without a mask. Rows that
share a prompt (the k samples of RLOO and GRPO) run as one segment, a tree: the prompt once, then each
row's response, which attends to the prompt and to itself only [D25]. In bf16 on
the CPU, SDPA's flash kernel has a slow backward at a few hundred tokens and the "eager" attention
spends as long on its float32 softmax, mask and casts as on its matmuls; one row needs neither a
padding mask nor repeated key/value heads, so the query heads that share a key/value head are
stacked into one matmul, and the causal mask and the scale enter that matmul (``baddbmm``). Float32
rows use SDPA. bench/README.md measures both. Knows nothing of PPO or of which model calls it.

Shapes: B rows, H query heads, G key/value heads (H = G * R), L tokens, D head size. A segment is a
tuple of lengths (prompt, response, response, ...); a plain row is one length, (L,).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

CAUSAL_ROWS = "detoxrl_causal_rows"


Segment = tuple[int, ...]


def allowed(segment: Segment, device: torch.device) -> torch.Tensor:
    """(L, L) bool, True where a query (row) may read a key (column) of one ``segment``: causally, and a
    branch (a response after a shared prompt) reads the prompt and itself, never another branch."""
    branch = torch.repeat_interleave(torch.arange(len(segment)), torch.tensor(segment)).to(device)  # (L,)
    length = len(branch)
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    return causal & ((branch[None, :] == 0) | (branch[None, :] == branch[:, None]))


def causal_bias(segment: Segment, repeats: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(1, R * L, L) additive mask, -inf where ``allowed`` is False, in each of the R stacked blocks."""
    bias = torch.zeros(sum(segment), sum(segment), dtype=dtype, device=device)
    return bias.masked_fill_(~allowed(segment, device), float("-inf")).repeat(repeats, 1)[None]


@functools.lru_cache(maxsize=1)
def segment_masks(
    segments: tuple[Segment, ...], repeats: int, dtype: torch.dtype, device: torch.device
) -> list[torch.Tensor | None]:
    """The mask of each packed segment, made once per pass (every layer of it asks again; the segments
    cycle through each layer, so a cache by segment alone would be rebuilt at every layer). float32:
    None for a plain row (SDPA's own causal mask), else ``allowed``; bf16/fp16: ``causal_bias``."""
    made: dict[Segment, torch.Tensor | None] = {}
    for segment in set(segments):
        if dtype != torch.float32:
            made[segment] = causal_bias(segment, repeats, dtype, device)
        else:
            made[segment] = None if len(segment) == 1 else allowed(segment, device)
    return [made[s] for s in segments]


def causal_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    dropout: float = 0.0,
    scaling: float | None = None,
    segments: list[Segment] | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """query (B, H, L, D), key and value (B, G, L, D) -> ((B, L, H, D), None), as transformers'
    attention functions; with ``segments`` (B = 1, their lengths summing to L) each packed row attends
    only to itself (and a branch to its segment's prompt). Anything but plain causal self-attention over
    unpadded rows (a mask, a KV cache longer than the query, dropout, soft-capping, sinks) goes to SDPA
    unchanged."""
    _, h, length, d = query.shape
    g = key.shape[1]
    plain = attention_mask is None and key.shape[2] == length and h % g == 0 and not dropout
    extras = kwargs.get("softcap") or kwargs.get("s_aux") is not None
    if not plain or extras or not getattr(module, "is_causal", True):
        if segments is not None and (len(segments) > 1 or len(segments[0]) > 1):
            raise ValueError("Packed rows (segments) need plain causal self-attention without a mask.")
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    scale = scaling if scaling is not None else d**-0.5
    segments = [_plain(s) for s in segments or [(length,)]]
    masks = segment_masks(tuple(segments), h // g, query.dtype, query.device)
    parts = zip(*(x.split([sum(s) for s in segments], 2) for x in (query, key, value)), masks, strict=True)
    outs = [causal_row(q, k, v, scale, mask) for q, k, v, mask in parts]  # each (B, H, L_i, D)
    out = outs[0] if len(outs) == 1 else torch.cat(outs, 2)
    return out.transpose(1, 2), None


def _plain(segment: Segment) -> Segment:
    """A segment of one prompt and at most one response is a plain row: (L,)."""
    return segment if len(segment) > 2 else (sum(segment),)


def causal_row(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float, mask: torch.Tensor | None
) -> torch.Tensor:
    """query (B, H, L, D), key and value (B, G, L, D) of one segment -> (B, H, L, D): through SDPA with
    its causal mask (``mask`` None) or with ``mask`` (bool, ``allowed``), else (bf16/fp16) the stacked
    query heads in one ``baddbmm`` with ``mask`` as its bias (``causal_bias``), softmax, ``bmm``."""
    if mask is None or mask.dtype == torch.bool:
        return F.scaled_dot_product_attention(
            query, key, value, attn_mask=mask, is_causal=mask is None, scale=scale, enable_gqa=True
        )
    bias, (b, h, length, d) = mask, query.shape
    g = key.shape[1]
    r = h // g
    q = query.reshape(b * g, r * length, d)  # query head j reads key/value head j // R
    k, v = key.reshape(b * g, length, d), value.reshape(b * g, length, d)
    weights = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=scale).softmax(-1)  # (B * G, R * L, L)
    return torch.bmm(weights, v).view(b, h, length, d)  # (B * G, R * L, D) -> (B, H, L, D)


def packed_inputs(
    rows: list[torch.Tensor], branches: list[list[torch.Tensor]] | None = None
) -> dict[str, Any]:
    """1-D token rows -> a backbone's keyword arguments that pack them end to end: ``input_ids`` and
    ``position_ids`` (1, N), restarting at each row, and ``segments`` for ``causal_attention``. With
    ``branches`` (per row, the 1-D continuations that share it as their prompt [D25]) each row is
    followed by its branches, each positioned right after the row and reading only the row and itself."""
    branches = branches or [[] for _ in rows]
    device = rows[0].device
    tokens, positions, segments = [], [], []
    for row, continuations in zip(rows, branches, strict=True):
        n = len(row)
        tokens += [row, *continuations]
        positions += [torch.arange(n, device=device)]
        positions += [torch.arange(n, n + len(c), device=device) for c in continuations]
        segments.append((n, *(len(c) for c in continuations)))
    return {
        "input_ids": torch.cat(tokens)[None],
        "position_ids": torch.cat(positions)[None],
        "segments": segments,
    }


def rows_mask(
    *, attention_mask: torch.Tensor | None, q_length: int, kv_length: int, **kwargs: Any
) -> torch.Tensor | None:
    """SDPA's mask function, except that unpadded rows without a cache (packed ones included, which
    transformers would give a block-diagonal mask) get none: ``causal_attention`` keeps them causal."""
    if attention_mask is None and q_length == kv_length:
        return None
    return sdpa_mask(attention_mask=attention_mask, q_length=q_length, kv_length=kv_length, **kwargs)


# A mask function is registered too, so that a padded batch still gets its mask (and goes to SDPA);
# unpadded rows get None from it and take the path above.
AttentionInterface.register(CAUSAL_ROWS, causal_attention)
AttentionMaskInterface.register(CAUSAL_ROWS, rows_mask)

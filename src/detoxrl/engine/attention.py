"""Causal self-attention of unpadded rows packed end to end, registered with transformers.

Rows of different lengths run as one sequence (``row_lengths``; position ids restart at each row):
every linear layer then sees one large matrix instead of a small one per row, and only attention
needs to know where rows end. Each row attends causally to itself alone, without a mask. In bf16 on
the CPU, SDPA's flash kernel has a slow backward at a few hundred tokens and the "eager" attention
spends as long on its float32 softmax, mask and casts as on its matmuls; one row needs neither a
padding mask nor repeated key/value heads, so the query heads that share a key/value head are
stacked into one matmul, and the causal mask and the scale enter that matmul (``baddbmm``). Float32
rows use SDPA. bench/README.md measures both. Knows nothing of PPO or of which model calls it.

Shapes: B rows, H query heads, G key/value heads (H = G * R), L tokens, D head size.
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


def causal_bias(length: int, repeats: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(1, R * L, L) additive mask, -inf above the diagonal of each of the R stacked (L, L) blocks."""
    above = torch.ones(length, length, dtype=torch.bool, device=device).triu(1)
    bias = torch.zeros(length, length, dtype=dtype, device=device).masked_fill_(above, float("-inf"))
    return bias.repeat(repeats, 1)[None]


@functools.lru_cache(maxsize=1)
def causal_biases(
    lengths: tuple[int, ...], repeats: int, dtype: torch.dtype, device: torch.device
) -> list[torch.Tensor]:
    """``causal_bias`` of each packed row, made once per pass (every layer of it asks again; the rows
    cycle through each layer, so a cache by length alone would be rebuilt at every layer)."""
    made = {n: causal_bias(n, repeats, dtype, device) for n in set(lengths)}
    return [made[n] for n in lengths]


def causal_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    row_lengths: list[int] | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """query (B, H, L, D), key and value (B, G, L, D) -> ((B, L, H, D), None), as transformers'
    attention functions; with ``row_lengths`` (B = 1, summing to L) each packed row attends only to
    itself. Anything but plain causal self-attention over unpadded rows (a mask, a KV cache longer
    than the query, dropout, soft-capping, sinks) goes to SDPA unchanged."""
    _, h, length, d = query.shape
    g = key.shape[1]
    plain = attention_mask is None and key.shape[2] == length and h % g == 0 and not dropout
    extras = kwargs.get("softcap") or kwargs.get("s_aux") is not None
    if not plain or extras or not getattr(module, "is_causal", True):
        if row_lengths is not None and len(row_lengths) > 1:
            raise ValueError("Packed rows (row_lengths) need plain causal self-attention without a mask.")
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    scale = scaling if scaling is not None else d**-0.5
    rows = row_lengths or [length]
    biases = (
        [None] * len(rows)
        if query.dtype == torch.float32  # SDPA is faster there than our matmuls
        else causal_biases(tuple(rows), h // g, query.dtype, query.device)
    )
    parts = zip(*(x.split(rows, 2) for x in (query, key, value)), biases, strict=True)
    outs = [causal_row(q, k, v, scale, bias) for q, k, v, bias in parts]  # each (B, H, L_i, D)
    out = outs[0] if len(outs) == 1 else torch.cat(outs, 2)
    return out.transpose(1, 2), None


def causal_row(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float, bias: torch.Tensor | None
) -> torch.Tensor:
    """query (B, H, L, D), key and value (B, G, L, D) of one row -> (B, H, L, D), causal: through SDPA
    without a ``bias``, else (bf16/fp16) the stacked query heads in one ``baddbmm`` with ``bias``
    (``causal_bias``), softmax, ``bmm``."""
    if bias is None:
        return F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scale, enable_gqa=True)
    b, h, length, d = query.shape
    g = key.shape[1]
    r = h // g
    q = query.reshape(b * g, r * length, d)  # query head j reads key/value head j // R
    k, v = key.reshape(b * g, length, d), value.reshape(b * g, length, d)
    weights = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=scale).softmax(-1)  # (B * G, R * L, L)
    return torch.bmm(weights, v).view(b, h, length, d)  # (B * G, R * L, D) -> (B, H, L, D)


def packed_inputs(rows: list[torch.Tensor]) -> dict[str, Any]:
    """1-D token rows -> a backbone's keyword arguments that pack them end to end: ``input_ids`` and
    ``position_ids`` (1, N), restarting at each row, and ``row_lengths`` for ``causal_attention``."""
    lengths = [len(row) for row in rows]
    positions = torch.cat([torch.arange(n, device=rows[0].device) for n in lengths])
    return {"input_ids": torch.cat(rows)[None], "position_ids": positions[None], "row_lengths": lengths}


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

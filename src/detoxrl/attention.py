"""Causal self-attention for the gradient passes of one unpadded row, registered with transformers.

On the CPU in bf16, SDPA's flash kernel has a slow backward at a few hundred tokens and the "eager"
attention spends as long on its float32 softmax, mask and casts as on its matmuls. One row of a
causal LM needs neither a padding mask nor repeated key/value heads: the query heads that share a
key/value head are stacked into one matmul, and the causal mask and the scale enter that matmul
(``baddbmm``). bench/README.md measures it. Knows nothing of PPO or of which model calls it.

Shapes: B rows, H query heads, G key/value heads (H = G * R), L tokens, D head size.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

CAUSAL_ROWS = "detoxrl_causal_rows"


@functools.lru_cache(maxsize=4)
def causal_bias(length: int, repeats: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(1, R * L, L) additive mask, -inf above the diagonal of each of the R stacked (L, L) blocks."""
    above = torch.ones(length, length, dtype=torch.bool, device=device).triu(1)
    bias = torch.zeros(length, length, dtype=dtype, device=device).masked_fill_(above, float("-inf"))
    return bias.repeat(repeats, 1)[None]


def causal_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """query (B, H, L, D), key and value (B, G, L, D) -> ((B, L, H, D), None), as transformers'
    attention functions. Anything but plain causal self-attention over unpadded rows (a mask, a
    KV cache longer than the query, dropout, soft-capping, sinks) goes to SDPA unchanged."""
    b, h, length, d = query.shape
    g = key.shape[1]
    plain = attention_mask is None and key.shape[2] == length and h % g == 0 and not dropout
    extras = kwargs.get("softcap") or kwargs.get("s_aux") is not None
    if not plain or extras or not getattr(module, "is_causal", True):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    r = h // g
    scale = scaling if scaling is not None else d**-0.5
    q = query.reshape(b * g, r * length, d)  # query head j reads key/value head j // R
    k, v = key.reshape(b * g, length, d), value.reshape(b * g, length, d)
    bias = causal_bias(length, r, query.dtype, query.device)
    weights = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=scale).softmax(-1)  # (B * G, R * L, L)
    out = torch.bmm(weights, v)  # (B * G, R * L, D)
    return out.view(b, h, length, d).transpose(1, 2), None


# A mask function is registered too, so that a padded batch still gets its mask (and goes to SDPA);
# an unpadded row gets None from it and takes the path above.
AttentionInterface.register(CAUSAL_ROWS, causal_attention)
AttentionMaskInterface.register(CAUSAL_ROWS, sdpa_mask)

"""The causal attention of unpadded rows (attention.py) computes what SDPA computes, forward and
backward, and hands anything else (a padding mask) to SDPA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import detoxrl.attention as attention
from detoxrl.attention import CAUSAL_ROWS, causal_attention

pytestmark = pytest.mark.usefixtures("one_thread")


def run(model: torch.nn.Module, implementation: str, **inputs: torch.Tensor) -> tuple[torch.Tensor, list]:
    """Logits and the gradients of every weight for one implementation of attention."""
    model.config._attn_implementation = implementation
    model.zero_grad()
    logits = model(**inputs).logits
    (logits * torch.linspace(-1, 1, logits.shape[-1])).sum().backward()
    return logits.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_unpadded_rows_equal_sdpa_with_grouped_heads(tiny_causal_dir: Path, monkeypatch) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_causal_dir, dtype=torch.float32)
    assert model.config.num_attention_heads != model.config.num_key_value_heads  # grouped queries
    handed_on, sdpa = [], attention.sdpa_attention_forward
    monkeypatch.setattr(
        attention, "sdpa_attention_forward", lambda *a, **k: handed_on.append(1) or sdpa(*a, **k)
    )
    ids = torch.tensor([[5, 10, 6, 27, 4, 9, 50, 42, 17]])
    expected, expected_grads = run(model, "sdpa", input_ids=ids)
    logits, grads = run(model, CAUSAL_ROWS, input_ids=ids)
    assert not handed_on  # the rows' own path, every layer
    assert torch.allclose(logits, expected, atol=1e-5)
    assert all(torch.allclose(g, e, atol=1e-5) for g, e in zip(grads, expected_grads, strict=True))
    padded = {"input_ids": torch.cat([ids, ids]), "attention_mask": torch.ones(2, 9, dtype=torch.long)}
    padded["attention_mask"][1, :3] = 0
    expected, _ = run(model, "sdpa", **padded)
    logits, _ = run(model, CAUSAL_ROWS, **padded)
    assert handed_on  # a padding mask goes to SDPA, never dropped
    assert torch.allclose(logits[:, 3:], expected[:, 3:], atol=1e-5)


def test_causal_attention_masks_the_future_and_reads_each_query_heads_group() -> None:
    torch.manual_seed(0)
    query, key, value = torch.randn(1, 4, 5, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    module = torch.nn.Module()
    out, _ = causal_attention(module, query, key, value, None, scaling=0.5)  # (B, L, H, D)
    for head in range(4):
        g = head // 2  # heads 0, 1 read key/value head 0; heads 2, 3 read head 1
        scores = (query[0, head] @ key[0, g].T * 0.5).masked_fill(torch.ones(5, 5).triu(1).bool(), -torch.inf)
        assert torch.allclose(out[0, :, head], scores.softmax(-1) @ value[0, g], atol=1e-6)

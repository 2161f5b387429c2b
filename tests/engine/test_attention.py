"""The causal attention of unpadded rows (attention.py) computes what SDPA computes, forward and
backward, keeps rows packed end to end apart, and hands anything else (a padding mask) to SDPA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import detoxrl.engine.attention as attention
from detoxrl.engine.attention import CAUSAL_ROWS, causal_attention, packed_inputs

pytestmark = pytest.mark.usefixtures("one_thread")

ROWS = [torch.tensor(r) for r in ([5, 10, 6, 27], [4, 9, 50, 42, 17, 7, 39, 8, 11], [12, 13])]


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


def tiny_model(architecture: str, dtype: torch.dtype) -> torch.nn.Module:
    """A 2-layer causal LM: Llama (rotary positions, grouped queries) or GPT-2 (learned positions)."""
    import transformers as tf

    torch.manual_seed(0)
    config = (
        tf.LlamaConfig(
            vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2,
        )
        if architecture == "llama"
        else tf.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=1, eos_token_id=1)
    )  # fmt: skip
    return tf.AutoModelForCausalLM.from_config(config).to(dtype).eval()  # eval: no dropout


# (architecture, dtype, tolerance) of the packed-attention equivalence tests
MODELS = [("llama", torch.float32, 1e-5), ("gpt2", torch.float32, 1e-5), ("llama", torch.bfloat16, 0.02)]


def close(a: torch.Tensor, b: torch.Tensor, tol: float) -> bool:
    """Equal to ``tol`` relative to the larger of 1 and b's largest entry."""
    return float((a.float() - b.float()).abs().max()) <= tol * max(1.0, float(b.float().abs().max()))


@pytest.mark.parametrize(("architecture", "dtype", "tol"), MODELS)
def test_rows_packed_end_to_end_equal_each_row_alone(
    architecture: str, dtype: torch.dtype, tol: float
) -> None:
    model = tiny_model(architecture, dtype)
    backbone = model.base_model
    alone = torch.cat([backbone(input_ids=row[None]).last_hidden_state[0] for row in ROWS])  # SDPA
    weights = torch.linspace(-1, 1, alone.shape[-1], dtype=dtype)
    (alone * weights).sum().backward()
    expected_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    model.config._attn_implementation = CAUSAL_ROWS
    packed = backbone(**packed_inputs(ROWS)).last_hidden_state[0]  # (N, H), one sequence
    (packed * weights).sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert packed.shape == alone.shape
    assert close(packed, alone, tol)  # no row sees another
    assert all(close(g, e, tol) for g, e in zip(grads, expected_grads, strict=True))
    crossed = backbone(input_ids=torch.cat(ROWS)[None]).last_hidden_state[0]  # rows not told apart
    assert not close(crossed[len(ROWS[0]) :], alone[len(ROWS[0]) :], tol)


def test_packed_rows_refuse_a_mask() -> None:
    query, key = torch.randn(1, 4, 6, 8), torch.randn(1, 2, 6, 8)
    mask = torch.ones(1, 1, 6, 6, dtype=torch.bool)
    with pytest.raises(ValueError, match="segments"):
        causal_attention(torch.nn.Module(), query, key, key, mask, segments=[(2,), (4,)])


def test_each_packed_rows_mask_is_made_once_per_pass_not_per_layer(monkeypatch) -> None:
    model = tiny_model("llama", torch.bfloat16)  # 2 layers
    model.config._attn_implementation = CAUSAL_ROWS
    made, make = [], attention.causal_bias
    monkeypatch.setattr(attention, "causal_bias", lambda s, *a: made.append(s) or make(s, *a))
    attention.segment_masks.cache_clear()
    with torch.no_grad():
        model.base_model(**packed_inputs(ROWS))
    assert sorted(made) == sorted((len(row),) for row in ROWS)


@pytest.mark.parametrize(("architecture", "dtype", "tol"), MODELS)
def test_d25_a_shared_prompt_runs_once_and_each_branch_equals_its_row_alone(
    architecture: str, dtype: torch.dtype, tol: float
) -> None:
    """A prompt followed by three continuations (one empty) in one segment: every continuation's hidden
    states, and every weight's gradient, as if each prompt + continuation ran alone."""
    model = tiny_model(architecture, dtype)
    backbone = model.base_model
    prompt, other = ROWS[1], ROWS[0]
    continuations = [torch.tensor([3, 44, 21]), torch.tensor([60]), torch.tensor([], dtype=torch.long)]
    alone = [backbone(input_ids=torch.cat([prompt, c])[None]).last_hidden_state[0] for c in continuations]
    alone.append(backbone(input_ids=other[None]).last_hidden_state[0])
    weights = torch.linspace(-1, 1, alone[0].shape[-1], dtype=dtype)
    expected = [alone[0]] + [a[len(prompt) :] for a in alone[1:3]] + [alone[3]]  # the prompt counted once
    (torch.cat(expected) * weights).sum().backward()
    expected_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    model.config._attn_implementation = CAUSAL_ROWS
    inputs = packed_inputs([prompt, other], [continuations, []])
    assert inputs["segments"] == [(9, 3, 1, 0), (4,)]
    assert inputs["position_ids"][0, 9:13].tolist() == [9, 10, 11, 9]  # each branch right after the prompt
    packed = backbone(**inputs).last_hidden_state[0]  # (9 + 3 + 1 + 4, H)
    (packed * weights).sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert close(packed, torch.cat(expected), tol)  # no branch sees another
    assert all(close(g, e, tol) for g, e in zip(grads, expected_grads, strict=True))

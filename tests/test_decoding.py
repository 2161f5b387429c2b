"""The CPU engine's lean decoding step (engine/decoding.LlamaStep) computes what transformers' forward
computes, step after step over a left-padded cache, with LoRA on any linear layer, in float32 and in
bf16 with prepacked weights (or plain matmuls where the probes say no); models it does not cover take
transformers' forward."""

from __future__ import annotations

import weakref
from pathlib import Path

import pytest
import torch

from detoxrl.config import LoraSettings, PolicyConfig, SamplingConfig
from detoxrl.engine import decoding, probes
from detoxrl.engine.cpu import CpuEngine, CpuOptions
from detoxrl.engine.decoding import LlamaStep, TransformersStep, llama_style
from detoxrl.engine.reference import cache_name, plain_causal_lm
from detoxrl.models import load_policy
from detoxrl.policy import build_actor_critic
from test_sampling import QUERIES, perturbed

pytestmark = pytest.mark.usefixtures("one_thread")


def left_padded_cache(backbone, prompts: list[torch.Tensor], slots: int) -> tuple[list, list, torch.Tensor]:
    """Each prompt prefilled alone by transformers, right-aligned in per-layer (B, G, slots, D) buffers."""
    sizes = [len(q) for q in prompts]
    p = max(sizes)
    outs = [backbone(input_ids=q[None], use_cache=True) for q in prompts]
    name = cache_name(backbone)
    keys, values = [], []
    for layer in range(len(outs[0][name].layers)):
        g, d = outs[0][name].layers[layer].keys.shape[1], outs[0][name].layers[layer].keys.shape[-1]
        k = outs[0][name].layers[layer].keys.new_zeros(len(prompts), g, slots, d)
        v = torch.zeros_like(k)
        for row, out in enumerate(outs):
            k[row, :, p - sizes[row] : p] = out[name].layers[layer].keys[0]
            v[row, :, p - sizes[row] : p] = out[name].layers[layer].values[0]
        keys.append(k), values.append(v)
    return keys, values, torch.tensor(sizes)


def decode_both(backbone, prompts: list[torch.Tensor], steps: int) -> tuple[list, list]:
    """The hidden states of ``steps`` decoding steps (the same tokens fed to both) from each step kind."""
    keys, values, lengths = left_padded_cache(backbone, prompts, max(len(q) for q in prompts) + steps)
    lean = LlamaStep(backbone, keys, values, lengths, decoding.prepacked, {})  # type: ignore[arg-type]
    plain = TransformersStep(backbone, [k.clone() for k in keys], [v.clone() for v in values], lengths)
    tokens = torch.randint(4, 60, (steps, len(prompts)))
    return [lean(tokens[t], t) for t in range(steps)], [plain(tokens[t], t) for t in range(steps)]


@torch.no_grad()
def test_llama_step_equals_transformers_forward_with_lora_on_any_layer(tiny_causal_dir: Path) -> None:
    every = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    config = PolicyConfig(model=str(tiny_causal_dir), lora=LoraSettings(target_modules=every))
    ac = build_actor_critic(load_policy(config), config)
    torch.manual_seed(0)
    for name, p in ac.model.named_parameters():
        if "lora_B" in name:
            p.normal_(0, 0.3)
    backbone, _ = plain_causal_lm(ac.model)
    assert llama_style(backbone)
    lean, plain = decode_both(backbone, QUERIES, 5)
    for a, b in zip(lean, plain, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    with ac.model.disable_adapter():  # the reference: the base weights alone
        lean, plain = decode_both(backbone, QUERIES, 2)
    assert torch.allclose(lean[-1], plain[-1], atol=1e-5)


@torch.no_grad()
def test_bf16_llama_step_with_prepacked_weights_stays_within_bf16_rounding(
    kernels: str, tiny_causal_dir: Path
) -> None:
    if kernels == "fast-kernels" and not probes.onednn_prepack(torch.bfloat16):
        pytest.skip(
            "needs oneDNN's bf16 prepack (AVX512-BW/VL/DQ or AVX-NE-CONVERT); the probe found none here"
        )
    config = PolicyConfig(model=str(tiny_causal_dir), dtype="bfloat16")
    ac = build_actor_critic(load_policy(config), config)
    for name, p in ac.model.named_parameters():
        if "lora_B" in name:
            p.normal_(0, 0.3)
    backbone, _ = plain_causal_lm(ac.model)
    with ac.engine.autocast(ac.model):
        lean, plain = decode_both(backbone, QUERIES, 5)
    for a, b in zip(lean, plain, strict=True):
        assert a.dtype == torch.bfloat16
        assert float((a.float() - b.float()).abs().max()) <= 0.03 * float(b.float().abs().max())


@torch.no_grad()
def test_sampling_through_either_step_gives_the_same_rollout(kernels: str, tiny_causal_dir: Path) -> None:
    runs = []
    for lean in (True, False):
        ac, _ = perturbed(tiny_causal_dir, CpuEngine(CpuOptions(lean_decoding=lean)))
        torch.manual_seed(5)
        runs.append(ac.sample(QUERIES, [7, 7, 7], SamplingConfig(), set(), 0))
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    assert torch.allclose(runs[0].logprobs, runs[1].logprobs, atol=1e-5)


@pytest.mark.parametrize("use_lora", [True, False])
def test_frozen_base_weights_are_fused_once_trained_ones_at_every_build(
    tiny_causal_dir: Path, use_lora: bool
) -> None:
    config = PolicyConfig(model=str(tiny_causal_dir), use_lora=use_lora)
    backbone, _ = plain_causal_lm(build_actor_critic(load_policy(config), config).model)
    fused: list[torch.Tensor] = []
    kept: decoding.FusedCache = weakref.WeakKeyDictionary()

    def linear(weight: torch.Tensor, rows: int) -> decoding.Linear:
        fused.append(weight)
        return decoding.prepacked(weight, rows)

    with torch.no_grad():
        for _ in range(2):
            LlamaStep(backbone, *left_padded_cache(backbone, QUERIES, 12), linear, kept)
    assert len(fused) == 4 * len(backbone.layers) * (1 if use_lora else 2)  # qkv, o, gate_up, down
    if not use_lora:  # a trained weight that changed between builds is read again
        with torch.no_grad():
            backbone.layers[0].mlp.down_proj.weight.add_(1.0)
            lean, plain = decode_both(backbone, QUERIES, 1)
        assert torch.allclose(lean[0], plain[0], atol=1e-5)


def test_other_models_take_transformers_forward(tiny_causal_dir: Path) -> None:
    import transformers as tf

    gpt2 = tf.GPT2Model(tf.GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=4))
    biased = tf.LlamaModel(
        tf.LlamaConfig(
            vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
            attention_bias=True,
        )
    )  # fmt: skip
    assert not llama_style(gpt2)
    assert not llama_style(biased)  # q, k, v and o carry biases the lean step does not add
    assert LlamaStep.build(biased, [], [], torch.tensor([1]), decoding.prepacked, {}) is None  # type: ignore[arg-type]

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
from detoxrl.engine.decoding import LlamaStep, PromptCache, TransformersStep, llama_style
from detoxrl.engine.reference import cache_name, plain_causal_lm
from detoxrl.models.actor_critic import build_actor_critic
from detoxrl.models.loading import load_policy
from helpers import QUERIES, perturbed

pytestmark = pytest.mark.usefixtures("one_thread")


def prompt_cache(backbone, prompts: list[torch.Tensor], rows: list[list[int]] | None = None) -> PromptCache:
    """Each distinct prompt prefilled alone by transformers; ``rows`` the batch rows of each (one each)."""
    outs = [backbone(input_ids=q[None], use_cache=True) for q in prompts]
    layers = zip(*(o[cache_name(backbone)].layers for o in outs), strict=True)
    kv = [([x.keys[0] for x in layer], [x.values[0] for x in layer]) for layer in layers]
    return PromptCache.right_aligned(kv, rows or [[i] for i in range(len(prompts))])


def decode_both(
    backbone, prompts: list[torch.Tensor], steps: int, rows: list[list[int]] | None = None
) -> tuple[list, list]:
    """The hidden states of ``steps`` decoding steps (the same tokens fed to both) from each step kind."""
    cache = prompt_cache(backbone, prompts, rows)
    lean = LlamaStep(backbone, cache, steps, decoding.prepacked, {})  # type: ignore[arg-type]
    plain = TransformersStep(backbone, cache, steps)
    tokens = torch.randint(4, 60, (steps, len(cache.prompt_of_rows())))
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


@pytest.mark.parametrize(
    "rows",
    [[[0, 3], [1, 4], [2, 5]], [[5, 0, 2], [1, 3, 4]], [[0], [1, 2, 4], [3, 5]]],
    ids=["k=2 interleaved", "k=3", "unequal copies"],
)
@torch.no_grad()
def test_d27_rows_sharing_a_prompt_read_it_once_and_decode_as_with_their_own_copies(
    tiny_causal_dir: Path, rows: list[list[int]]
) -> None:
    """[D27] k rows of one prompt (in any batch order, or unequal numbers of rows, which take a copy per
    row) give what transformers' forward gives over a copy of the prompt per row; rows of one prompt fed
    the same tokens stay equal and rows fed different tokens differ."""
    config = PolicyConfig(model=str(tiny_causal_dir))
    ac = build_actor_critic(load_policy(config), config)
    for name, p in ac.model.named_parameters():
        if "lora_B" in name:
            p.normal_(0, 0.3)
    backbone, _ = plain_causal_lm(ac.model)
    prompts = QUERIES[: len(rows)]
    torch.manual_seed(1)
    lean, plain = decode_both(backbone, prompts, 4, rows)
    for a, b in zip(lean, plain, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    step = LlamaStep(backbone, prompt_cache(backbone, prompts, rows), 2, decoding.prepacked, {})  # type: ignore[arg-type]
    same = step(torch.full((6,), 7), 0)
    first, second = next(group for group in rows if len(group) > 1)[:2]
    assert torch.allclose(same[first], same[second], atol=1e-6)
    tokens = torch.full((6,), 7)
    tokens[second] = 9
    apart = step(tokens, 1)
    assert not torch.allclose(apart[first], apart[second], atol=1e-3)


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
def test_frozen_weights_are_fused_once_adapted_or_trained_ones_at_every_build(
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
            LlamaStep(backbone, prompt_cache(backbone, QUERIES), 12, linear, kept)
    # qkv, o, gate_up, down at the first build; at the second, those that carry an adapter (LoRA on q, k, v
    # and o: merged afresh) or train (full fine-tuning: all four)
    assert len(fused) == len(backbone.layers) * (4 + (2 if use_lora else 4))
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
    assert (
        LlamaStep.build(biased, PromptCache([], [], torch.tensor([1]), [[0]]), 1, decoding.prepacked, {})
        is None
    )  # type: ignore[arg-type]

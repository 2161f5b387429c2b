"""The engine on a CUDA GPU (marked ``gpu``; skipped without one; ``bench/gpu_check.sh`` runs them): the
reference engine gives the CPU's numbers there, sampling keeps D17, bf16 trains float32 master weights,
and a short run learns. CI never has a GPU."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

from detoxrl.config import PolicyConfig, PPOConfig, RunConfig, SamplingConfig
from detoxrl.core.batch import make_batch
from detoxrl.engine import ReferenceEngine, select_engine
from detoxrl.models.actor_critic import ActorCritic, build_actor_critic
from detoxrl.models.loading import load_policy, torch_dtype
from detoxrl.recipes.train import train

DEVICE = os.environ.get("DETOXRL_GPU_TEST_DEVICE", "cuda")  # "cpu" tries these tests without a GPU
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        DEVICE == "cuda" and not torch.cuda.is_available(),
        reason="needs a CUDA GPU (bench/gpu_check.sh runs these)",
    ),
]
QUERIES = [torch.tensor(q) for q in ([5, 10, 6, 27], [4, 9, 50, 42, 17, 7, 39], [12, 13])]
RESPONSES = [torch.tensor(r) for r in ([20, 21, 22], [30, 31, 32, 33, 34, 35], [40])]


def actor_critic(path: Path, device: str, dtype: str = "float32") -> ActorCritic:
    config = PolicyConfig(model=str(path), dtype=dtype)  # type: ignore[arg-type]
    torch.manual_seed(0)
    ac = build_actor_critic(load_policy(config, device), config, engine=select_engine("auto", device))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in ac.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator).to(p.device) * 0.3)
    return ac


def test_auto_runs_the_reference_engine_in_bf16_on_the_gpu() -> None:
    if DEVICE != "cuda":
        pytest.skip("about CUDA itself")
    assert type(select_engine("auto", "cuda")) is ReferenceEngine
    assert torch_dtype("auto", "cuda") == (
        torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    )


@pytest.mark.parametrize("kind", ["causal", "seq2seq"])
def test_the_gpu_computes_the_cpus_log_probs(
    kind: str, tiny_causal_dir: Path, tiny_seq2seq_dir: Path
) -> None:
    path = tiny_causal_dir if kind == "causal" else tiny_seq2seq_dir
    gpu, cpu = actor_critic(path, DEVICE), actor_critic(path, "cpu")
    batch = make_batch(QUERIES, RESPONSES, 0, gpu.is_encoder_decoder)
    mask = batch.response_mask.bool()
    on_gpu = gpu(batch.to(DEVICE), temperature=0.7).logprobs.cpu()
    assert torch.allclose(on_gpu[mask], cpu(batch, temperature=0.7).logprobs[mask], atol=1e-4)


@pytest.mark.parametrize("kind", ["causal", "seq2seq"])
def test_d17_on_the_gpu(kind: str, tiny_causal_dir: Path, tiny_seq2seq_dir: Path) -> None:
    ac = actor_critic(tiny_causal_dir if kind == "causal" else tiny_seq2seq_dir, DEVICE)
    torch.manual_seed(3)
    sampled = ac.sample(QUERIES, [6, 3, 8], SamplingConfig(temperature=0.7, top_p=0.9), {1}, 0)
    assert sampled.tokens.device.type == torch.device(DEVICE).type
    batch = make_batch(QUERIES, sampled.responses(), 0, ac.is_encoder_decoder).to(DEVICE)
    full, mask, t = ac(batch, temperature=0.7), batch.response_mask.bool(), batch.response_ids.shape[1]
    assert [len(r) <= n for r, n in zip(sampled.responses(), [6, 3, 8], strict=True)] == [True] * 3
    assert torch.allclose(sampled.logprobs[:, :t][mask], full.logprobs[mask], atol=1e-4)
    assert torch.allclose(ac.value_head(sampled.hidden[:, :t])[mask], full.values[mask], atol=1e-4)


def test_bf16_on_the_gpu_trains_float32_master_weights(tiny_causal_dir: Path) -> None:
    ac = actor_critic(tiny_causal_dir, DEVICE, "bfloat16")
    batch = make_batch(QUERIES, RESPONSES, 0, False).to(DEVICE)
    out = ac(batch)
    assert out.logprobs.dtype == torch.float32
    out.logprobs[batch.response_mask.bool()].sum().backward()
    grads = [p.grad for p in ac.trainable_parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_a_short_run_learns_on_the_gpu(sharp_causal_dir: Path, tmp_path: Path) -> None:
    """The CPU learning test's run (tests/test_trainer.py) on the GPU."""
    friendly = {"kind", "friend", "help", "helpful", "thank", "lovely", "park", "walk"}

    def reward(prompts: list[str], responses: list[str]) -> torch.Tensor:
        return torch.tensor([float(sum(w in friendly for w in r.split())) for r in responses])

    config = RunConfig(
        policy=PolicyConfig(model=str(sharp_causal_dir), chat_template=False),
        generation=SamplingConfig(max_new_tokens=8),
        ppo=PPOConfig(learning_rate=1e-2, batch_size=16, mini_batch_size=8, ppo_epochs=4, init_kl_coef=0.1),
        steps=20, save_every=1000, device=DEVICE,
    )  # fmt: skip
    prompts = ["you are a kind", "the movie was", "what a lovely day", "i hate waiting"] * 4
    records = train(config, prompts, reward, tmp_path, progress=False).metrics
    rewards, kls = [r["env/reward_mean"] for r in records], [r["objective/kl"] for r in records]
    assert sum(rewards[-5:]) / 5 > sum(rewards[:3]) / 3 + 0.8, rewards
    assert all(math.isfinite(k) for k in kls) and max(kls) < 40.0

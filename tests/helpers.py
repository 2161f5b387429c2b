"""What several test modules share: tiny rewards, run configs, the learning and resume checks, a trainer on a
tiny model, perturbed actor-critics. Not a test module itself."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from detoxrl.config import PolicyConfig, PPOConfig, RunConfig, SamplingConfig
from detoxrl.engine.cpu import CpuEngine
from detoxrl.models.actor_critic import ActorCritic, build_actor_critic
from detoxrl.models.loading import load_policy
from detoxrl.recipes.train import train
from detoxrl.rundir import latest_checkpoint
from detoxrl.training.classic import PPOTrainer

PROMPTS = ["you are a kind", "the movie was", "what a lovely day", "i hate waiting"] * 4


def words_reward(words: set[str]) -> Any:
    """Reward = how many of the response's tokens are in ``words`` (the tiny tokenizer is word-level)."""

    def reward(prompts: list[str], responses: list[str]) -> torch.Tensor:
        return torch.tensor([float(sum(w in words for w in r.split())) for r in responses])

    return reward


def penalty_reward(words: set[str]) -> Any:
    """Reward = minus the number of penalised tokens in the response."""

    def reward(prompts: list[str], responses: list[str]) -> torch.Tensor:
        return torch.tensor([-float(sum(w in words for w in r.split())) for r in responses])

    return reward


def run_config(model: Path, steps: int, **ppo: Any) -> RunConfig:
    settings: dict[str, Any] = {
        "learning_rate": 1e-2,
        "batch_size": 16,
        "mini_batch_size": 8,
        "ppo_epochs": 4,
    }
    settings["init_kl_coef"] = 0.1
    return RunConfig(
        policy=PolicyConfig(model=str(model), chat_template=False),
        generation=SamplingConfig(min_new_tokens=8, max_new_tokens=8, length_sampling="fixed"),
        ppo=PPOConfig(**{**settings, **ppo}),
        steps=steps,
        save_every=1000,
    )


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_learns(records: list[dict[str, Any]], min_gain: float) -> tuple[float, float]:
    """The reward of the last 5 steps beats that of the first 3 by ``min_gain``; KL finite and bounded."""
    rewards = [r["env/reward_mean"] for r in records]
    before, after = sum(rewards[:3]) / 3, sum(rewards[-5:]) / 5
    kls = [r["objective/kl"] for r in records]
    # The first rollout precedes any update; decoder-only old log-probs come from the sampling pass
    # (KV cache), the reference's from a full pass: equal up to float32 rounding.
    assert abs(records[0]["objective/kl"]) < 1e-4
    assert all(math.isfinite(k) for k in kls) and max(kls) < 40.0, kls
    assert after - before > min_gain, rewards
    return before, after


def assert_resume_repeats_the_run(config: RunConfig, tmp_path: Path) -> list[dict[str, Any]]:
    """``config`` (4 steps) trained straight, and for 2 steps then resumed to 4: every logged figure of every
    step and the final adapter equal. Returns the straight run's records."""
    reward = text_length_reward  # varies from the first step (a rare word's count can be 0 throughout)
    train(config, PROMPTS, reward, tmp_path / "straight", progress=False)
    train(RunConfig(**{**vars(config), "steps": 2}), PROMPTS, reward, tmp_path / "split", progress=False)
    assert latest_checkpoint(tmp_path / "split") is not None
    train(config, PROMPTS, reward, tmp_path / "split", resume=True, progress=False)
    straight, split = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "split")
    assert [r["step"] for r in split] == [1, 2, 3, 4]
    for a, b in zip(straight, split, strict=True):
        assert a["samples"] == b["samples"]
        for key in a:
            if key != "samples" and not key.startswith("time/"):
                assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
    from safetensors.torch import load_file

    w1 = load_file(tmp_path / "straight" / "final" / "adapter_model.safetensors")
    w2 = load_file(tmp_path / "split" / "final" / "adapter_model.safetensors")
    assert all(torch.allclose(w1[k], w2[k], atol=1e-6) for k in w1)
    return straight


def make_trainer(model_dir: Path, **ppo: Any) -> PPOTrainer:
    policy_config = PolicyConfig(model=str(model_dir), chat_template=False)
    policy = load_policy(policy_config)
    ac = build_actor_critic(policy, policy_config)
    config = PPOConfig(**{"batch_size": 8, "mini_batch_size": 4, "learning_rate": 1e-2, **ppo})
    return PPOTrainer(config, ac, policy.tokenizer, SamplingConfig(max_new_tokens=6))


QUERIES = [torch.tensor(q) for q in ([5, 10, 6, 27], [4, 9, 50, 42, 17, 7, 39], [12, 13])]


def perturbed(path: Path, engine: CpuEngine | None = None, **config: object) -> tuple[ActorCritic, object]:
    """An actor-critic whose adapter and value head are not at their (trivial) initial values."""
    policy_config = PolicyConfig(model=str(path), **config)  # type: ignore[arg-type]
    policy = load_policy(policy_config)
    torch.manual_seed(0)
    ac = build_actor_critic(policy, policy_config, engine=engine)
    with torch.no_grad():
        for name, p in ac.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
        ac.value_head.summary.weight.normal_(0, 0.5)
    return ac, policy.tokenizer


def text_length_reward(prompts: list[str], responses: list[str]) -> torch.Tensor:
    return torch.tensor([float(len(r)) for r in responses])

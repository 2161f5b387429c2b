"""RLOO and GRPO on the trainer and the loop (trainer.py, loop.py, rollout.py): learning on both model
kinds, no critic anywhere, k samples per prompt in consecutive rows, exact resume, no reference pass
without a KL coefficient, and the classic generate / step API with groups."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from detoxrl.config import PolicyConfig, PPOConfig, RunConfig, SamplingConfig
from detoxrl.errors import TrainingError
from detoxrl.models.actor_critic import ActorCritic, build_actor_critic
from detoxrl.models.loading import load_policy
from detoxrl.recipes.train import train
from detoxrl.rundir import latest_checkpoint
from detoxrl.training.checkpoint import VALUE_HEAD_FILE
from detoxrl.training.classic import PPOTrainer
from detoxrl.training.trainer import Trainer
from helpers import (
    PROMPTS,
    assert_learns,
    assert_resume_repeats_the_run,
    make_trainer,
    penalty_reward,
    read_metrics,
    run_config,
    words_reward,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SHARED_KEYS = [
    "objective/kl", "objective/kl_coef", "objective/entropy", "ppo/mean_scores", "ppo/policy/advantages_mean",
    "ppo/policy/clipfrac", "ppo/policy/approxkl", "ppo/loss/policy", "ppo/loss/kl", "ppo/loss/total",
    "env/reward_mean", "env/reward_std", "tokens/responses_len_mean", "time/forward", "time/update",
]  # fmt: skip
CRITIC_KEYS = ("ppo/val/", "ppo/returns/", "ppo/loss/value")


@pytest.mark.parametrize("algorithm", ["rloo", "grpo"])
def test_decoder_only_learns_the_rewarded_words_without_a_critic(
    algorithm: str, sharp_causal_dir: Path, tmp_path: Path
) -> None:
    """The PPO learning test's dense reward (test_trainer.py). Over 6 seeds and 2 instruction sets (this
    CPU's and AVX2 with every probe off) the gain was 1.0-3.9 (rloo) and 0.7-2.1 (grpo) of 8 tokens."""
    friendly = {"kind", "friend", "help", "helpful", "thank", "lovely", "park", "walk"}
    config = run_config(sharp_causal_dir, 20, algorithm=algorithm)
    records = train(config, PROMPTS, words_reward(friendly), tmp_path, progress=False).metrics
    before, after = assert_learns(records, min_gain=0.4)
    assert set(SHARED_KEYS) <= set(records[-1])
    assert not [k for k in records[-1] if k.startswith(CRITIC_KEYS)]  # no value head, no value loss
    assert (tmp_path / "final" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "final" / VALUE_HEAD_FILE).exists()
    print(f"{algorithm} decoder-only: reward {before:.3f} -> {after:.3f}")


@pytest.mark.parametrize("algorithm", ["rloo", "grpo"])
def test_encoder_decoder_learns_to_avoid_penalised_tokens_without_a_critic(
    algorithm: str, tiny_seq2seq_dir: Path, tmp_path: Path
) -> None:
    """Over 6 seeds and 2 instruction sets the penalty fell by 0.84-1.78 (rloo) and 0.62-1.35 (grpo) tokens
    from about 1.5, i.e. by 38-94 %."""
    penalised = {"tommy", "report", "did", "and", "one", "are", "you", "the"}
    config = run_config(tiny_seq2seq_dir, 20, algorithm=algorithm)
    records = train(config, PROMPTS, penalty_reward(penalised), tmp_path, progress=False).metrics
    before, after = assert_learns(records, min_gain=0.3)
    assert after > before * 3 / 4  # the penalty falls by at least a quarter
    print(f"{algorithm} encoder-decoder: reward {before:.3f} -> {after:.3f}")


def test_the_loop_samples_each_prompt_k_times_in_consecutive_rows(
    tiny_causal_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """[D19] batch_size / k prompts a step, each k times in a row, the k sharing one drawn length limit."""
    seen: list[tuple[list[torch.Tensor], list[int]]] = []
    rollout = Trainer.rollout

    def spy(self: Trainer, queries: list[torch.Tensor], limits: list[int], seeds: list[int]) -> Any:
        seen.append((queries, limits))
        return rollout(self, queries, limits, seeds)

    monkeypatch.setattr(Trainer, "rollout", spy)
    config = run_config(
        tiny_causal_dir, 2, algorithm="rloo", batch_size=12, mini_batch_size=4, num_generations=3
    )
    generation = SamplingConfig(min_new_tokens=2, max_new_tokens=9, length_sampling="per_prompt")
    prompts = [f"{p} {word}" for p in PROMPTS[:4] for word in ("park", "friend", "report")]  # 12 distinct
    train(RunConfig(**{**vars(config), "generation": generation}), prompts, words_reward({"kind"}), tmp_path,
          progress=False)  # fmt: skip
    for queries, limits in seen:
        assert len(queries) == 12
        groups = [queries[i : i + 3] for i in range(0, 12, 3)]
        assert all(all(torch.equal(q, g[0]) for q in g) for g in groups)
        assert len({tuple(g[0].tolist()) for g in groups}) == 4  # 4 distinct prompts
        assert all(len(set(limits[i : i + 3])) == 1 for i in range(0, 12, 3))
    assert len({n for _, limits in seen for n in limits}) > 1  # drawn per prompt, not fixed


def test_rloo_resumes_exactly_and_saves_no_value_head(tiny_causal_dir: Path, tmp_path: Path) -> None:
    config = run_config(tiny_causal_dir, 4, algorithm="rloo", batch_size=8, mini_batch_size=2, ppo_epochs=2,
                        num_generations=2, score_norm=True, normalize_advantages=True)  # fmt: skip
    config = RunConfig(**{**vars(config), "generation": SamplingConfig(min_new_tokens=2, max_new_tokens=6)})
    straight = assert_resume_repeats_the_run(config, tmp_path)
    assert straight[-1]["objective/kl"] != 0.0 and straight[-1]["ppo/mean_non_score_reward"] < 0.0
    checkpoint = latest_checkpoint(tmp_path / "split")
    assert checkpoint is not None and not (checkpoint / "policy" / VALUE_HEAD_FILE).exists()


def test_grpo_without_a_kl_coefficient_makes_no_reference_pass(
    tiny_causal_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_reference(*args: object, **kwargs: object) -> None:
        raise AssertionError("a reference pass")

    monkeypatch.setattr(ActorCritic, "reference_logprobs", no_reference)
    options = {"init_kl_coef": 0.0, "adaptive_kl": False, "scale_rewards": "none", "loss_type": "dr_grpo"}
    config = run_config(tiny_causal_dir, 2, algorithm="grpo", batch_size=8, mini_batch_size=4, **options)
    records = train(config, PROMPTS, words_reward({"kind", "movie"}), tmp_path, progress=False).metrics
    assert all("objective/kl" not in r and r["ppo/loss/kl"] == 0.0 for r in records)  # nothing to measure
    assert all(r["ppo/updates"] == 8.0 for r in records)


def test_d25_grpo_mini_batches_are_whole_groups_and_run_each_prompt_once(
    tiny_causal_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen, micro_step = [], Trainer._micro_step
    monkeypatch.setattr(
        Trainer,
        "_micro_step",
        lambda self, exp, rows, *a: seen.append(rows.tolist()) or micro_step(self, exp, rows, *a),
    )
    config = run_config(tiny_causal_dir, 2, algorithm="grpo", batch_size=8, mini_batch_size=4, ppo_epochs=2)
    train(config, PROMPTS, words_reward({"kind", "movie"}), tmp_path, progress=False)
    assert len(seen) == 8 and all(rows in ([0, 1, 2, 3], [4, 5, 6, 7]) for rows in seen)


def test_d26_an_entropy_bonus_alone_widens_the_policy(sharp_causal_dir: Path, tmp_path: Path) -> None:
    """GRPO with a constant reward (advantages 0) and no KL term: the loss is the entropy bonus alone,
    and the entropy of a peaked policy rises step after step; the metric appears only with the bonus."""

    def constant(prompts: list[str], responses: list[str]) -> torch.Tensor:
        return torch.full((len(responses),), 0.5)

    options = {"init_kl_coef": 0.0, "adaptive_kl": False, "learning_rate": 3e-2}
    config = run_config(sharp_causal_dir, 4, algorithm="grpo", batch_size=8, mini_batch_size=4, **options)
    flat = train(config, PROMPTS, constant, tmp_path / "flat", progress=False)
    assert all("ppo/policy/entropy" not in r for r in flat.metrics)
    config = RunConfig(**{**vars(config), "ppo": PPOConfig(**{**vars(config.ppo), "entropy_coef": 1.0})})
    records = train(config, PROMPTS, constant, tmp_path / "wide", progress=False).metrics
    entropy = [r["ppo/policy/entropy"] for r in records]
    assert entropy[-1] > entropy[0] + 0.05 and all(b > a for a, b in itertools.pairwise(entropy))
    assert all(r["ppo/loss/total"] == pytest.approx(-r["ppo/policy/entropy"], abs=1e-5) for r in records)


def test_d28_an_entropy_floor_leaves_a_policy_at_the_references_entropy_alone(
    sharp_causal_dir: Path, tmp_path: Path
) -> None:
    """The D26 setting (constant reward, no KL term) with the floor on: the policy starts as the reference
    (fresh LoRA), no position falls short, so the loss and its gradient are 0 and the adapter stays
    zero, where the plain bonus widened the policy (test above); the reference pass runs for the floor
    though the KL coefficient is 0."""

    def constant(prompts: list[str], responses: list[str]) -> torch.Tensor:
        return torch.full((len(responses),), 0.5)

    options = {"init_kl_coef": 0.0, "adaptive_kl": False, "learning_rate": 3e-2, "entropy_coef": 1.0}
    config = run_config(
        sharp_causal_dir, 3, algorithm="grpo", batch_size=8, mini_batch_size=4, entropy_floor=True, **options
    )
    result = train(config, PROMPTS, constant, tmp_path / "floor", progress=False)
    assert all(r["ppo/loss/total"] == pytest.approx(0.0, abs=1e-6) for r in result.metrics)
    assert all(r["ppo/policy/entropy"] > 1.0 for r in result.metrics)  # measured, not skipped
    adapter = load_file(result.final_dir / "adapter_model.safetensors")
    assert all(not w.any() for name, w in adapter.items() if "lora_B" in name)  # no update moved it


def test_classic_step_takes_each_querys_samples_as_consecutive_rows(tiny_seq2seq_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"critic=False"):
        make_trainer(tiny_seq2seq_dir, algorithm="grpo")
    policy_config = PolicyConfig(model=str(tiny_seq2seq_dir), chat_template=False)
    policy = load_policy(policy_config)
    ac = build_actor_critic(policy, policy_config, critic=False)
    assert ac.value_head is None and not any(n.startswith("value_head") for n, _ in ac.named_parameters())
    with pytest.raises(ValueError, match=r"critic=True"):
        PPOTrainer(PPOConfig(), ac, policy.tokenizer)
    config = PPOConfig(algorithm="grpo", batch_size=8, mini_batch_size=4, learning_rate=1e-2)
    trainer = PPOTrainer(config, ac, policy.tokenizer, SamplingConfig(max_new_tokens=5))
    queries = [torch.tensor(policy.tokenizer(p)["input_ids"]) for p in PROMPTS[:2] for _ in range(4)]
    responses = trainer.generate(queries)
    stats = trainer.step(queries, responses, torch.tensor([float(len(r)) for r in responses]))
    assert stats["ppo/updates"] == 2.0 and stats["ppo/policy/advantages_mean"] == pytest.approx(0.0, abs=1e-6)
    interleaved = [queries[i] for i in (0, 4, 1, 5, 2, 6, 3, 7)]  # the groups' rows not consecutive
    with pytest.raises(TrainingError, match="consecutive rows"):
        trainer.step(interleaved, responses, torch.ones(8))


def test_full_finetuning_trains_without_a_critic_against_a_frozen_copy(
    tiny_seq2seq_dir: Path, tmp_path: Path
) -> None:
    """[D16] The same reference for rloo and grpo: here full fine-tuning's frozen copy, on a T5."""
    config = run_config(
        tiny_seq2seq_dir, 3, algorithm="grpo", batch_size=8, mini_batch_size=4, learning_rate=1e-3
    )
    config = RunConfig(
        **{**vars(config), "policy": PolicyConfig(model=str(tiny_seq2seq_dir), use_lora=False)}
    )
    records = train(config, PROMPTS, words_reward({"kind", "movie"}), tmp_path, progress=False).metrics
    assert abs(records[0]["objective/kl"]) < 1e-4 and records[-1]["objective/kl"] != 0.0
    assert (tmp_path / "final" / "model.safetensors").is_file()
    assert not (tmp_path / "final" / VALUE_HEAD_FILE).exists()


@pytest.mark.parametrize("algorithm", ["ppo", "rloo", "grpo"])
def test_every_key_a_run_logs_is_in_the_metrics_glossary(
    algorithm: str, tiny_causal_dir: Path, tmp_path: Path
) -> None:
    import re

    config = run_config(tiny_causal_dir, 2, algorithm=algorithm, batch_size=8, entropy_coef=0.01)
    train(config, PROMPTS, words_reward({"kind"}), tmp_path / "run", progress=False)
    keys = {key for line in read_metrics(tmp_path / "run") for key in line}
    glossary = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    assert not keys - set(re.findall(r"`([a-z_/0-9]+)`", glossary)), "missing from docs/metrics.md"

"""Rollouts (rollout.py): the prompts of a step, and old log-probs that are exactly the log-probs of
the distribution transformers' own generate() sampled from (temperature included), for both model
kinds on both engines, and the experience records the updates consume (PPO's, the critic-free ones')."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from detoxrl.config import PolicyConfig, PPOConfig
from detoxrl.core.batch import make_batch, pad_left, pad_right
from detoxrl.engine import ReferenceEngine
from detoxrl.engine.cpu import CpuEngine
from detoxrl.models.actor_critic import build_actor_critic
from detoxrl.models.loading import load_policy
from detoxrl.training.rollout import GroupExperience, batch_indices, make_experience, old_policy

QUERIES = [torch.tensor(q) for q in ([5, 10, 6, 27], [4, 9, 50, 42, 17, 7, 39], [12, 13])]

pytestmark = pytest.mark.usefixtures("one_thread")


def test_batch_indices_are_a_pure_function_of_the_step_and_cover_every_prompt() -> None:
    steps = [batch_indices(10, 4, step, seed=3) for step in range(5)]  # 20 draws = 2 epochs of 10
    assert steps == [batch_indices(10, 4, step, seed=3) for step in range(5)]
    draws = [i for step in steps for i in step]
    first, second = draws[:10], draws[10:]
    assert sorted(first) == sorted(second) == list(range(10))
    assert steps[0] != batch_indices(10, 4, 0, seed=4)


@pytest.mark.parametrize("engine", [CpuEngine, ReferenceEngine])
@pytest.mark.parametrize("kind", ["causal", "seq2seq"])
def test_d1_old_logprobs_are_the_sampling_distributions_logprobs(
    engine: type[ReferenceEngine], kind: str, tiny_causal_dir: Path, tiny_seq2seq_dir: Path
) -> None:
    """Our teacher-forced pass against the logits of transformers' generate(): same padding, positions
    and temperature."""
    policy = load_policy(PolicyConfig(model=str(tiny_causal_dir if kind == "causal" else tiny_seq2seq_dir)))
    ac = build_actor_critic(policy, PolicyConfig(), engine=engine())
    enc_dec = policy.is_encoder_decoder
    ids, mask = (pad_right if enc_dec else pad_left)(QUERIES, 0)
    torch.manual_seed(0)
    out = ac.model.generate(
        input_ids=ids, attention_mask=mask, do_sample=True, temperature=0.7, max_new_tokens=6, pad_token_id=0,
        eos_token_id=1, output_logits=True, return_dict_in_generate=True,
    )  # fmt: skip
    rows = out.sequences[:, 1:] if enc_dec else out.sequences[:, ids.shape[1] :]
    responses = [r[: (r == 1).nonzero()[0, 0] + 1] if (r == 1).any() else r for r in rows]
    batch = make_batch(QUERIES, responses, 0, enc_dec)
    old = old_policy(ac, batch, 0.7)
    sampled = (torch.stack(out.logits, 1) / 0.7).log_softmax(-1)  # (B, T, V) what generate() sampled from
    for i, r in enumerate(responses):
        expected = sampled[i, : len(r)].gather(-1, r[:, None]).squeeze(-1)
        assert torch.allclose(old.logprobs[i, : len(r)], expected, atol=1e-5)
    assert torch.equal(old.logprobs, ac.reference_logprobs(batch, 0.7))  # a fresh adapter: KL exactly 0


def test_experience_holds_the_kl_penalised_rewards_and_whitened_advantages(tiny_causal_dir: Path) -> None:
    policy = load_policy(PolicyConfig(model=str(tiny_causal_dir)))
    ac = build_actor_critic(policy, PolicyConfig())
    responses = [torch.tensor(r) for r in ([20, 21, 22], [30, 31], [40])]
    batch = make_batch(QUERIES, responses, 0, False)
    old = old_policy(ac, batch, 1.0)
    old = type(old)(old.logprobs + 0.5 * batch.response_mask, old.values)  # the policy moved by 0.5 nats
    exp = make_experience(
        ac, batch, old, torch.tensor([1.0, 2.0, 3.0]), 0.1, config=PPOConfig(), temperature=1.0
    )
    mask = batch.response_mask
    assert torch.allclose(exp.kl, 0.5 * mask)  # k1 = logprob - ref_logprob on real tokens
    last = mask.sum(1) - 1
    expected = -0.1 * exp.kl
    expected[torch.arange(3), last] += torch.tensor([1.0, 2.0, 3.0])  # [D3] the score on the last token
    assert torch.allclose(exp.rewards, expected)
    real = exp.advantages[mask.bool()]
    assert abs(float(real.mean())) < 1e-5 and abs(float(real.std()) - 1) < 1e-3  # [D6] whitened
    assert (exp.advantages[~mask.bool()] == 0).all()


@pytest.mark.parametrize("algorithm", ["rloo", "grpo"])
def test_group_experience_holds_sequence_rewards_and_group_advantages(
    algorithm: str, tiny_causal_dir: Path
) -> None:
    """[D19]-[D21] Two prompts x two samples: no values; rloo's reward = score - 0.1 x the sequence's KL
    and the leave-one-out advantages; grpo's = the score, normalised within each pair."""
    policy = load_policy(PolicyConfig(model=str(tiny_causal_dir)))
    ac = build_actor_critic(policy, PolicyConfig(), critic=False)
    queries = [QUERIES[0], QUERIES[0], QUERIES[2], QUERIES[2]]
    responses = [torch.tensor(r) for r in ([20, 21, 22], [30, 31], [40], [41, 42, 43, 44])]
    batch = make_batch(queries, responses, 0, False)
    old = old_policy(ac, batch, 1.0)
    assert old.values is None
    moved = type(old)(old.logprobs + 0.5 * batch.response_mask, None)  # the policy moved by 0.5 nats a token
    scores = torch.tensor([1.0, 2.0, 3.0, 5.0])
    config = PPOConfig(algorithm=algorithm, num_generations=2, batch_size=4, mini_batch_size=2)  # type: ignore[arg-type]
    exp = make_experience(ac, batch, moved, scores, 0.1, config=config, temperature=1.0)
    assert isinstance(exp, GroupExperience) and exp.kl is not None
    assert torch.allclose(exp.kl.sum(1), 0.5 * torch.tensor([3.0, 2.0, 1.0, 4.0]))  # k1 over real tokens
    if algorithm == "rloo":
        rewards = scores - 0.1 * 0.5 * torch.tensor([3.0, 2.0, 1.0, 4.0])  # 0.85, 1.9, 2.95, 4.8
        assert torch.allclose(exp.rewards, rewards)
        assert torch.allclose(exp.advantages, torch.tensor([-1.05, 1.05, -1.85, 1.85]))  # r - the other's r
    else:
        assert torch.equal(exp.rewards, scores)
        std = 2**0.5 / 2, 2**0.5  # the Bessel-corrected stds of [1, 2] and [3, 5]
        expected = [-0.5 / (std[0] + 1e-4), 0.5 / (std[0] + 1e-4), -1 / (std[1] + 1e-4), 1 / (std[1] + 1e-4)]
        assert torch.allclose(exp.advantages, torch.tensor(expected))

"""The critic-free math (critic_free.py) on hand-computed tensors: RLOO's reward and leave-one-out
baseline, GRPO's group normalisation, the clipped ratios and KL term, and each loss_type's weights."""

from __future__ import annotations

import math

import pytest
import torch

from detoxrl.core import critic_free, ppo

NAN = float("nan")


def test_d19_groups_are_consecutive_rows() -> None:
    x = torch.arange(6.0)
    assert critic_free.grouped(x, 3).tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    with pytest.raises(ValueError, match="groups of 4"):
        critic_free.grouped(x, 4)


def test_d25_group_order_keeps_groups_whole_and_ppo_draws_as_before() -> None:
    torch.manual_seed(5)
    order = critic_free.group_order(12, 4)
    groups = order.view(3, 4)
    assert sorted(order.tolist()) == list(range(12))
    assert (groups - groups[:, :1] == torch.arange(4)).all() and (groups[:, 0] % 4 == 0).all()
    torch.manual_seed(5)
    plain = torch.randperm(7)
    torch.manual_seed(5)
    assert torch.equal(critic_free.group_order(7, 1), plain)


def test_d20_rloo_reward_subtracts_the_sequence_kl_from_the_score() -> None:
    logprobs = torch.tensor([[-1.0, -1.0, -1.0, 9.0], [-2.0, 7.0, 7.0, 7.0]])
    ref = torch.tensor([[-1.5, -0.5, -1.2, 0.0], [-3.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    kl = torch.where(mask.bool(), ppo.kl_estimate(logprobs, ref, "k1"), torch.zeros_like(ref))
    # k1 sums: 0.5 - 0.5 + 0.2 = 0.2 and 1.0; rewards 1 - 0.1 * 0.2 and 2 - 0.1 * 1.0
    rewards = critic_free.rloo_rewards(torch.tensor([1.0, 2.0]), kl, kl_coef=0.1)
    assert torch.allclose(rewards, torch.tensor([0.98, 1.9]))
    # the row sums of PPO's per-token rewards [D3]: the same sequence-level reward
    per_token = ppo.compute_rewards(torch.tensor([1.0, 2.0]), logprobs, ref, mask, kl_coef=0.1)
    assert torch.allclose(per_token.rewards.sum(1), rewards)


def test_d20_leave_one_out_baseline_hand_computed() -> None:
    rewards = torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0])
    advantages = critic_free.leave_one_out_advantages(rewards, 3)
    # group 1 (sum 9): baselines (9-1)/2 = 4, (9-2)/2 = 3.5, (9-6)/2 = 1.5; group 2 (sum 3): 1.5, 1.5, 0
    assert torch.allclose(advantages, torch.tensor([-3.0, -1.5, 4.5, -1.5, -1.5, 3.0]))
    groups = critic_free.grouped(rewards, 3)
    scaled = 3 / 2 * (groups - groups.mean(1, keepdim=True))  # k / (k - 1) (r - group mean)
    assert torch.allclose(advantages, scaled.flatten())
    assert torch.allclose(critic_free.grouped(advantages, 3).sum(1), torch.zeros(2))
    assert critic_free.leave_one_out_advantages(torch.tensor([5.0, 2.0]), 2).tolist() == [3.0, -3.0]


def test_d20_normalized_advantages_have_mean_0_and_std_1() -> None:
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    std = math.sqrt(5 / 3)  # Bessel-corrected: (2.25 + 0.25 + 0.25 + 2.25) / 3
    assert torch.allclose(critic_free.standardise(x), (x - 2.5) / (std + 1e-4))


def test_d21_group_normalisation_with_and_without_std_scaling() -> None:
    rewards = torch.tensor([1.0, 3.0, 2.0, 2.0])  # groups [1, 3] and [2, 2]
    group = critic_free.group_advantages(rewards, 2, "group")
    s = math.sqrt(2.0)  # the std of [1, 3], Bessel-corrected; [2, 2] has std 0: advantages 0, not NaN
    assert torch.allclose(group, torch.tensor([-1 / (s + 1e-4), 1 / (s + 1e-4), 0.0, 0.0]))
    batch = critic_free.group_advantages(rewards, 2, "batch")
    s = math.sqrt(2 / 3)  # the std of all four: (1 + 1 + 0 + 0) / 3
    assert torch.allclose(batch, torch.tensor([-1.0, 1.0, 0.0, 0.0]) / (s + 1e-4))
    assert critic_free.group_advantages(rewards, 2, "none").tolist() == [-1.0, 1.0, 0.0, 0.0]  # Dr. GRPO


def test_d22_rloo_loss_clips_one_ratio_per_sequence() -> None:
    # sequence 0: log-ratios log 2, 0, 0 (+ garbage in padding): r = 2; sequence 1: r = 0.9
    logprobs = torch.tensor(
        [[math.log(2), -1.0, -1.0, NAN], [math.log(0.9), NAN, NAN, NAN]], requires_grad=True
    )
    old = torch.tensor([[0.0, -1.0, -1.0, 5.0], [0.0, 1e9, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    advantages = torch.tensor([1.0, -2.0])
    out = critic_free.rloo_loss(logprobs, old, advantages, mask, step_rows=4, step_tokens=8.0, cliprange=0.2)
    # sequence 0: max(-1 * 2, -1 * 1.2) = -1.2 (clipped); sequence 1: max(2 * 0.9, 2 * 0.9) = 1.8
    assert out.policy_loss.item() == pytest.approx((-1.2 + 1.8) / 4)
    assert out.loss.item() == out.policy_loss.item() and out.kl_loss.item() == 0.0
    assert out.clipfrac.item() == pytest.approx(1 / 4)  # one sequence of the step's 4
    assert out.approxkl.item() == pytest.approx(0.5 * (math.log(2) ** 2 + math.log(0.9) ** 2) / 8)
    out.loss.backward()
    grad = logprobs.grad
    assert grad is not None
    # the clipped sequence gets no gradient; the other's ratio reaches its one token: -A r / rows
    assert torch.equal(grad[0], torch.zeros(4)) and grad[1, 0].item() == pytest.approx(2.0 * 0.9 / 4)
    assert torch.equal(grad[1, 1:], torch.zeros(3))


def test_d23_grpo_loss_clips_per_token_and_adds_k3_to_the_reference() -> None:
    logprobs = torch.log(torch.tensor([[0.5, 0.3, 1.0], [0.2, 1.0, 1.0]]))
    old = torch.log(torch.tensor([[0.25, 0.3, 1.0], [0.2, 1.0, 1.0]]))  # ratios 2, 1 | 1
    ref = logprobs + torch.tensor([[0.0, math.log(2), 0.0], [0.0, 0.0, 0.0]])  # q/p = 1, 2 | 1
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    logprobs[0, 2] = NAN  # garbage in padding
    advantages = torch.tensor([1.0, -0.5])
    weights = critic_free.loss_weights(mask, "dapo", step_rows=2, step_tokens=3.0, max_length=3)
    out = critic_free.grpo_loss(
        logprobs, old, ref, advantages, mask, weights=weights, step_tokens=3.0, cliprange=0.2, kl_coef=0.1
    )
    # tokens: max(-2, -1.2) = -1.2 (clipped), max(-1, -1) = -1, max(0.5, 0.5) = 0.5; mean over 3
    assert out.policy_loss.item() == pytest.approx((-1.2 - 1.0 + 0.5) / 3)
    k3 = (2 - 1) - math.log(2)  # (q/p - 1) - log(q/p) at the second token, 0 elsewhere
    assert out.kl_loss.item() == pytest.approx(k3 / 3)
    assert out.loss.item() == pytest.approx((-1.2 - 1.0 + 0.5) / 3 + 0.1 * k3 / 3)
    assert out.clipfrac.item() == pytest.approx(1 / 3)
    assert out.approxkl.item() == pytest.approx(0.5 * math.log(2) ** 2 / 3)
    no_reference = critic_free.grpo_loss(
        logprobs, old, None, advantages, mask, weights=weights, step_tokens=3.0, cliprange=0.2, kl_coef=0.0
    )
    assert no_reference.kl_loss.item() == 0.0 and no_reference.loss.item() == pytest.approx(-1.7 / 3)


def test_d22_d23_a_ratio_of_one_gives_minus_the_mean_advantage() -> None:
    torch.manual_seed(0)
    lengths = torch.tensor([3, 1, 4, 2])
    mask = (torch.arange(4) < lengths[:, None]).long()
    logprobs, advantages = torch.randn(4, 4), torch.randn(4)
    rloo = critic_free.rloo_loss(logprobs, logprobs.clone(), advantages, mask, 4, step_tokens=mask.sum())
    weights = critic_free.loss_weights(mask, "grpo", 4, mask.sum(), 4)
    grpo = critic_free.grpo_loss(
        logprobs, logprobs.clone(), None, advantages, mask, weights=weights, step_tokens=mask.sum()
    )
    for out in (rloo, grpo):
        assert out.policy_loss.item() == pytest.approx(-advantages.mean().item(), abs=1e-6)
        assert out.clipfrac.item() == 0 and out.approxkl.item() == 0


def test_d24_loss_type_weights_hand_computed() -> None:
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])  # 2 rows of an optimizer step of 4 rows, 6 tokens
    expected = {
        "grpo": [[1 / 12] * 3 + [0], [1 / 4, 0, 0, 0]],  # 1 / (|o_i| * 4 rows)
        "bnpo": [[1 / 8] * 3 + [0], [1 / 8, 0, 0, 0]],  # 1 / (4 tokens here * 2 micro-batches)
        "dr_grpo": [[1 / 16] * 3 + [0], [1 / 16, 0, 0, 0]],  # 1 / (4 rows * max length 4)
        "dapo": [[1 / 6] * 3 + [0], [1 / 6, 0, 0, 0]],  # 1 / the step's 6 tokens
    }
    for loss_type, weights in expected.items():
        got = critic_free.loss_weights(mask, loss_type, 4, 6.0, max_length=4, accumulation=2)  # type: ignore[arg-type]
        assert torch.allclose(got, torch.tensor(weights)), loss_type
    with pytest.raises(ValueError, match="dapo"):
        critic_free.loss_weights(mask, "sapo", 4, 6.0, 4)  # type: ignore[arg-type]


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_d24_micro_batches_add_up_to_the_step_except_bnpo(loss_type: critic_free.LossType) -> None:
    """grpo, dr_grpo and dapo weight a token by the step alone; bnpo by its micro-batch, as in trl."""
    torch.manual_seed(1)
    lengths = torch.tensor([5, 1, 3, 2])
    mask = (torch.arange(5) < lengths[:, None]).long()
    x = torch.randn(4, 5)

    def loss(rows: slice, accumulation: int) -> float:
        w = critic_free.loss_weights(mask[rows], loss_type, 4, mask.sum(), 5, accumulation=accumulation)
        return float(ppo.masked_sum(x[rows] * w, mask[rows]))

    whole, split = loss(slice(0, 4), 1), loss(slice(0, 2), 2) + loss(slice(2, 4), 2)
    if loss_type == "bnpo":  # 6 and 5 tokens in the halves: each half's mean, then their mean
        assert split != pytest.approx(whole, abs=1e-4)
    else:
        assert split == pytest.approx(whole, abs=1e-6)


def test_d30_preference_pairs_take_each_groups_best_and_worst_past_the_margin() -> None:
    scores = torch.tensor([0.5, 2.0, -1.0, 0.0, 1.0, 1.0, 1.0, 1.2])  # two groups of 4
    chosen, rejected = critic_free.preference_pairs(scores, 4)
    assert chosen.tolist() == [1, 7] and rejected.tolist() == [2, 4]  # a tie: its first row
    chosen, rejected = critic_free.preference_pairs(scores, 4, margin=0.5)  # the second gap is 0.2
    assert chosen.tolist() == [1] and rejected.tolist() == [2]
    chosen, rejected = critic_free.preference_pairs(torch.ones(4), 4)  # no gap, no pair
    assert chosen.numel() == rejected.numel() == 0


def test_d30_preference_loss_hand_computed_its_gradient_lifts_the_chosen_and_lowers_the_rejected() -> None:
    logprobs = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -0.5, -0.5]], requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0, -9.0], [-1.0, -1.0, -1.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    # rho_0 = 0.5 - 1.0 = -0.5 (the padding's -9 ignored), rho_1 = 3 * 0.5 = 1.5; chosen 0, rejected 1:
    # margin 0.1 * (-0.5 - 1.5) = -0.2, loss softplus(0.2) over 2 groups
    loss = critic_free.preference_loss(
        logprobs, ref, mask, torch.tensor([0]), torch.tensor([1]), beta=0.1, step_groups=2
    )
    assert loss.item() == pytest.approx(math.log1p(math.exp(0.2)) / 2)
    loss.backward()
    assert logprobs.grad is not None
    push = 0.1 / (1 + math.exp(-0.2)) / 2  # beta * sigmoid(-margin) / step_groups, per real token
    expected = torch.tensor([[-push, -push, 0.0], [push, push, push]])  # descent: chosen up, rejected down
    assert torch.allclose(logprobs.grad, expected)
    none = torch.tensor([], dtype=torch.long)
    assert critic_free.preference_loss(logprobs, ref, mask, none, none, beta=0.1, step_groups=2).item() == 0.0

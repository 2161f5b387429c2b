"""The PPO math on hand-computed tensors, against slow loop references, and on invariances (ppo.py)."""

from __future__ import annotations

import math

import pytest
import torch

from detoxrl.core import ppo

MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.float32)


def slow_gae(
    rewards: list[float], values: list[float], gamma: float, lam: float
) -> tuple[list[float], list[float]]:
    """GAE for one unpadded episode, written straight from Schulman et al. (2016), eq. 16."""
    n = len(rewards)
    advantages = []
    for t in range(n):
        total = 0.0
        for k in range(t, n):
            next_value = values[k + 1] if k + 1 < n else 0.0
            delta = rewards[k] + gamma * next_value - values[k]
            total += (gamma * lam) ** (k - t) * delta
        advantages.append(total)
    return advantages, [a + v for a, v in zip(advantages, values, strict=True)]


def test_d1_logprobs_divide_logits_by_temperature() -> None:
    logits = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]])  # (1, 2, 3)
    labels = torch.tensor([[2, 1]])
    lp = ppo.logprobs_from_logits(logits, labels, temperature=2.0)
    expected0 = 1.5 - math.log(math.exp(0.5) + math.exp(1.0) + math.exp(1.5))
    assert lp[0, 0].item() == pytest.approx(expected0, abs=1e-6)
    assert lp[0, 1].item() == pytest.approx(-math.log(3), abs=1e-6)


def test_d2_kl_estimators_on_hand_computed_values() -> None:
    logprobs, ref = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.0]])
    assert torch.allclose(ppo.kl_estimate(logprobs, ref, "k1"), torch.tensor([[0.5, -1.0]]))
    # k3 = exp(ref - logp) - 1 - (ref - logp): e^-0.5 - 1 + 0.5 and e^1 - 1 - 1
    k3 = ppo.kl_estimate(logprobs, ref, "k3")
    assert torch.allclose(k3, torch.tensor([[math.exp(-0.5) - 0.5, math.e - 2.0]]))
    assert (k3 >= 0).all()
    with pytest.raises(ValueError, match="k1"):
        ppo.kl_estimate(logprobs, ref, "k2")  # type: ignore[arg-type]


def test_d3_score_on_last_real_token_and_kl_penalty_everywhere() -> None:
    logprobs = torch.tensor([[-1.0, -1.0, -1.0, 9.0], [-2.0, -2.0, 7.0, 7.0]])
    ref = torch.tensor([[-1.5, -0.5, -1.0, 0.0], [-1.0, -2.0, 0.0, 0.0]])
    out = ppo.compute_rewards(torch.tensor([3.0, -1.0]), logprobs, ref, MASK, kl_coef=0.1)
    expected_kl = torch.tensor([[0.5, -0.5, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0]])
    assert torch.allclose(out.kl, expected_kl)
    expected = torch.tensor([[-0.05, 0.05, 3.0, 0.0], [0.1, -1.0, 0.0, 0.0]])
    assert torch.allclose(out.rewards, expected)


def test_d4_gae_hand_computed() -> None:
    # delta_1 = 1 + 0 - 0.2 = 0.8; delta_0 = 0 + 0.2 - 0.5 = -0.3; A_0 = -0.3 + 0.95 * 0.8 = 0.46
    out = ppo.compute_gae(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 0.2]]), torch.ones(1, 2), 1.0, 0.95)
    assert torch.allclose(out.advantages, torch.tensor([[0.46, 0.8]]))
    assert torch.allclose(out.returns, torch.tensor([[0.96, 1.0]]))


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (0.9, 0.5), (1.0, 1.0)])
def test_d4_gae_matches_a_slow_loop_on_ragged_batches(gamma: float, lam: float) -> None:
    torch.manual_seed(0)
    lengths = [5, 1, 3, 7]
    rewards, values = torch.randn(4, 7), torch.randn(4, 7)
    mask = (torch.arange(7) < torch.tensor(lengths)[:, None]).float()
    out = ppo.compute_gae(rewards, values, mask, gamma, lam)
    for i, n in enumerate(lengths):
        adv, ret = slow_gae(rewards[i, :n].tolist(), values[i, :n].tolist(), gamma, lam)
        assert torch.allclose(out.advantages[i, :n], torch.tensor(adv), atol=1e-5)
        assert torch.allclose(out.returns[i, :n], torch.tensor(ret), atol=1e-5)
        assert (out.advantages[i, n:] == 0).all() and (out.returns[i, n:] == 0).all()


def test_d4_gae_ignores_garbage_in_padding() -> None:
    torch.manual_seed(1)
    rewards, values = torch.randn(2, 4), torch.randn(2, 4)
    clean = ppo.compute_gae(rewards * MASK, values * MASK, MASK)
    garbage = torch.where(MASK.bool(), values, torch.full_like(values, float("nan")))
    dirty = ppo.compute_gae(torch.where(MASK.bool(), rewards, torch.full_like(rewards, 1e6)), garbage, MASK)
    assert torch.equal(clean.advantages, dirty.advantages) and torch.equal(clean.returns, dirty.returns)


def test_d6_whitening_uses_real_tokens_only() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0, 1e6], [4.0, 5.0, float("nan"), -7.0]])
    w = ppo.masked_whiten(x, MASK)
    real = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    assert torch.allclose(w[MASK.bool()], (real - real.mean()) / real.std(), atol=1e-4)
    assert (w[~MASK.bool()] == 0).all()
    kept = ppo.masked_whiten(x, MASK, shift_mean=False)
    assert torch.allclose(kept[MASK.bool()], (real - real.mean()) / real.std() + real.mean(), atol=1e-4)


def test_d26_entropy_of_uniform_peaked_and_tempered_logits() -> None:
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [50.0, 0.0, 0.0, 0.0], [math.log(3.0), 0.0, 0.0, -1e9]]])
    entropy = ppo.entropy_from_logits(logits)  # (1, 3)
    # uniform over 4: log 4; one token certain: 0; probabilities 3/5, 1/5, 1/5, 0
    expected = [math.log(4.0), 0.0, -(0.6 * math.log(0.6) + 2 * 0.2 * math.log(0.2))]
    assert torch.allclose(entropy[0], torch.tensor(expected), atol=1e-6)
    assert ppo.entropy_from_logits(logits[:, 2:], temperature=1e3)[0, 0] > entropy[0, 2]  # hotter: wider
    masked = torch.tensor([[[0.0, 0.0, float("-inf")]]])  # a token ruled out: no NaN
    assert torch.allclose(ppo.entropy_from_logits(masked), torch.tensor([[math.log(2.0)]]))


def test_d28_entropy_bonus_plain_and_with_the_references_entropy_as_a_floor() -> None:
    entropy = torch.tensor([[1.0, 2.0, 0.5], [3.0, 0.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    n_tokens = torch.tensor(8.0)  # the optimizer step's tokens, over every micro-batch
    assert ppo.entropy_bonus(entropy, mask, n_tokens).item() == pytest.approx((1 + 2 + 0.5 + 3) / 8)
    floor = torch.tensor([[1.5, 1.0, 0.5], [2.0, 9.0, 9.0]])
    # shortfalls relu(floor - entropy): 0.5, 0 (above), 0 (equal), 0 (above); padding ignored
    bonus = ppo.entropy_bonus(entropy, mask, n_tokens, floor)
    assert bonus.item() == pytest.approx(-0.5 / 8)
    bonus.backward()
    assert entropy.grad is not None  # lifted where below the floor only, no gradient at or above it
    assert torch.equal(entropy.grad, torch.tensor([[1 / 8, 0.0, 0.0], [0.0, 0.0, 0.0]]))


def test_d7_d8_ppo_loss_hand_computed() -> None:
    logprobs = torch.log(torch.tensor([[0.5, 0.3]]))
    old = torch.log(torch.tensor([[0.25, 0.3]]))  # ratios 2.0 and 1.0
    advantages = torch.tensor([[1.0, -2.0]])
    values, old_values, returns = (
        torch.tensor([[1.0, 0.0]]),
        torch.tensor([[0.5, 0.1]]),
        torch.tensor([[2.0, 0.0]]),
    )
    out = ppo.ppo_loss(
        logprobs,
        old,
        advantages,
        values,
        old_values,
        returns=returns,
        mask=torch.ones(1, 2),
        n_tokens=2.0,
        cliprange=0.2,
        cliprange_value=0.2,
        vf_coef=0.1,
    )
    # token 0: max(-1*2, -1*1.2) = -1.2 (clipped); token 1: max(2*1, 2*1) = 2.0  -> mean 0.4
    assert out.policy_loss.item() == pytest.approx(0.4)
    assert out.clipfrac.item() == pytest.approx(0.5)
    # token 0: V clipped to 0.5 + 0.2 = 0.7: max((1-2)^2, (0.7-2)^2) = 1.69 (clipped);
    # token 1: V = 0 lies within 0.1 +- 0.2: max(0, 0) = 0  -> 0.5 * mean = 0.4225
    assert out.value_loss.item() == pytest.approx(0.4225)
    assert out.value_clipfrac.item() == pytest.approx(0.5)
    assert out.loss.item() == pytest.approx(0.4 + 0.1 * 0.4225)
    assert out.approxkl.item() == pytest.approx(0.5 * math.log(2) ** 2 / 2)


def test_d7_ratio_one_gives_minus_mean_advantage_and_padding_is_ignored() -> None:
    lp = torch.tensor([[-1.0, -2.0, -3.0, 55.0], [-1.0, -1.0, 9.0, -9.0]])
    adv = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, 100.0, 100.0]])
    zeros = torch.zeros(2, 4)
    out = ppo.ppo_loss(lp, lp.clone(), adv, zeros, zeros, returns=zeros, mask=MASK, n_tokens=MASK.sum())
    assert out.policy_loss.item() == pytest.approx(-3.0)
    assert out.clipfrac.item() == 0 and out.approxkl.item() == 0


def test_d14_micro_batches_normalised_by_step_tokens_reproduce_the_full_batch_mean_and_gradient() -> None:
    torch.manual_seed(2)
    lengths = torch.tensor([6, 1, 3, 5])
    mask = (torch.arange(6) < lengths[:, None]).float()
    theta = torch.randn(4, 6, requires_grad=True)
    old, adv, old_v, ret = torch.randn(4, 6), torch.randn(4, 6), torch.randn(4, 6), torch.randn(4, 6)

    def loss(rows: slice, n_tokens: torch.Tensor) -> torch.Tensor:
        return ppo.ppo_loss(
            theta[rows] - 1.0,
            old[rows],
            adv[rows],
            theta[rows],
            old_v[rows],
            returns=ret[rows],
            mask=mask[rows],
            n_tokens=n_tokens,
        ).loss

    full = loss(slice(0, 4), mask.sum())
    (grad_full,) = torch.autograd.grad(full, theta)
    parts = [loss(slice(0, 2), mask.sum()), loss(slice(2, 4), mask.sum())]
    (grad_parts,) = torch.autograd.grad(parts[0] + parts[1], theta)
    assert (parts[0] + parts[1]).item() == pytest.approx(full.item(), abs=1e-6)
    assert torch.allclose(grad_full, grad_parts, atol=1e-7)
    # A per-micro-batch mean would weight the 1-token row like the 6-token one: a different loss.
    naive = (loss(slice(0, 2), mask[:2].sum()) + loss(slice(2, 4), mask[2:].sum())) / 2
    assert abs(naive.item() - full.item()) > 1e-3


def test_d9_adaptive_kl_controller() -> None:
    assert ppo.adaptive_kl_coef(0.2, 6.0, 16, 6.0, 10000) == pytest.approx(0.2)
    assert ppo.adaptive_kl_coef(0.2, 60.0, 16, 6.0, 10000) == pytest.approx(0.2 * (1 + 0.2 * 16 / 10000))
    assert ppo.adaptive_kl_coef(0.2, 3.0, 16, 6.0, 10000) == pytest.approx(0.2 * (1 - 0.2 * 16 / 10000))
    assert ppo.adaptive_kl_coef(0.2, 6.6, 100, 6.0, 1000) == pytest.approx(0.2 * (1 + 0.1 * 0.1))


def test_d10_running_moments_equal_moments_of_all_scores_seen() -> None:
    torch.manual_seed(3)
    a, b = torch.randn(5) * 3 + 1, torch.randn(7) - 2
    m = ppo.update_moments(ppo.update_moments(ppo.RunningMoments(), a), b)
    both = torch.cat([a, b]).double()
    assert m.count == 12
    assert m.mean == pytest.approx(both.mean().item())
    assert m.var == pytest.approx(both.var(unbiased=False).item())


def test_d10_score_transform_normalises_scales_and_clips() -> None:
    scores = torch.tensor([0.0, 2.0, 10.0])
    moments = ppo.RunningMoments(mean=2.0, var=4.0, count=3)
    out = ppo.transform_scores(scores, scale=0.5, moments=moments, clip=1.0)
    assert torch.allclose(out, torch.tensor([-0.5, 0.0, 1.0]))
    assert torch.equal(ppo.transform_scores(scores), scores)


def test_d29_tail_weighting_lowers_the_worst_share_by_its_distance_to_the_quantile() -> None:
    scores = torch.tensor([3.0, 0.0, 2.0, 1.0])
    # the 0.5 quantile of 0, 1, 2, 3 is 1.5: 0 and 1 lie 1.5 and 0.5 below it; weight 2 triples the gap
    out = ppo.tail_weighted(scores, share=0.5, weight=2.0)
    assert torch.allclose(out, torch.tensor([3.0, -3.0, 2.0, 0.0]))
    assert torch.equal(ppo.tail_weighted(scores, share=0.5, weight=0.0), scores)
    assert torch.equal(ppo.tail_weighted(scores, share=0.0, weight=2.0), scores)  # nothing below the minimum
    assert out.argsort().tolist() == scores.argsort().tolist()  # the ordering is kept


def test_d11_explained_variance() -> None:
    returns = torch.tensor([[1.0, 2.0, 3.0, 99.0], [4.0, 5.0, -9.0, 0.0]])
    assert ppo.explained_variance(returns, returns, MASK).item() == pytest.approx(1.0)
    mean = ppo.masked_mean(returns, MASK)
    assert ppo.explained_variance(
        torch.full_like(returns, mean.item()), returns, MASK
    ).item() == pytest.approx(0.0, abs=1e-6)

"""Rollouts -> experience: which prompts a step samples, and the record the update consumes: PPO's (the
reference pass, the KL-penalised per-token rewards, advantages and returns of a batch of sampled
responses) or the critic-free algorithms' (the reference pass, sequence rewards and group advantages of
k samples per prompt). Knows nothing of where scores come from or of the losses.

Shapes: B responses, P prompt tokens (padded), T response tokens (right-padded).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from detoxrl.config import PPOConfig
from detoxrl.core import critic_free, ppo
from detoxrl.core.batch import ResponseBatch
from detoxrl.models.actor_critic import ActorCritic, PolicyOutput
from detoxrl.models.sampling import Sampled


def batch_indices(n_prompts: int, batch_size: int, step: int, seed: int) -> list[int]:
    """The prompts of a step: consecutive slices of per-epoch seeded permutations (a pure function of
    the step, so a resumed run sees the same prompts)."""
    out = []
    for i in range(step * batch_size, (step + 1) * batch_size):
        epoch, pos = divmod(i, n_prompts)
        perm = torch.randperm(n_prompts, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        out.append(int(perm[pos]))
    return out


def sample_seeds(seed: int, step: int, n: int) -> list[int]:
    """The sampling seed of each of a step's ``n`` rollouts (``sampling.row_uniforms``): a pure function of
    the run's seed, the step and the row's place in the global batch, so a response does not depend on
    which process samples it or beside which rows."""
    return [((seed * 1_000_003 + step) * 1_000_033 + i) % 2**63 for i in range(n)]


@dataclass(frozen=True)
class Experience:
    """One batch of experience: everything the PPO update needs, computed once before any update [D1]."""

    batch: ResponseBatch  # prompts (B, P) and responses (B, T) with their masks
    logprobs: torch.Tensor  # (B, T) under the policy that sampled (temperature applied)
    ref_logprobs: torch.Tensor  # (B, T) under the frozen reference
    values: torch.Tensor  # (B, T) the critic's estimates before the update
    scores: torch.Tensor  # (B,) the transformed reward-model scores [D10]
    rewards: torch.Tensor  # (B, T) per-token rewards: -kl_coef * kl, + the score on the last token [D3]
    kl: torch.Tensor  # (B, T) the per-token KL estimate to the reference [D2]
    advantages: torch.Tensor  # (B, T) GAE [D4], whitened [D6]
    returns: torch.Tensor  # (B, T) advantages + values, the critic's targets
    ref_entropy: torch.Tensor | None = None  # (B, T) the reference's entropy, with ppo.entropy_floor [D28]

    def stats(self) -> dict[str, float]:
        """What it says, in trl's names: the rewards besides the score, returns, advantages, values."""
        mask = self.batch.response_mask.float()
        return {
            "ppo/mean_non_score_reward": float((self.rewards * mask).sum(1).mean() - self.scores.mean()),
            "ppo/mean_scores": float(self.scores.mean()),
            "ppo/returns/mean": float(ppo.masked_mean(self.returns, mask)),
            "ppo/returns/var": float(ppo.masked_var(self.returns, mask)),
            "ppo/policy/advantages_mean": float(ppo.masked_mean(self.advantages, mask)),
            "ppo/val/vpred": float(ppo.masked_mean(self.values, mask)),
            "ppo/val/explained_variance": float(ppo.explained_variance(self.values, self.returns, mask)),
        }


@dataclass(frozen=True)
class GroupExperience:
    """One batch of k samples per prompt for a critic-free update (rloo, grpo), the k samples of a prompt
    in consecutive rows [D19]; no values, no returns. Computed once before any update [D1]."""

    batch: ResponseBatch  # prompts (B, P) and responses (B, T) with their masks
    logprobs: torch.Tensor  # (B, T) under the policy that sampled (temperature applied)
    ref_logprobs: torch.Tensor | None  # (B, T) under the reference; None with a KL coefficient of 0
    scores: torch.Tensor  # (B,) the transformed reward-model scores [D10]
    rewards: torch.Tensor  # (B,) what the advantages compare: rloo: score - kl_coef * KL [D20]; grpo: score
    kl: torch.Tensor | None  # (B, T) the per-token KL estimate to the reference [D2], 0 on padding
    advantages: torch.Tensor  # (B,) leave-one-out [D20] or group-normalised [D21]
    ref_entropy: torch.Tensor | None = None  # (B, T) the reference's entropy, with ppo.entropy_floor [D28]

    def stats(self) -> dict[str, float]:
        """What it says, in trl's names (no returns, no values): rloo's KL penalty, the advantages' mean."""
        return {
            "ppo/mean_non_score_reward": float(self.rewards.mean() - self.scores.mean()),
            "ppo/mean_scores": float(self.scores.mean()),
            "ppo/policy/advantages_mean": float(self.advantages.mean()),
        }


@torch.no_grad()
def old_policy(
    actor_critic: ActorCritic, batch: ResponseBatch, temperature: float, sampled: Sampled | None = None
) -> PolicyOutput:
    """[D1][D17] The sampling policy's log-probs and values (None without a value head) of ``batch``:
    from the sampling pass itself (``sampled``, whose responses these are), else from one teacher-forced
    policy pass."""
    if sampled is None:
        return actor_critic(batch, temperature)
    t = batch.response_ids.shape[1]
    return PolicyOutput(sampled.logprobs[:, :t], actor_critic.values(sampled.hidden[:, :t]))


@torch.no_grad()
def make_experience(
    actor_critic: ActorCritic,
    batch: ResponseBatch,
    old: PolicyOutput,
    scores: torch.Tensor,
    kl_coef: float,
    *,
    config: PPOConfig,
    temperature: float,
    ref_logprobs: torch.Tensor | None = None,
) -> Experience | GroupExperience:
    """[D1] The reference pass (unless ``ref_logprobs`` (B, T) are given); [D2][D3] KL-penalised per-token
    rewards; [D4] GAE; [D6] whitening. For rloo and grpo, the group experience instead
    (``group_experience``)."""
    mask = batch.response_mask.float()
    scores = scores.to(mask.device).float()
    if config.algorithm != "ppo":
        return group_experience(
            actor_critic,
            batch,
            old.logprobs,
            scores,
            kl_coef,
            config=config,
            temperature=temperature,
            ref_logprobs=ref_logprobs,
        )
    assert old.values is not None, "PPO's actor-critic has a value head (PPOTrainer checks)"
    if ref_logprobs is None:
        ref_logprobs = actor_critic.reference_logprobs(batch, temperature)
    tr = ppo.compute_rewards(scores, old.logprobs, ref_logprobs, mask, kl_coef, estimator=config.kl_estimator)
    rewards = ppo.masked_whiten(tr.rewards, mask, shift_mean=False) if config.whiten_rewards else tr.rewards
    gae = ppo.compute_gae(rewards, old.values, mask, config.gamma, config.lam)
    return Experience(
        batch,
        old.logprobs,
        ref_logprobs,
        old.values,
        scores,
        tr.rewards,
        tr.kl,
        ppo.masked_whiten(gae.advantages, mask),
        gae.returns,
    )


@torch.no_grad()
def group_experience(
    actor_critic: ActorCritic,
    batch: ResponseBatch,
    logprobs: torch.Tensor,
    scores: torch.Tensor,
    kl_coef: float,
    *,
    config: PPOConfig,
    temperature: float,
    ref_logprobs: torch.Tensor | None = None,
) -> GroupExperience:
    """[D19]-[D21] The reference pass (unless ``ref_logprobs`` are given; none with a KL coefficient of 0,
    as in trl), the per-token KL, then rloo: the KL-penalised sequence rewards and leave-one-out
    advantages (standardised with ``normalize_advantages``); grpo: the scores' group-normalised
    advantages (its KL goes into the loss)."""
    mask = batch.response_mask.bool()
    if kl_coef == 0:
        ref_logprobs = None
    elif ref_logprobs is None:
        ref_logprobs = actor_critic.reference_logprobs(batch, temperature)
    kl = None
    if ref_logprobs is not None:
        estimate = ppo.kl_estimate(logprobs, ref_logprobs, config.kl_estimator)
        kl = torch.where(mask, estimate, torch.zeros_like(estimate))  # (B, T)
    k = config.group_size
    if config.algorithm == "rloo":
        rewards = scores if kl is None else critic_free.rloo_rewards(scores, kl, kl_coef)
        advantages = critic_free.leave_one_out_advantages(rewards, k)
        if config.normalize_advantages:
            advantages = critic_free.standardise(advantages)
    else:
        rewards, advantages = scores, critic_free.group_advantages(scores, k, config.scale_rewards)
    return GroupExperience(batch, logprobs, ref_logprobs, scores, rewards, kl, advantages)

"""Rollouts -> experience: which prompts a step samples, and the one record the PPO update consumes
(the reference pass, the KL-penalised per-token rewards, advantages and returns of a batch of sampled
responses). Knows nothing of where scores come from or of the PPO loss.

Shapes: B responses, P prompt tokens (padded), T response tokens (right-padded).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from detoxrl import ppo
from detoxrl.batch import ResponseBatch
from detoxrl.config import PPOConfig
from detoxrl.policy import ActorCritic, PolicyOutput
from detoxrl.sampling import Sampled


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


@torch.no_grad()
def old_policy(
    actor_critic: ActorCritic, batch: ResponseBatch, temperature: float, sampled: Sampled | None = None
) -> PolicyOutput:
    """[D1][D17] The sampling policy's log-probs and values of ``batch``: from the sampling pass itself
    (``sampled``, whose responses these are), else from one teacher-forced policy pass."""
    if sampled is None:
        return actor_critic(batch, temperature)
    t = batch.response_ids.shape[1]
    return PolicyOutput(sampled.logprobs[:, :t], actor_critic.value_head(sampled.hidden[:, :t]))


@torch.no_grad()
def make_experience(
    actor_critic: ActorCritic, batch: ResponseBatch, old: PolicyOutput, scores: torch.Tensor, kl_coef: float,
    config: PPOConfig, temperature: float, ref_logprobs: torch.Tensor | None = None,
) -> Experience:  # fmt: skip
    """[D1] The reference pass (unless ``ref_logprobs`` (B, T) are given); [D2][D3] KL-penalised per-token
    rewards; [D4] GAE; [D6] whitening."""
    mask = batch.response_mask.float()
    scores = scores.to(mask.device).float()
    if ref_logprobs is None:
        ref_logprobs = actor_critic.reference_logprobs(batch, temperature)
    tr = ppo.compute_rewards(scores, old.logprobs, ref_logprobs, mask, kl_coef, config.kl_estimator)
    rewards = ppo.masked_whiten(tr.rewards, mask, shift_mean=False) if config.whiten_rewards else tr.rewards
    gae = ppo.compute_gae(rewards, old.values, mask, config.gamma, config.lam)
    return Experience(batch, old.logprobs, ref_logprobs, old.values, scores, tr.rewards, tr.kl,
                      ppo.masked_whiten(gae.advantages, mask), gae.returns)  # fmt: skip

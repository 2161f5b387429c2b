"""The critic-free algorithms' math (RLOO, GRPO) as pure tensor functions. Knows nothing of models,
configs or I/O; shares ppo.py's conventions (and its KL estimators and masked sums).

Both replace PPO's learned critic with the other samples of the same prompt: a step samples k responses
to each of B / k prompts, the k samples of a prompt in consecutive rows ("group-major": row i * k + j
is sample j of prompt i) [D19]. RLOO (Ahmadian et al. 2024) subtracts from each sample's reward the mean
reward of the other k - 1 [D20] and clips one ratio per sequence [D22]; GRPO (Shao et al. 2024) divides
each sample's reward minus its group's mean by a standard deviation [D21], clips per token and adds the
KL to the reference to the loss [D23], averaged over tokens as ``loss_type`` says [D24]. The options
carry trl's names (``num_generations``, ``scale_rewards``, ``loss_type``, ``normalize_advantages``).

Shapes: B responses, G = B / k groups of k, T response tokens (right-padded); ``mask`` (B, T) is 1 on
real response tokens. Sequence-level quantities (rewards, advantages) are (B,).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from detoxrl.core import ppo

RewardScaling = Literal["group", "batch", "none"]
LossType = Literal["grpo", "bnpo", "dr_grpo", "dapo"]
STD_EPS = 1e-4  # trl's: added to standard deviations before dividing


def grouped(x: torch.Tensor, k: int) -> torch.Tensor:
    """[D19] (B,) -> (G, k): row g holds the k samples of prompt g (consecutive rows)."""
    if x.shape[0] % k:
        raise ValueError(f"{x.shape[0]} rows do not form groups of {k} consecutive samples.")
    return x.view(-1, k)


def group_order(n: int, k: int) -> torch.Tensor:
    """[D25] A random order of n = G * k rows that keeps each group's k consecutive rows together and in
    order, so that a mini-batch of whole groups runs each prompt once -> (n,). k = 1: ``torch.randperm(n)``
    itself (the same draw), as PPO shuffles."""
    return (torch.randperm(n // k)[:, None] * k + torch.arange(k)).flatten()


def rloo_rewards(scores: torch.Tensor, kl: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """[D20] RLOO's reward: the score (B,) minus ``kl_coef`` times the sequence's KL, the sum of its
    per-token estimates ``kl`` (B, T), 0 on padding (Ahmadian et al. 2024; trl RLOOTrainer).
    It is the row sum of PPO's per-token rewards [D3]."""
    return scores - kl_coef * kl.sum(1)


def leave_one_out_advantages(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """[D20] Each sample's reward minus the mean reward of the other k - 1 samples of its prompt:
    (B,) -> (B,), equal to k / (k - 1) times its distance to the group mean; each group sums to 0."""
    groups = grouped(rewards, k)  # (G, k)
    baselines = (groups.sum(1, keepdim=True) - groups) / (k - 1)
    return (groups - baselines).flatten()


def standardise(x: torch.Tensor) -> torch.Tensor:
    """[D20] (B,) -> mean 0, (Bessel-corrected) std 1 over the batch: RLOO's ``normalize_advantages``."""
    return (x - x.mean()) / (x.std() + STD_EPS)


def group_advantages(rewards: torch.Tensor, k: int, scale: RewardScaling = "group") -> torch.Tensor:
    """[D21] GRPO's advantages (B,) -> (B,): each reward minus its group's mean, divided by the standard
    deviation (Bessel-corrected, + 1e-4) of its group (``group``, Shao et al. 2024 sec. 4.1.2), of the
    whole batch (``batch``, the "Lite PPO" of arXiv:2508.08221, as trl cites it) or not at all
    (``none``, Liu et al. 2025's Dr. GRPO: the group std weights prompts by how alike their samples are)."""
    groups = grouped(rewards, k)  # (G, k)
    centred = groups - groups.mean(1, keepdim=True)
    if scale == "none":
        return centred.flatten()
    std = groups.std(1, keepdim=True) if scale == "group" else rewards.std()
    return (centred / (std + STD_EPS)).flatten()


def loss_weights(
    mask: torch.Tensor,
    loss_type: LossType,
    step_rows: int,
    step_tokens: torch.Tensor | float,
    max_length: int,
    *,
    accumulation: int = 1,
) -> torch.Tensor:
    """[D24] The weight (B, T) of each real token's loss in a micro-batch of an optimizer step of
    ``step_rows`` rows and ``step_tokens`` real tokens (``accumulation`` micro-batches), as trl's
    ``loss_type`` averages them (0 on padding):

    * ``grpo``: a token mean per sequence, then the mean over the step's sequences: 1 / (|o_i| rows);
    * ``bnpo``: the token mean of this micro-batch, then the mean over the step's micro-batches;
    * ``dr_grpo``: the token sum over a constant, the step's rows times ``max_length`` (Dr. GRPO);
    * ``dapo``: the token mean over the step, 1 / step_tokens (DAPO; PPO's own [D14]).
    Only ``bnpo`` depends on how a step is split into micro-batches, as in trl.
    """
    m = mask.float()
    if loss_type == "grpo":
        return m / (m.sum(1, keepdim=True).clamp(min=1) * step_rows)
    if loss_type == "bnpo":
        return m / (m.sum().clamp(min=1) * accumulation)
    if loss_type == "dr_grpo":
        return m / (max_length * step_rows)
    if loss_type == "dapo":
        return m / step_tokens
    raise ValueError(f"Unknown loss_type '{loss_type}'; use grpo, bnpo, dr_grpo or dapo.")


@dataclass(frozen=True)
class PolicyLoss:
    """[D22][D23] The critic-free loss to backpropagate and its parts, each a 0-d tensor. Like
    ``ppo.PPOLoss`` each term is already divided by its optimizer step's size, so the terms of its
    micro-batches add up to the step's."""

    loss: torch.Tensor  # policy_loss + kl_coef * kl_loss
    policy_loss: torch.Tensor
    kl_loss: torch.Tensor  # the k3 KL term of GRPO's loss [D23]; 0 for RLOO (its KL is in the reward)
    clipfrac: torch.Tensor  # the share of clipped units: sequences (RLOO), tokens (GRPO)
    approxkl: torch.Tensor  # 0.5 E[(log r)^2] per token, as PPO's [D7] (the early stop reads it [D15])
    policykl: torch.Tensor
    entropy: torch.Tensor = field(default_factory=lambda: torch.zeros(()))  # [D26], with entropy_coef > 0
    preference: torch.Tensor = field(default_factory=lambda: torch.zeros(()))  # [D30], preference_coef > 0


def preference_pairs(scores: torch.Tensor, k: int, margin: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """[D30] The pair of each group of k consecutive rows: its best-scored row (chosen) and its worst
    (rejected), for the groups whose best score beats the worst by more than ``margin``.
    scores (B,) -> chosen, rejected: row indices (P,) each, P <= B / k; ties: the first such row."""
    groups = grouped(scores, k)  # (G, k)
    first = torch.arange(len(groups), device=scores.device) * k  # (G,) each group's first row
    keep = groups.max(1).values - groups.min(1).values > margin
    return (first + groups.argmax(1))[keep], (first + groups.argmin(1))[keep]


def preference_loss(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    *,
    beta: float,
    step_groups: int,
) -> torch.Tensor:
    """[D30] DPO's loss (Rafailov et al. 2023) on the policy's own pairs, best against worst sample of a
    prompt (online, as in Guo et al. 2024's online AI feedback):

    1. each row's sequence log-ratio to the reference, rho_i = sum_t mask (log p - log p_ref), (B,);
    2. each pair's margin beta * (rho_chosen - rho_rejected);
    3. -log sigmoid(margin) summed over the pairs and divided by ``step_groups``, the groups of the
       optimizer step (so micro-batch terms add up to the step's mean; a group without a pair adds 0).
    Unlike the clipped surrogate its push on a rejected sample is not bounded per update: it falls only as
    the margin grows. logprobs, ref_logprobs, mask (B, T); chosen, rejected (P,) row indices -> 0-d."""
    rho = ppo.masked_sum(logprobs - ref_logprobs, mask, dim=1)  # (B,)
    margins = beta * (rho[chosen] - rho[rejected])  # (P,)
    return F.softplus(-margins).sum() / step_groups


def rloo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    step_rows: int,
    *,
    step_tokens: torch.Tensor | float,
    cliprange: float = 0.2,
) -> PolicyLoss:
    """[D22] RLOO's clipped surrogate with one ratio per sequence, r_i = exp(sum_t log p - log p_old)
    over its real tokens: max(-A_i r_i, -A_i clip(r_i, 1 - eps, 1 + eps)) summed over the micro-batch's
    sequences and divided by the step's ``step_rows`` (trl RLOOTrainer: the mean over sequences).
    logprobs, old_logprobs, mask (B, T); advantages (B,)."""
    real = mask.bool()
    log_ratio = torch.where(real, logprobs - old_logprobs, torch.zeros_like(logprobs))  # (B, T)
    ratio = log_ratio.sum(1).exp()  # (B,) the sequence's probability ratio
    losses = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - cliprange, 1.0 + cliprange)
    policy_loss = torch.maximum(losses, clipped).sum() / step_rows
    token_diagnostics = _token_diagnostics(log_ratio.detach(), mask, step_tokens)
    return PolicyLoss(
        loss=policy_loss,
        policy_loss=policy_loss,
        kl_loss=torch.zeros_like(policy_loss).detach(),
        clipfrac=((clipped > losses).float().sum() / step_rows).detach(),
        **token_diagnostics,
    )


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    weights: torch.Tensor,
    step_tokens: torch.Tensor | float,
    cliprange: float = 0.2,
    kl_coef: float = 0.0,
) -> PolicyLoss:
    """[D23] GRPO's loss per token, the sequence's advantage on each of its tokens:
    max(-A_i r_t, -A_i clip(r_t, 1 - eps, 1 + eps)) + kl_coef * k3_t(policy, reference), r_t =
    exp(log p_t - log p_old_t), the KL at the policy being trained (Shao et al. 2024, eqs. 3-4; trl
    GRPOTrainer), each token weighted by ``weights`` (B, T) [D24]. ``ref_logprobs`` None (no reference
    pass, with a KL coefficient of 0): no KL term. logprobs, old_logprobs, ref_logprobs, mask (B, T);
    advantages (B,)."""
    real = mask.bool()
    log_ratio = logprobs - old_logprobs  # (B, T)
    ratio = log_ratio.exp()
    a = advantages[:, None]  # (B, 1): the sequence's advantage on each of its tokens
    losses, clipped = -a * ratio, -a * ratio.clamp(1.0 - cliprange, 1.0 + cliprange)
    policy_loss = ppo.masked_sum(torch.maximum(losses, clipped) * weights, mask)
    kl_loss = torch.zeros_like(policy_loss)
    if ref_logprobs is not None:
        kl_loss = ppo.masked_sum(ppo.kl_estimate(logprobs, ref_logprobs, "k3") * weights, mask)
    log_ratio = torch.where(real, log_ratio, torch.zeros_like(log_ratio)).detach()
    return PolicyLoss(
        loss=policy_loss + kl_coef * kl_loss,
        policy_loss=policy_loss,
        kl_loss=kl_loss,
        clipfrac=(ppo.masked_sum((clipped > losses).float(), mask) / step_tokens).detach(),
        **_token_diagnostics(log_ratio, mask, step_tokens),
    )


def _token_diagnostics(
    log_ratio: torch.Tensor, mask: torch.Tensor, step_tokens: torch.Tensor | float
) -> dict[str, torch.Tensor]:
    """PPO's approximate KL and policy KL [D7], per token of the step, from log r (B, T), 0 on padding."""
    return {
        "approxkl": ppo.masked_sum(0.5 * log_ratio**2, mask) / step_tokens,
        "policykl": ppo.masked_sum(-log_ratio, mask) / step_tokens,
    }

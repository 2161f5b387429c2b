"""The PPO math for language models as pure tensor functions. Knows nothing of models, configs or I/O.

Every function takes tensors and floats and returns tensors, floats or a frozen dataclass; none calls
``.item()``, logs, seeds or moves devices. Each cites the numbered detail it implements; the checklist
with sources is ``docs/ppo-details.md``.

Shapes: B responses, T response tokens (right-padded), V vocabulary. ``mask`` (B, T) is 1 on real
response tokens and 0 on padding; real tokens always form a prefix of each row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

KLEstimator = Literal["k1", "k3"]


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``x`` over real tokens (all of them, or along ``dim``: (B, T) -> (B,) with ``dim=1``);
    padding (whatever it holds, NaN included) contributes nothing."""
    kept = torch.where(mask.bool(), x, torch.zeros_like(x))
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over real tokens only."""
    return masked_sum(x, mask) / mask.sum().clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over real tokens only (Bessel-corrected by default, as trl)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    n = mask.sum()
    return var * n / (n - 1).clamp(min=1) if unbiased else var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """[D6] Whiten ``x`` (B, T) with the mean and std of its real tokens; padding comes back as 0."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))


def logprobs_from_logits(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """[D1] Log-probability of each sampled token: logits (B, T, V), labels (B, T) -> (B, T).

    The logits are divided by the sampling temperature first, so that the log-probs are those of the
    distribution the tokens were actually drawn from (policy and reference alike).
    """
    logits = logits.float() if temperature == 1.0 else logits.float() / temperature  # no (B, T, V) copy at 1
    # log_softmax then gather: one fused pass each way, half the time of gather - logsumexp with autograd
    return logits.log_softmax(-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # (B, T)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """[D26] Entropy in nats of the sampling distribution at each position: logits (B, T, V) -> (B, T).

    The loss subtracts ``entropy_coef`` x its token mean over the optimizer step (D14), as CleanRL's
    ``ent_coef``: a bonus for keeping the distribution wide, against a collapse onto a few safe phrases.
    """
    logp = (logits.float() / temperature).log_softmax(-1)
    return -(logp.exp() * logp.clamp_min(torch.finfo(logp.dtype).min)).sum(-1)  # a -inf logit adds 0


def entropy_bonus(
    entropy: torch.Tensor, mask: torch.Tensor, n_tokens: torch.Tensor, floor: torch.Tensor | None = None
) -> torch.Tensor:
    """[D26][D28] What the loss subtracts ``entropy_coef`` times: entropy (B, T) -> a scalar, a token sum over
    ``mask`` divided by the optimizer step's ``n_tokens`` (D14).

    1. Without ``floor``: the entropy itself (CleanRL's ``ent_coef`` bonus), which pushes the policy wider
       everywhere, also past the reference, at a cost in perplexity.
    2. With ``floor`` (B, T), the reference's entropy at the same positions: minus the shortfall
       relu(floor - entropy), which lifts the entropy only where it fell below the reference's and is 0
       (with no gradient) where it did not: a floor against collapse, not a push.
    """
    per_token = entropy if floor is None else -torch.relu(floor - entropy)
    return masked_sum(per_token, mask) / n_tokens


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: KLEstimator) -> torch.Tensor:
    """[D2] Per-token estimate of KL(policy || reference) at the sampled tokens: (B, T) -> (B, T).

    k1 = log p - log q (unbiased, can be negative); k3 = (q/p - 1) - log(q/p) (unbiased, >= 0)
    (Schulman 2020, "Approximating KL Divergence").
    """
    if estimator == "k1":
        return logprobs - ref_logprobs
    if estimator == "k3":
        log_ratio = ref_logprobs - logprobs
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"Unknown KL estimator '{estimator}'; use 'k1' or 'k3'.")


@dataclass(frozen=True)
class TokenRewards:
    """[D3] Per-token rewards and the KL they penalise, both (B, T) and 0 on padding."""

    rewards: torch.Tensor
    kl: torch.Tensor


def compute_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    *,
    estimator: KLEstimator = "k1",
) -> TokenRewards:
    """[D3] ``-kl_coef * kl_t`` on every real token, plus the scalar score (B,) on the last real token.

    (Ziegler et al. 2019, eq. 2; Stiennon et al. 2020.) Responses must hold at least one real token.
    """
    real = mask.bool()
    kl = torch.where(real, kl_estimate(logprobs, ref_logprobs, estimator), torch.zeros_like(logprobs))
    rewards = -kl_coef * kl
    last = mask.long().sum(dim=1) - 1  # (B,) index of the last real token
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards = rewards.index_put((rows, last), scores.to(rewards.dtype), accumulate=True)
    return TokenRewards(rewards=rewards, kl=kl)


@dataclass(frozen=True)
class GAEOutput:
    """[D4] Advantages and returns (value targets), both (B, T) and 0 on padding."""

    advantages: torch.Tensor
    returns: torch.Tensor


def compute_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> GAEOutput:
    """[D4] Generalised advantage estimation (Schulman et al. 2016) over response tokens: (B, T) each.

    Values and rewards on padding are zeroed first, so the value after the last real token is 0
    (the episode ends there) and garbage in padded positions cannot leak into real ones.
    """
    real = mask.bool()
    values = torch.where(real, values, torch.zeros_like(values))
    rewards = torch.where(real, rewards, torch.zeros_like(rewards))
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)  # (B, T)
    deltas = rewards + gamma * next_values - values
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        running = deltas[:, t] + gamma * lam * running
        advantages[:, t] = running
    advantages = torch.where(real, advantages, torch.zeros_like(advantages))
    return GAEOutput(advantages=advantages, returns=advantages + values)


@dataclass(frozen=True)
class PPOLoss:
    """[D7][D8] The loss to backpropagate and its parts, each a 0-d tensor.

    Every term is a sum over the mini-batch's real tokens divided by ``n_tokens``: with ``n_tokens``
    the token count of the whole optimizer step, micro-batch terms add up to that step's token mean.
    """

    loss: torch.Tensor
    policy_loss: torch.Tensor
    value_loss: torch.Tensor
    clipfrac: torch.Tensor
    value_clipfrac: torch.Tensor
    approxkl: torch.Tensor
    policykl: torch.Tensor
    entropy: torch.Tensor = field(default_factory=lambda: torch.zeros(()))  # [D26], with entropy_coef > 0
    preference: torch.Tensor = field(default_factory=lambda: torch.zeros(()))  # [D30], preference_coef > 0


def ppo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    values: torch.Tensor,
    old_values: torch.Tensor,
    *,
    returns: torch.Tensor,
    mask: torch.Tensor,
    n_tokens: torch.Tensor | float,
    cliprange: float = 0.2,
    cliprange_value: float = 0.2,
    vf_coef: float = 0.1,
) -> PPOLoss:
    """[D7] Clipped surrogate policy loss + [D8] clipped value loss; all inputs (B, T).

    policy: max(-A r, -A clip(r, 1-eps, 1+eps)), r = exp(logp - old_logp)  (Schulman et al. 2017)
    value:  0.5 max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2)        (trl / openai lm-human-prefs)
    """

    def token_mean(x: torch.Tensor) -> torch.Tensor:
        return masked_sum(x, mask) / n_tokens

    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    pg_losses = -advantages * ratio
    pg_losses_clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    policy_loss = token_mean(torch.maximum(pg_losses, pg_losses_clipped))

    values_clipped = torch.clamp(values, old_values - cliprange_value, old_values + cliprange_value)
    vf_losses = (values - returns) ** 2
    vf_losses_clipped = (values_clipped - returns) ** 2
    value_loss = 0.5 * token_mean(torch.maximum(vf_losses, vf_losses_clipped))

    return PPOLoss(
        loss=policy_loss + vf_coef * value_loss,
        policy_loss=policy_loss,
        value_loss=value_loss,
        clipfrac=token_mean((pg_losses_clipped > pg_losses).float()).detach(),
        value_clipfrac=token_mean((vf_losses_clipped > vf_losses).float()).detach(),
        approxkl=token_mean(0.5 * log_ratio.detach() ** 2),
        policykl=token_mean(-log_ratio.detach()),
    )


def adaptive_kl_coef(kl_coef: float, kl: float, n_steps: int, target: float, horizon: int) -> float:
    """[D9] Adaptive KL controller (Ziegler et al. 2019, sec. 2.2): move ``kl_coef`` towards ``target``.

    The proportional error is clipped to [-0.2, 0.2]; ``kl`` is the batch mean of the summed per-token KL.
    """
    error = min(max(kl / target - 1.0, -0.2), 0.2)
    return kl_coef * (1.0 + error * n_steps / horizon)


@dataclass(frozen=True)
class RunningMoments:
    """[D10] Running mean and (population) variance of the scores seen so far."""

    mean: float = 0.0
    var: float = 1.0
    count: float = 0.0

    @property
    def std(self) -> float:
        return float(self.var) ** 0.5


def update_moments(moments: RunningMoments, scores: torch.Tensor) -> RunningMoments:
    """[D10] Merge a batch of scores (B,) into the running moments (Chan et al. parallel update)."""
    n = scores.numel()
    batch_mean = float(scores.double().mean())
    batch_var = float(scores.double().var(unbiased=False)) if n > 1 else 0.0
    if moments.count == 0:
        return RunningMoments(batch_mean, batch_var, float(n))
    total = moments.count + n
    delta = batch_mean - moments.mean
    m2 = moments.var * moments.count + batch_var * n + delta**2 * moments.count * n / total
    return RunningMoments(moments.mean + delta * n / total, m2 / total, total)


def transform_scores(
    scores: torch.Tensor, scale: float = 1.0, moments: RunningMoments | None = None, clip: float | None = None
) -> torch.Tensor:
    """[D10] Raw scores (B,) -> normalised with running moments of raw scores (if given), scaled, clipped."""
    out = scores.float()
    if moments is not None:
        out = (out - moments.mean) / (moments.std + 1e-8)
    out = out * scale
    if clip is not None:
        out = out.clamp(-clip, clip)
    return out


def tail_weighted(scores: torch.Tensor, share: float, weight: float) -> torch.Tensor:
    """[D29] Scores (B,) -> the same with the batch's worst ``share`` weighing ``1 + weight`` times.

    1. q is the ``share`` quantile of the batch's scores (linear interpolation, ``torch.quantile``).
    2. Each score below q falls by ``weight`` times its distance to q: s + weight * min(s - q, 0).
    3. Scores at or above q are unchanged, so the ordering is kept and the function is continuous.
    A conditional-value-at-risk flavour of the objective: the gradient of the worst samples of the batch
    (the rare toxic ones) grows, the rest of the batch keeps its signal.
    """
    q = torch.quantile(scores.float(), share)
    return scores + weight * (scores - q).clamp(max=0)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[D11] 1 - Var(returns - values) / Var(returns) over real tokens: 1 is a perfect critic."""
    var_returns = masked_var(returns, mask)
    return 1.0 - masked_var(returns - values, mask) / var_returns.clamp(min=1e-8)

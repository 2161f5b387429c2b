"""PPO training: the classic ``PPOTrainer`` API (generate / step / log_stats) and a config-driven
``train()`` loop with metrics and atomic, resumable checkpoints. The math lives in ppo.py.

Shapes: B responses, P prompt tokens, T response tokens.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detoxrl import ppo, runtime
from detoxrl.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from detoxrl.config import GenerationConfig, PPOConfig, RunConfig, save_config
from detoxrl.errors import ConfigError, TrainingError
from detoxrl.policy import ActorCritic
from detoxrl.rollout import (
    LengthSampler,
    Rollout,
    SampledRollout,
    batch_indices,
    can_sample_fast,
    collect_rollout,
    generate_responses,
    generation_kwargs,
    make_batch,
    sample_rollout,
    trim_batch,
)

__all__ = ["LengthSampler", "PPOTrainer", "TrainResult", "train"]

Reward = Callable[[list[str], list[str]], torch.Tensor]


@dataclass(frozen=True)
class Experience:
    """A rollout with its per-token rewards, KL, advantages (whitened) and returns, all (B, T)."""

    rollout: Rollout
    rewards: torch.Tensor
    kl: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


class PPOTrainer:
    """PPO for a ``ActorCritic`` policy, with the classic trl calls: ``generate``, ``step``, ``log_stats``."""

    def __init__(
        self,
        config: PPOConfig,
        actor_critic: ActorCritic,
        tokenizer: Any,
        generation: GenerationConfig | None = None,
        total_steps: int | None = None,
        metrics_path: str | Path | None = None,
        tensorboard_dir: str | Path | None = None,
    ) -> None:
        self.config, self.actor_critic, self.tokenizer = config, actor_critic, tokenizer
        self.generation = generation or GenerationConfig()
        if self.generation.temperature <= 0:
            raise ConfigError(
                f"generation.temperature is {self.generation.temperature}: PPO samples its rollouts and "
                "needs their log-probs, so it must be > 0 (1.0 samples from the model as it is)."
            )
        self.optimizer = torch.optim.Adam(actor_critic.trainable_parameters(), lr=config.learning_rate)
        if config.lr_scheduler_type == "linear" and not total_steps:
            raise ValueError("lr_scheduler_type 'linear' needs total_steps (the number of PPO steps).")
        decay = (lambda s: max(0.0, 1.0 - s / total_steps)) if config.lr_scheduler_type == "linear" else None
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, decay or (lambda s: 1.0))
        self.kl_coef = config.init_kl_coef
        self.score_moments = ppo.RunningMoments()
        self.step_count = 0
        self.metrics_path = Path(metrics_path) if metrics_path else None
        self.tensorboard_dir = tensorboard_dir
        self._tensorboard: Any = None  # a SummaryWriter, opened at the first log_stats
        self._sampled: SampledRollout | None = None  # the last generate()'s log-probs and values [D17]

    # ---- the classic API ------------------------------------------------------------------------

    def generate(
        self,
        query_tensors: Sequence[torch.Tensor],
        length_sampler: Callable[[], int] | None = None,
        return_prompt: bool = False,
        batch_size: int | None = None,
        **generation_kwargs: Any,
    ) -> list[torch.Tensor]:
        """Sample responses (B x (T_i,)) in batched calls of ``batch_size`` (default: all at once);
        lengths from ``length_sampler`` per prompt, else ``max_new_tokens`` (default: the GenerationConfig's).

        The sampling temperature must be the one the log-probs use (``GenerationConfig.temperature``).
        """
        temperature = generation_kwargs.setdefault("temperature", self.generation.temperature)
        if temperature != self.generation.temperature:
            raise ValueError(
                f"temperature={temperature} differs from generation.temperature="
                f"{self.generation.temperature}, which step() uses for log-probs; set it there instead."
            )
        max_new = generation_kwargs.pop("max_new_tokens", self.generation.max_new_tokens)
        lengths = [length_sampler() if length_sampler else max_new for _ in query_tensors]
        ac, queries, size = self.actor_critic, list(query_tensors), batch_size or len(query_tensors)
        self._sampled = None
        if can_sample_fast(ac, generation_kwargs) and size >= len(queries):
            self._sampled = sample_rollout(ac, self.tokenizer, queries, lengths, generation_kwargs)
            responses = self._sampled.responses
        else:
            responses = []
            for i in range(0, len(queries), size):
                responses += generate_responses(
                    ac.model, self.tokenizer, queries[i : i + size], lengths[i : i + size],
                    ac.is_encoder_decoder, generation_kwargs,
                )  # fmt: skip
        if return_prompt:
            return [torch.cat([q.cpu(), r]) for q, r in zip(queries, responses, strict=True)]
        return responses

    def step(
        self,
        queries: Sequence[torch.Tensor],
        responses: Sequence[torch.Tensor],
        scores: Sequence[torch.Tensor] | torch.Tensor,
    ) -> dict[str, float]:
        """One PPO step on a batch of (query, response, score); returns the step's statistics."""
        t0, ac = time.perf_counter(), self.actor_critic
        raw = _as_vector(scores)
        pad_id = int(self.tokenizer.pad_token_id)
        batch = make_batch(list(queries), list(responses), pad_id, ac.is_encoder_decoder)
        if raw.shape != (len(queries),) or not torch.isfinite(raw).all():
            raise TrainingError(f"Scores must be {len(queries)} finite numbers, got {raw.tolist()}.")
        # 1. Transform the scores (scale / running normalisation / clip) [D10].
        if self.config.score_norm:
            self.score_moments = ppo.update_moments(self.score_moments, raw)
        moments = self.score_moments if self.config.score_norm else None
        scores_t = ppo.transform_scores(raw, self.config.score_scale, moments, self.config.score_clip)
        # 2. Old log-probs, values (from sampling when these are the pairs generate() sampled [D17]) and
        #    reference log-probs, once, without gradients [D1].
        same = self._sampled is not None and self._sampled.matches(list(queries), list(responses))
        sampled = self._sampled if same else None
        rollout = collect_rollout(self.actor_critic, batch, scores_t, self.generation.temperature, sampled)
        t1 = time.perf_counter()
        # 3. Per-token rewards with the KL penalty [D2][D3], GAE [D4], whitened advantages [D6].
        exp = self._experience(rollout)
        t2 = time.perf_counter()
        # 4. ppo_epochs passes over shuffled mini-batches [D7][D8][D14].
        losses = self._update(exp)
        t3 = time.perf_counter()
        # 5. Statistics, then the KL controller [D9] and the learning-rate schedule.
        stats = self._stats(exp, losses, raw)
        stats.update({"time/forward": t1 - t0, "time/advantages": t2 - t1, "time/update": t3 - t2})
        if self.config.adaptive_kl:
            c = self.config
            self.kl_coef = ppo.adaptive_kl_coef(
                self.kl_coef, stats["objective/kl"], len(raw), c.adaptive_kl_target, c.kl_horizon
            )
        self.lr_scheduler.step()
        self.step_count += 1
        stats["time/step"] = time.perf_counter() - t0
        return stats

    def log_stats(
        self, stats: dict[str, float], batch: dict[str, list[str]] | None = None, rewards: Any = None
    ) -> dict[str, Any]:
        """Append one JSON line (step + stats, and rewards' mean/std if given) to ``metrics_path``."""
        record: dict[str, Any] = {"step": self.step_count, **stats}
        if rewards is not None:
            r = _as_vector(rewards)
            record["env/reward_mean"] = float(r.mean())
            record["env/reward_std"] = float(r.std()) if r.numel() > 1 else 0.0
        if batch is not None and "query" in batch and "response" in batch:
            pairs = zip(batch["query"][:4], batch["response"][:4], strict=True)
            record["samples"] = [{"query": q, "response": r} for q, r in pairs]
        if self.metrics_path is not None:
            with self.metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        if self.tensorboard_dir is not None:
            self._log_tensorboard(record)
        return record

    def _log_tensorboard(self, record: dict[str, Any]) -> None:
        """The same scalars as metrics.jsonl, as TensorBoard events (``tensorboard --logdir RUN_DIR``)."""
        if self._tensorboard is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(str(self.tensorboard_dir))
        for key, value in record.items():
            if isinstance(value, int | float) and key != "step":
                self._tensorboard.add_scalar(key, value, self.step_count)
        self._tensorboard.flush()

    # ---- the pieces of a step -------------------------------------------------------------------

    def _experience(self, rollout: Rollout) -> Experience:
        c, mask = self.config, rollout.batch.response_mask.float()
        tr = ppo.compute_rewards(
            rollout.scores, rollout.logprobs, rollout.ref_logprobs, mask, self.kl_coef, c.kl_estimator
        )
        rewards = ppo.masked_whiten(tr.rewards, mask, shift_mean=False) if c.whiten_rewards else tr.rewards
        gae = ppo.compute_gae(rewards, rollout.values, mask, c.gamma, c.lam)
        return Experience(rollout, tr.rewards, tr.kl, ppo.masked_whiten(gae.advantages, mask), gae.returns)

    def _update(self, exp: Experience) -> list[ppo.PPOLoss]:
        """[D14] Epochs over shuffled mini-batches; one optimizer step per ``mini_batch_size *
        gradient_accumulation_steps`` rows, its loss the token mean over those rows."""
        c, ac, rollout = self.config, self.actor_critic, exp.rollout
        n, step_rows = len(rollout.scores), c.mini_batch_size * c.gradient_accumulation_steps
        losses: list[ppo.PPOLoss] = []
        for _ in range(c.ppo_epochs):
            order = torch.randperm(n)
            for start in range(0, n, step_rows):
                rows = order[start : start + step_rows]
                n_tokens = rollout.batch.response_mask[rows].sum().float()
                self.optimizer.zero_grad(set_to_none=True)
                parts = [
                    self._micro_step(exp, rows[i : i + c.mini_batch_size], n_tokens)
                    for i in range(0, len(rows), c.mini_batch_size)
                ]
                if c.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(ac.trainable_parameters(), c.max_grad_norm)
                self.optimizer.step()
                losses.append(_add_losses(parts))
                if c.target_kl is not None and float(losses[-1].approxkl) > c.target_kl:
                    return losses  # [D15] early stop: the policy moved too far from the rollout policy
        return losses

    def _micro_step(self, exp: Experience, rows: torch.Tensor, n_tokens: torch.Tensor) -> ppo.PPOLoss:
        """Forward + backward on some rows; the loss is normalised by the optimizer step's token count."""
        c, rollout = self.config, exp.rollout
        batch = trim_batch(rollout.batch.select(rows), self.actor_critic.is_encoder_decoder)
        t = batch.response_ids.shape[1]
        out = self.actor_critic(batch, self.generation.temperature)

        def pick(x: torch.Tensor) -> torch.Tensor:
            return x[rows, :t]  # (b, t)

        loss = ppo.ppo_loss(
            out.logprobs, pick(rollout.logprobs), pick(exp.advantages), out.values, pick(rollout.values),
            pick(exp.returns), batch.response_mask, n_tokens, c.cliprange, c.cliprange_value, c.vf_coef,
        )  # fmt: skip
        if not torch.isfinite(loss.loss):
            raise TrainingError(
                f"Non-finite PPO loss at step {self.step_count} (policy {float(loss.policy_loss.detach())}, "
                f"value {float(loss.value_loss.detach())}): lower ppo.learning_rate, "
                "or set ppo.score_clip / ppo.score_norm."
            )
        loss.loss.backward()
        return loss

    def _stats(
        self, exp: Experience, losses: list[ppo.PPOLoss], raw_scores: torch.Tensor
    ) -> dict[str, float]:
        r, mask = exp.rollout, exp.rollout.batch.response_mask.float()

        def mean(x: torch.Tensor) -> float:
            return float(ppo.masked_mean(x, mask))

        def loss_mean(name: str) -> float:
            return float(torch.stack([getattr(part, name) for part in losses]).mean())

        lengths = mask.sum(1)
        return {
            "objective/kl": float(exp.kl.sum(1).mean()),
            "objective/kl_coef": self.kl_coef,
            "objective/entropy": float((-r.logprobs * mask).sum(1).mean()),
            "ppo/mean_non_score_reward": float((exp.rewards * mask).sum(1).mean() - r.scores.mean()),
            "ppo/mean_scores": float(r.scores.mean()),
            "ppo/returns/mean": mean(exp.returns),
            "ppo/returns/var": float(ppo.masked_var(exp.returns, mask)),
            "ppo/policy/advantages_mean": mean(exp.advantages),
            "ppo/policy/clipfrac": loss_mean("clipfrac"),
            "ppo/policy/approxkl": loss_mean("approxkl"),
            "ppo/policy/policykl": loss_mean("policykl"),
            "ppo/loss/policy": loss_mean("policy_loss"),
            "ppo/loss/value": loss_mean("value_loss"),
            "ppo/loss/total": loss_mean("loss"),
            "ppo/val/vpred": mean(r.values),
            "ppo/val/clipfrac": loss_mean("value_clipfrac"),
            "ppo/val/explained_variance": float(ppo.explained_variance(r.values, exp.returns, mask)),
            "ppo/learning_rate": float(self.optimizer.param_groups[0]["lr"]),
            "ppo/updates": float(len(losses)),
            "env/reward_mean": float(raw_scores.mean()),
            "env/reward_std": float(raw_scores.std()) if len(raw_scores) > 1 else 0.0,
            "tokens/responses_len_mean": float(lengths.mean()),
            "tokens/queries_len_mean": float(r.batch.query_mask.sum(1).float().mean()),
        }

    # ---- state for checkpoints ------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "kl_coef": self.kl_coef,
            "score_moments": vars(self.score_moments),
            "step_count": self.step_count,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.kl_coef = float(state["kl_coef"])
        self.score_moments = ppo.RunningMoments(**state["score_moments"])
        self.step_count = int(state["step_count"])


def _as_vector(x: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """Scores as the lab passed them (a list of 0-d tensors) or one tensor -> (B,) float32 on the CPU."""
    return torch.as_tensor(torch.stack(list(x)) if isinstance(x, list | tuple) else x).float().flatten().cpu()


def _add_losses(parts: list[ppo.PPOLoss]) -> ppo.PPOLoss:
    """Micro-batch terms are already divided by the step's token count: their sums are its means."""
    names = ppo.PPOLoss.__dataclass_fields__
    return ppo.PPOLoss(**{k: torch.stack([getattr(p, k).detach() for p in parts]).sum() for k in names})


# ---- checkpoints --------------------------------------------------------------------------------

# ---- the config-driven loop ---------------------------------------------------------------------


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    final_dir: Path  # PEFT adapter (or full model) + value_head.safetensors
    metrics: list[dict[str, Any]]  # the records of the steps this call ran


def _train_step(
    trainer: PPOTrainer, config: RunConfig, prompts: list[str], queries: list[torch.Tensor], reward: Reward
) -> dict[str, Any]:
    """Rollout -> reward -> PPO step -> one metrics record."""
    idx = batch_indices(len(prompts), config.ppo.batch_size, trainer.step_count, config.seed)
    t0 = time.perf_counter()
    kwargs, sampler = generation_kwargs(config.generation)
    responses = trainer.generate([queries[i] for i in idx], length_sampler=sampler, **kwargs)
    texts = [t.strip() for t in trainer.tokenizer.batch_decode(responses, skip_special_tokens=True)]
    t1 = time.perf_counter()
    scores = torch.as_tensor(reward([prompts[i] for i in idx], texts)).float().cpu()
    t2 = time.perf_counter()
    stats = trainer.step([queries[i] for i in idx], responses, scores)
    stats.update({"time/generation": t1 - t0, "time/reward": t2 - t1, "time/total": time.perf_counter() - t0})
    return trainer.log_stats(stats, batch={"query": [prompts[i] for i in idx], "response": texts})


def _prepare_run_dir(run_dir: Path, resume: bool) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume and (latest_checkpoint(run_dir) or (run_dir / "metrics.jsonl").exists()):
        raise TrainingError(
            f"'{run_dir}' already holds a run; resume it (--resume) or choose another output_dir."
        )


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Keep the metrics of steps up to the checkpoint; later ones will be recomputed identically."""
    if path.exists():
        keep = [
            ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= last_step
        ]
        path.write_text("".join(ln + "\n" for ln in keep))


def train(
    config: RunConfig, prompts: list[str], reward: Reward, out_dir: str | Path | None = None,
    resume: bool = False, progress: bool = True,
) -> TrainResult:  # fmt: skip
    """Detoxify ``config.policy`` with PPO on ``prompts`` against ``reward(prompts, responses) -> (B,)``."""
    from tqdm.auto import tqdm

    from detoxrl.generate import format_prompts, tokenize_prompts
    from detoxrl.models import load_policy, resolve_device
    from detoxrl.policy import build_actor_critic

    if not prompts:
        raise ValueError("train() needs at least one prompt.")
    # 1. Seed once, set threads, prepare the run directory with the resolved config.
    run_dir = Path(out_dir or config.output_dir)
    _prepare_run_dir(run_dir, resume)
    torch.manual_seed(config.seed), random.seed(config.seed), np.random.seed(config.seed)
    runtime.configure(config.threads)
    save_config(config, run_dir / "config.yaml")
    # 2. The policy with its value head and reference, and the trainer.
    policy = load_policy(config.policy, resolve_device(config.device))
    actor_critic = build_actor_critic(policy, config.policy, config.ppo.value_head_init_std)
    print(actor_critic.describe())
    trainer = PPOTrainer(config.ppo, actor_critic, policy.tokenizer, config.generation, config.steps,
                         run_dir / "metrics.jsonl", run_dir / "tensorboard")  # fmt: skip
    queries = tokenize_prompts(
        policy.tokenizer, format_prompts(policy.tokenizer, prompts, config.policy.chat_template)
    )
    # 3. Resume: weights, optimizer, scheduler, KL controller, RNG states and step from the last checkpoint.
    checkpoint = latest_checkpoint(run_dir) if resume else None
    if checkpoint is not None:
        load_checkpoint(trainer, checkpoint)
    _truncate_metrics(run_dir / "metrics.jsonl", trainer.step_count)
    # 4. The loop: rollout -> reward -> PPO step -> metrics -> periodic checkpoint.
    records = []
    bar = tqdm(range(trainer.step_count, config.steps), desc="ppo", disable=not progress)
    for _ in bar:
        records.append(_train_step(trainer, config, prompts, queries, reward))
        bar.set_postfix(
            reward=f"{records[-1]['env/reward_mean']:.3f}", kl=f"{records[-1]['objective/kl']:.3f}"
        )
        if trainer.step_count % config.save_every == 0 or trainer.step_count == config.steps:
            save_checkpoint(trainer, run_dir)
    # 5. The final adapter (+ value head): plain ``PeftModel.from_pretrained(base, final_dir)`` loads it.
    actor_critic.save(run_dir / "final")
    return TrainResult(run_dir, run_dir / "final", records)

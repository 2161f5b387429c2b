"""The trainer: one RL step on a batch (the experience, epochs of mini-batch updates, statistics, the KL
controller) by PPO, RLOO or GRPO (``PPOConfig.algorithm``), updates with non-finite losses or gradients
skipped. The math lives in core/, the config-driven loop in recipes/train.py, the classic trl calls
(generate / step / log_stats) in classic.py; how models run is the engine's, reached only through the
actor-critic; processes are parallel/'s.

Data parallel (a ``Topology`` of N processes): each brings its rows (whole groups for RLOO and GRPO); the
rows' scores and passes are gathered into the global batch's experience (the same on every process), and
each optimizer step's rows are shared out, every loss divided by the step's global token or row count:
DDP averages one-process gradients.

Shapes: B responses, P prompt tokens, T response tokens.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import torch

from detoxrl.config import PPOConfig, SamplingConfig, check_rollout_sampling
from detoxrl.core import critic_free, ppo
from detoxrl.core.batch import ResponseBatch, make_batch, trim_batch
from detoxrl.errors import ConfigError, TrainingError
from detoxrl.models.actor_critic import ActorCritic, PolicyOutput
from detoxrl.models.generation import stop_ids
from detoxrl.models.sampling import Sampled
from detoxrl.parallel.distributed import SINGLE, Topology
from detoxrl.training.rollout import Experience, GroupExperience, make_experience, old_policy

Loss = ppo.PPOLoss | critic_free.PolicyLoss
LOSS_KEYS = {  # a loss's parts -> their metric keys (trl's names); the value parts are PPO's only
    "loss": "ppo/loss/total",
    "policy_loss": "ppo/loss/policy",
    "value_loss": "ppo/loss/value",
    "kl_loss": "ppo/loss/kl",
    "clipfrac": "ppo/policy/clipfrac",
    "value_clipfrac": "ppo/val/clipfrac",
    "approxkl": "ppo/policy/approxkl",
    "policykl": "ppo/policy/policykl",
    "entropy": "ppo/policy/entropy",
    "preference": "ppo/loss/preference",
}
OPTIONAL_PARTS = {"entropy": "entropy_coef", "preference": "preference_coef"}  # logged where set


class Trainer:
    """PPO, RLOO or GRPO (``config.algorithm``) for an ``ActorCritic`` (with a value head for PPO only:
    ``build_actor_critic(..., critic=False)`` for the others): ``rollout`` samples, ``learn`` takes one
    step on what it sampled and its scores. The classic trl calls (generate / step / log_stats) are
    ``classic.PPOTrainer``'s."""

    def __init__(
        self,
        config: PPOConfig,
        actor_critic: ActorCritic,
        tokenizer: Any,
        generation: SamplingConfig | None = None,
        total_steps: int | None = None,
        *,
        topology: Topology = SINGLE,
    ) -> None:
        self.config, self.actor_critic, self.tokenizer = config, actor_critic, tokenizer
        self.generation = generation or SamplingConfig()
        check_rollout_sampling(self.generation)
        if (actor_critic.value_head is not None) != (config.algorithm == "ppo"):
            raise ValueError(
                f"ppo.algorithm {config.algorithm!r} needs an actor-critic "
                f"{'with' if config.algorithm == 'ppo' else 'without'} a value head: build it with "
                f"build_actor_critic(..., critic={config.algorithm == 'ppo'})."
            )
        self.topology = topology
        topology.check(config.mini_batch_size, config.gradient_accumulation_steps)
        if config.batch_size // config.group_size < topology.world_size:
            groups, k, n = config.batch_size // config.group_size, config.group_size, topology.world_size
            raise ConfigError(
                f"Config key 'ppo.batch_size' ({config.batch_size}) makes {groups} groups of "
                f"ppo.num_generations={k} samples, fewer than the {n} processes, each of which samples whole "
                "groups: raise ppo.batch_size or use fewer processes."
            )
        optimizer = torch.optim.Adam(actor_critic.trainable_parameters(), lr=config.learning_rate)
        # the module that training passes go through (DDP / FSDP / DeepSpeed; one process: the actor-critic)
        self.train_module, self.optimizer = topology.prepare(actor_critic, optimizer)
        if config.lr_scheduler_type == "linear" and not total_steps:
            raise ValueError("lr_scheduler_type 'linear' needs total_steps (the number of PPO steps).")
        decay = (lambda s: max(0.0, 1.0 - s / total_steps)) if config.lr_scheduler_type == "linear" else None
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, decay or (lambda s: 1.0))
        self.kl_coef = config.init_kl_coef
        self.score_moments = ppo.RunningMoments()
        self.step_count = 0
        self.nonfinite_steps = 0  # steps in a row without any update (non-finite scores, losses, gradients)
        self.pad_id = int(tokenizer.pad_token_id)
        self.stop_ids = stop_ids(actor_critic.model, tokenizer)

    def rollout(
        self, queries: list[torch.Tensor], limits: list[int], seeds: list[int] | None = None
    ) -> Sampled:
        """Sample a response to each query (row i at most ``limits[i]`` tokens, its draws from ``seeds[i]``
        when given), as ``generation`` says."""
        ac = self.actor_critic
        with self.topology.gathered(self.train_module):
            return ac.sample(queries, limits, self.generation, self.stop_ids, self.pad_id, seeds=seeds)

    def learn(self, queries: list[torch.Tensor], sampled: Sampled, scores: torch.Tensor) -> dict[str, float]:
        """One PPO step on the responses of ``sampled`` with their scores (B,)."""
        return self._step(queries, sampled.responses(), as_vector(scores), sampled)

    def _step(
        self,
        queries: list[torch.Tensor],
        responses: list[torch.Tensor],
        raw: torch.Tensor,
        sampled: Sampled | None,
    ) -> dict[str, float]:
        t0, c, temperature = time.perf_counter(), self.config, self.generation.temperature
        if raw.shape != (len(queries),):
            raise TrainingError(
                f"Scores must be {len(queries)} numbers, one per response, got {raw.tolist()}."
            )
        _check_groups(queries, c.group_size)  # this process's rows: whole groups
        raw = torch.cat(self.topology.gather([raw]))  # (B,) of the global batch: every process's rows
        if not torch.isfinite(raw).all():  # no update on this batch; the weights stay as they are
            return self._skipped(t0, {"train/nonfinite_scores": float((~torch.isfinite(raw)).sum())})
        # 1. Transform the scores (running normalisation / scale / clip) [D10]; the worst weigh more [D29].
        if c.score_norm:
            self.score_moments = ppo.update_moments(self.score_moments, raw)
        scores = ppo.transform_scores(
            raw, c.score_scale, self.score_moments if c.score_norm else None, c.score_clip
        )
        if c.tail_weight:
            scores = ppo.tail_weighted(scores, c.tail_share, c.tail_weight)
        # 2. Old log-probs and values (from the sampling pass when given [D17]) and the reference pass on this
        #    process's rows; then, for the global batch, the KL-penalised rewards, GAE and whitened
        #    advantages: once, without gradients [D1]-[D6] (rloo, grpo: no values; sequence rewards and
        #    group advantages [D19]-[D21]; no reference pass at all with a KL coefficient of 0).
        ac = self.actor_critic
        batch = make_batch(queries, responses, self.pad_id, ac.is_encoder_decoder).to(ac.device)
        with self.topology.gathered(self.train_module):  # sharded models: whole for these passes
            old = old_policy(ac, batch, temperature, sampled)
            floor = c.entropy_floor  # [D28] the reference's entropy too
            reference = c.algorithm == "ppo" or self.kl_coef > 0 or floor or c.preference_coef > 0
            ref = ac.reference_pass(batch, temperature, floor) if reference else None
        batch, old, ref = self._global_rows(responses, queries, batch, old, ref)
        ref_logprobs, ref_entropy = (None, None) if ref is None else (ref.logprobs, ref.entropy)
        exp = make_experience(
            ac, batch, old, scores, self.kl_coef, config=c, temperature=temperature, ref_logprobs=ref_logprobs
        )
        exp = dataclasses.replace(exp, ref_entropy=ref_entropy)
        t1 = time.perf_counter()
        # 3. ppo_epochs passes over shuffled mini-batches [D7][D8][D14][D15] ([D22]-[D25]); an optimizer
        #    step whose loss or gradient is not finite is skipped.
        losses, skipped = self._update(exp)
        t2 = time.perf_counter()
        if not losses:  # every update skipped
            return self._skipped(t0, {"train/skipped_updates": float(skipped)})
        # 4. Statistics, then the KL controller [D9] and the learning-rate schedule.
        stats = self._stats(exp, losses, raw)
        stats.update(
            {"time/forward": t1 - t0, "time/update": t2 - t1, "train/skipped_updates": float(skipped)}
        )
        if c.adaptive_kl:
            self.kl_coef = ppo.adaptive_kl_coef(
                self.kl_coef, stats["objective/kl"], len(raw), c.adaptive_kl_target, c.kl_horizon
            )
        self.nonfinite_steps = 0
        return self._finish_step(stats, t0)

    def _global_rows(
        self,
        responses: list[torch.Tensor],
        queries: list[torch.Tensor],
        batch: ResponseBatch,
        old: PolicyOutput,
        ref: PolicyOutput | None,
    ) -> tuple[ResponseBatch, PolicyOutput, PolicyOutput | None]:
        """Every process's rows in the global batch's order (one process: its own, untouched); the values,
        reference log-probs and reference entropy where there are some."""
        top, device = self.topology, batch.response_ids.device
        if not top.distributed:
            return batch, old, ref
        parts = (old.logprobs, old.values) + (() if ref is None else (ref.logprobs, ref.entropy))
        present = [x for x in parts if x is not None]
        gathered = iter(x.to(device) for x in top.gather_rows(present, [len(r) for r in responses]))
        logprobs = next(gathered)
        values = None if old.values is None else next(gathered)
        if ref is not None:
            ref = PolicyOutput(next(gathered), None, None if ref.entropy is None else next(gathered))
        queries, responses = top.gather([q.cpu() for q in queries]), top.gather([r.cpu() for r in responses])
        batch = make_batch(queries, responses, self.pad_id, self.actor_critic.is_encoder_decoder).to(device)
        return batch, PolicyOutput(logprobs, values), ref

    def _skipped(self, t0: float, why: dict[str, float]) -> dict[str, float]:
        """A step without any update (non-finite scores, or every update's loss or gradient): its weights and
        optimizer state untouched; ``ppo.max_nonfinite_steps`` of them in a row stop training."""
        self.nonfinite_steps += 1
        if self.nonfinite_steps >= self.config.max_nonfinite_steps:
            raise TrainingError(
                f"{self.nonfinite_steps} PPO steps in a row (up to step {self.step_count + 1}) had "
                f"non-finite scores, losses or gradients ({', '.join(why)}), so none updated the policy: "
                "lower ppo.learning_rate, set ppo.max_grad_norm or ppo.score_clip, or check the reward; "
                "the last checkpoint holds the last good weights."
            )
        return self._finish_step({"train/skipped": 1.0, "objective/kl_coef": self.kl_coef, **why}, t0)

    def _finish_step(self, stats: dict[str, float], t0: float) -> dict[str, float]:
        self.lr_scheduler.step()
        self.step_count += 1
        return {**stats, "time/step": time.perf_counter() - t0}

    # ---- the pieces of a step -------------------------------------------------------------------

    def _update(self, exp: Experience | GroupExperience) -> tuple[list[Loss], int]:
        """[D14] Epochs over shuffled mini-batches (of whole groups where they fit [D25]); one optimizer
        step per ``mini_batch_size * gradient_accumulation_steps`` rows, its loss the token mean over
        those rows; each process takes its share of every mini-batch (the same shuffle everywhere: the
        RNGs agree). An optimizer step whose loss or gradient norm is not finite is skipped (weights and
        Adam's state untouched).
        Returns the losses of the steps taken and the number skipped."""
        c, params, top = self.config, self.actor_critic.trainable_parameters(), self.topology
        n, step_rows = len(exp.scores), c.mini_batch_size * c.gradient_accumulation_steps
        whole = c.group_size if c.mini_batch_size % c.group_size == 0 else 1  # [D25] groups kept together
        losses: list[Loss] = []
        skipped = 0
        for _ in range(c.ppo_epochs):
            order = critic_free.group_order(n, whole)
            for start in range(0, n, step_rows):
                rows = order[start : start + step_rows]
                n_tokens = exp.batch.response_mask[rows].sum().float()
                self.optimizer.zero_grad(set_to_none=True)
                minis = [rows[i : i + c.mini_batch_size] for i in range(0, len(rows), c.mini_batch_size)]
                parts = []
                for k, mini in enumerate(minis):  # gradients are averaged over processes at the last one
                    with top.no_sync(self.train_module) if k < len(minis) - 1 else contextlib.nullcontext():
                        parts.append(self._micro_step(exp, mini[top.shard(len(mini))], len(rows), n_tokens))
                loss = _add_losses(parts, top)
                norm = top.clip_grad_norm(params, c.max_grad_norm or float("inf"))
                if not torch.isfinite(torch.stack([norm.to(loss.loss), loss.loss])).all():
                    skipped += 1
                    continue
                self.optimizer.step()
                losses.append(loss)
                # [D15] early stop: the policy moved too far from the rollout policy
                if c.target_kl is not None and float(loss.approxkl) > c.target_kl:
                    return losses, skipped
        self.optimizer.zero_grad(set_to_none=True)
        return losses, skipped

    def _micro_step(
        self, exp: Experience | GroupExperience, rows: torch.Tensor, n_rows: int, n_tokens: torch.Tensor
    ) -> Loss:
        """Forward + backward on some rows of an optimizer step of ``n_rows`` rows and ``n_tokens`` real
        tokens (over every process), by which the loss is normalised (a non-finite loss gives non-finite
        gradients, and the step is skipped on every process)."""
        batch = trim_batch(exp.batch.select(rows), self.actor_critic.is_encoder_decoder)
        coef = self.config.entropy_coef
        out = self.train_module(batch, self.generation.temperature, coef > 0)
        loss = self._loss(exp, rows, batch.response_mask, out, n_rows, n_tokens=n_tokens)
        if coef > 0:  # [D26] an entropy bonus, a token mean over the optimizer step ([D28] or a floor)
            assert out.entropy is not None
            mask, t = batch.response_mask, batch.response_mask.shape[1]
            floor = None if exp.ref_entropy is None else exp.ref_entropy[rows, :t]
            bonus = ppo.entropy_bonus(out.entropy, mask, n_tokens, floor)
            # the logged entropy: the plain token mean (the bonus itself without a floor)
            entropy = (
                bonus.detach() if floor is None else ppo.entropy_bonus(out.entropy.detach(), mask, n_tokens)
            )
            loss = dataclasses.replace(loss, loss=loss.loss - coef * bonus, entropy=entropy)
        if self.config.preference_coef > 0:
            loss = self._preference(exp, rows, batch.response_mask, out.logprobs, loss, n_rows)
        self.topology.backward(loss.loss)
        return loss

    def _preference(
        self,
        exp: Experience | GroupExperience,
        rows: torch.Tensor,
        mask: torch.Tensor,
        logprobs: torch.Tensor,
        loss: Loss,
        n_rows: int,
    ) -> Loss:
        """[D30] ``loss`` plus ``preference_coef`` x DPO's loss on the best and worst sample of each of the
        rows' groups (whole groups: ``PPOConfig._check_preference``), a mean over the step's groups."""
        c, t = self.config, mask.shape[1]
        assert exp.ref_logprobs is not None  # a preference term always runs the reference pass
        if len(rows) % c.group_size:
            raise TrainingError(
                f"ppo.preference_coef pairs the samples of one prompt, but this process's share of a "
                f"mini-batch holds {len(rows)} rows, not whole groups of ppo.num_generations "
                f"({c.group_size}): set ppo.mini_batch_size to a multiple of num_generations x the "
                "number of processes."
            )
        chosen, rejected = critic_free.preference_pairs(exp.scores[rows], c.group_size, c.preference_margin)
        term = critic_free.preference_loss(
            logprobs,
            exp.ref_logprobs[rows, :t],
            mask,
            chosen,
            rejected,
            beta=c.preference_beta,
            step_groups=n_rows // c.group_size,
        )
        return dataclasses.replace(loss, loss=loss.loss + c.preference_coef * term, preference=term.detach())

    def _loss(
        self,
        exp: Experience | GroupExperience,
        rows: torch.Tensor,
        mask: torch.Tensor,
        out: PolicyOutput,
        n_rows: int,
        *,
        n_tokens: torch.Tensor,
    ) -> Loss:
        """The update's one branch on the algorithm: PPO's loss [D7][D8], RLOO's [D22] or GRPO's [D23][D24]
        on the rows' current log-probs (and values) ``out``, (b, t) each."""
        c, t = self.config, mask.shape[1]

        def pick(x: torch.Tensor) -> torch.Tensor:
            return x[rows, :t]  # (b, t)

        if isinstance(exp, Experience):
            assert out.values is not None
            return ppo.ppo_loss(
                out.logprobs,
                pick(exp.logprobs),
                pick(exp.advantages),
                out.values,
                pick(exp.values),
                returns=pick(exp.returns),
                mask=mask,
                n_tokens=n_tokens,
                cliprange=c.cliprange,
                cliprange_value=c.cliprange_value,
                vf_coef=c.vf_coef,
            )
        old, advantages = pick(exp.logprobs), exp.advantages[rows]  # (b, t), (b,)
        if c.algorithm == "rloo":
            return critic_free.rloo_loss(
                out.logprobs, old, advantages, mask, n_rows, step_tokens=n_tokens, cliprange=c.cliprange
            )
        ref = None if exp.ref_logprobs is None else pick(exp.ref_logprobs)
        max_length, accumulation = self.generation.max_new_tokens, c.gradient_accumulation_steps
        weights = critic_free.loss_weights(
            mask, c.loss_type, n_rows, n_tokens, max_length, accumulation=accumulation
        )
        return critic_free.grpo_loss(
            out.logprobs,
            old,
            ref,
            advantages,
            mask,
            weights=weights,
            step_tokens=n_tokens,
            cliprange=c.cliprange,
            kl_coef=self.kl_coef,
        )

    def _stats(
        self, exp: Experience | GroupExperience, losses: list[Loss], raw_scores: torch.Tensor
    ) -> dict[str, float]:
        """The step's statistics in trl's names; the critic's (ppo/val/*, returns, value loss): PPO only."""
        mask = exp.batch.response_mask.float()
        lengths = mask.sum(1)
        stats = {} if exp.kl is None else {"objective/kl": float(exp.kl.sum(1).mean())}  # None: no reference
        stats.update(
            {
                "objective/kl_coef": self.kl_coef,
                "objective/entropy": float((-exp.logprobs * mask).sum(1).mean()),
                **exp.stats(),
                **{
                    LOSS_KEYS[f.name]: float(torch.stack([getattr(part, f.name) for part in losses]).mean())
                    for f in dataclasses.fields(losses[0])
                    if f.name not in OPTIONAL_PARTS or getattr(self.config, OPTIONAL_PARTS[f.name]) > 0
                },
                "ppo/learning_rate": float(self.optimizer.param_groups[0]["lr"]),
                "ppo/updates": float(len(losses)),
                "env/reward_mean": float(raw_scores.mean()),
                "env/reward_std": float(raw_scores.std()) if len(raw_scores) > 1 else 0.0,
                "tokens/responses_len_mean": float(lengths.mean()),
                "tokens/queries_len_mean": float(exp.batch.query_mask.sum(1).float().mean()),
            }
        )
        return stats

    # ---- state for checkpoints ------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.topology.optimizer_state(self.train_module, self.optimizer),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "kl_coef": self.kl_coef,
            "score_moments": vars(self.score_moments),
            "step_count": self.step_count,
            "nonfinite_steps": self.nonfinite_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.topology.load_optimizer_state(self.train_module, self.optimizer, state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.kl_coef = float(state["kl_coef"])
        self.score_moments = ppo.RunningMoments(**state["score_moments"])
        self.step_count = int(state["step_count"])
        self.nonfinite_steps = int(state.get("nonfinite_steps", 0))


def same_tensors(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> bool:
    return len(xs) == len(ys) and all(
        a.shape == b.shape and torch.equal(a.cpu(), b.cpu()) for a, b in zip(xs, ys, strict=True)
    )


def as_vector(x: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """Scores as the lab passed them (a list of 0-d tensors) or one tensor -> (B,) float32 on the CPU."""
    return torch.as_tensor(torch.stack(list(x)) if isinstance(x, list | tuple) else x).float().flatten().cpu()


def _add_losses(parts: list[Loss], topology: Topology) -> Loss:
    """Micro-batch terms are already divided by the step's size: their sums over micro-batches and
    processes are its means."""
    kind = type(parts[0])
    names = [f.name for f in dataclasses.fields(kind)]
    local = [torch.stack([getattr(p, k).detach() for p in parts]).sum() for k in names]
    return kind(*topology.sum(torch.stack(local)).unbind())


def _check_groups(queries: list[torch.Tensor], k: int) -> None:
    """[D19] The k samples of a query must be consecutive rows (nothing to check for PPO's k = 1)."""
    if k == 1:
        return
    if len(queries) % k or not all(
        same_tensors(queries[i : i + k], [queries[i]] * k) for i in range(0, len(queries), k)
    ):
        raise TrainingError(
            f"rloo and grpo compare the {k} samples of each query (ppo.num_generations): pass them as "
            f"consecutive rows, the same query {k} times in a row; got {len(queries)} rows that do not."
        )

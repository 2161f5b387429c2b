"""The config-driven RL loop: rollout -> reward -> PPO/RLOO/GRPO step -> metrics, guards and checkpoints, with
clean stops and exact resumes. Knows the order of a step and the run directory's life, not PPO's math
(ppo.py, trainer.py) nor how models run (engine/).

A run directory becomes a run with its first checkpoint or metrics line (``checkpoint.run_directory``).
SIGINT or SIGTERM finishes the current step, writes a checkpoint and stops with a line saying how to
resume; after SIGKILL, ``--resume`` continues from the last checkpoint and repeats the uninterrupted
run's steps exactly (RNG states are checkpointed; later metrics lines are dropped and recomputed).
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detoxrl import guards
from detoxrl.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    run_directory,
    save_checkpoint,
    save_weights,
    truncate_metrics,
)
from detoxrl.config import RunConfig, save_config
from detoxrl.engine import Engine
from detoxrl.errors import Interrupted
from detoxrl.generate import decode
from detoxrl.quality import QualityScorer
from detoxrl.rollout import batch_indices
from detoxrl.sampling import response_limits
from detoxrl.trainer import PPOTrainer

Reward = Callable[[list[str], list[str]], torch.Tensor]


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    final_dir: Path  # PEFT adapter (or full model) + value_head.safetensors (PPO's)
    metrics: list[dict[str, Any]]  # the records of the steps this call ran
    stopped_early: bool = False  # the quality guard stopped training (quality.guard.early_stop)


class StopRequest:
    """SIGINT / SIGTERM during training: the first lets the current step finish (then the loop writes a
    checkpoint and stops); a second SIGINT interrupts at once."""

    def __init__(self) -> None:
        self.signal: int | None = None

    @contextmanager
    def catching(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            if self.signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.signal = signum

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


def _train_step(
    trainer: PPOTrainer, config: RunConfig, prompts: list[str], queries: list[torch.Tensor], reward: Reward,
    quality: QualityScorer, history: list[dict[str, Any]],
) -> tuple[dict[str, Any], guards.GuardReport]:  # fmt: skip
    """Rollout -> reward -> RL step -> quality guards -> one metrics record."""
    k = config.ppo.group_size  # [D19] batch_size / k prompts, each sampled k times in consecutive rows
    idx = batch_indices(len(prompts), config.ppo.batch_size // k, trainer.step_count, config.seed)
    t0 = time.perf_counter()
    limits = [n for n in response_limits(config.generation, len(idx)) for _ in range(k)]  # one per prompt
    idx = [i for i in idx for _ in range(k)]
    batch_prompts, batch_queries = [prompts[i] for i in idx], [queries[i] for i in idx]
    sampled = trainer.rollout(batch_queries, limits)
    texts = decode(trainer.tokenizer, sampled.responses())
    t1 = time.perf_counter()
    scores = torch.as_tensor(reward(batch_prompts, texts)).float().cpu()
    t2 = time.perf_counter()
    stats: dict[str, Any] = trainer.learn(batch_queries, sampled, scores)
    stats.update(guards.rollout_metrics(batch_prompts, texts, quality))
    verdict = guards.check([*history, stats], config.quality.guard)
    stats.update(verdict.metrics())
    stats.update({"time/generation": t1 - t0, "time/reward": t2 - t1, "time/total": time.perf_counter() - t0})
    return trainer.log_stats(stats, batch={"query": batch_prompts, "response": texts}), verdict


def _postfix(record: dict[str, Any], verdict: guards.GuardReport) -> dict[str, str]:
    shown = {"reward": f"{record.get('env/reward_mean', float('nan')):.3f}",
             "kl": f"{record.get('objective/kl', float('nan')):.3f}"}  # fmt: skip
    if record.get("train/skipped"):
        shown["skipped"] = "non-finite"
    return {**shown, **({"guard": verdict.postfix()} if verdict.alarms else {})}


def train(
    config: RunConfig, prompts: list[str], reward: Reward, out_dir: str | Path | None = None,
    resume: bool = False, progress: bool = True, engine: Engine | None = None,
) -> TrainResult:  # fmt: skip
    """Detoxify ``config.policy`` with ``config.ppo.algorithm`` (PPO, RLOO or GRPO) on ``prompts`` against
    ``reward(prompts, responses) -> (B,)``, on ``engine`` (default: ``config.policy.engine`` for
    ``config.device``)."""
    if not prompts:
        raise ValueError("train() needs at least one prompt.")
    run_dir = Path(out_dir or config.output_dir)
    with run_directory(run_dir, resume, evaluation=False, command="train"):
        return _train(config, prompts, reward, run_dir, resume, progress, engine)


def _train(
    config: RunConfig, prompts: list[str], reward: Reward, run_dir: Path, resume: bool, progress: bool,
    engine: Engine | None,
) -> TrainResult:  # fmt: skip
    from tqdm.auto import tqdm

    from detoxrl.embeddings import build_quality
    from detoxrl.engine import select_engine
    from detoxrl.generate import format_prompts, tokenize_prompts
    from detoxrl.models import load_policy, resolve_device
    from detoxrl.policy import build_actor_critic
    from detoxrl.report import read_metrics

    # 1. Seed once; the engine, chosen once and written beside the resolved config.
    torch.manual_seed(config.seed), random.seed(config.seed), np.random.seed(config.seed)
    engine = engine or select_engine(config.policy.engine, resolve_device(config.device))
    engine.configure(config.threads)
    print(engine.describe())
    save_config(config, run_dir / "config.yaml", comment=engine.describe())
    # 2. The policy with its value head (PPO's only) and reference, the trainer, the prompts, the quality
    #    scorer.
    policy = load_policy(config.policy, engine.device)
    critic = config.ppo.algorithm == "ppo"
    actor_critic = build_actor_critic(policy, config.policy, config.ppo.value_head_init_std, engine, critic)
    print(actor_critic.describe())
    trainer = PPOTrainer(config.ppo, actor_critic, policy.tokenizer, config.generation, config.steps,
                         run_dir / "metrics.jsonl", run_dir / "tensorboard")  # fmt: skip
    queries = tokenize_prompts(
        policy.tokenizer, format_prompts(policy.tokenizer, prompts, config.policy.chat_template)
    )
    quality = build_quality(config.quality, engine.device)
    # 3. Resume: weights, optimizer, scheduler, KL controller, RNG states and step from the last checkpoint.
    checkpoint = latest_checkpoint(run_dir) if resume else None
    if checkpoint is not None:
        trainer.load_state_dict(load_checkpoint(actor_critic, checkpoint))
    truncate_metrics(run_dir / "metrics.jsonl", trainer.step_count)
    # 4. The loop: one step, a checkpoint every save_every steps and before any stop (signal, guard).
    history, records, stop = read_metrics(run_dir), [], StopRequest()
    stopped_early = False

    def save() -> None:
        save_checkpoint(
            actor_critic, trainer.state_dict(), trainer.step_count, run_dir, config.keep_checkpoints
        )

    bar = tqdm(range(trainer.step_count, config.steps), desc="ppo", disable=not progress)
    with stop.catching():
        for _ in bar:
            record, verdict = _train_step(trainer, config, prompts, queries, reward, quality, history)
            history.append(record)
            records.append(record)
            bar.set_postfix(_postfix(record, verdict))
            if verdict.alarms:
                bar.write(verdict.message())
            stopped_early = verdict.stop
            if trainer.step_count % config.save_every == 0 or stop.signal or stopped_early:
                save()
            if stop.signal or stopped_early:
                break
    if stop.signal:
        name = signal.Signals(stop.signal).name
        where = latest_checkpoint(run_dir)
        message = f"stopped by {name} after step {trainer.step_count} of {config.steps} ({where} holds it)"
        raise Interrupted(message, 128 + stop.signal, str(run_dir))
    # 5. The final adapter (+ PPO's value head): ``PeftModel.from_pretrained(base, final_dir)`` loads it.
    if trainer.step_count % config.save_every and not stopped_early:
        save()
    save_weights(actor_critic, run_dir / "final")
    return TrainResult(run_dir, run_dir / "final", records, stopped_early)

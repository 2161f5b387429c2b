"""The config-driven RL loop: rollout -> reward -> PPO/RLOO/GRPO step -> metrics, guards and checkpoints, with
clean stops and exact resumes. Knows the order of a step and the run directory's life, not PPO's math
(ppo.py, trainer.py) nor how models run (engine/).

A run directory becomes a run with its first checkpoint or metrics line (``checkpoint.run_directory``).
SIGINT or SIGTERM finishes the current step, writes a checkpoint and stops with a line saying how to
resume; after SIGKILL, ``--resume`` continues from the last checkpoint and repeats the uninterrupted
run's steps exactly (RNG states are checkpointed; later metrics lines are dropped and recomputed).

On several processes (distributed.py) each samples and scores its share of every step's batch; the main
process alone writes the run directory, every process resumes from the same checkpoint (on any number of
processes: the checkpoint holds the run's state, not the processes'), and they stop together.
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

from detoxrl.config.files import save_config
from detoxrl.config.schema import RunConfig
from detoxrl.engine import Engine
from detoxrl.errors import Interrupted
from detoxrl.metrics import guards
from detoxrl.metrics.quality import QualityScorer
from detoxrl.models.generation import decode
from detoxrl.models.sampling import response_limits
from detoxrl.parallel import distributed
from detoxrl.parallel.distributed import Topology
from detoxrl.rewards.novelty import remembering
from detoxrl.rundir import latest_checkpoint, run_directory, truncate_metrics
from detoxrl.training.checkpoint import load_checkpoint, save_checkpoint, save_weights
from detoxrl.training.metrics_log import MetricsLogger, record
from detoxrl.training.rollout import batch_indices, sample_seeds
from detoxrl.training.trainer import Trainer

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
    trainer: Trainer, config: RunConfig, prompts: list[str], queries: list[torch.Tensor], reward: Reward,
    quality: QualityScorer, history: list[dict[str, Any]],
) -> tuple[dict[str, Any], guards.GuardReport]:  # fmt: skip
    """Rollout -> reward -> RL step -> quality guards -> one metrics record. This process samples and
    scores its share of the global batch (whole groups of k samples for rloo and grpo), each row's draws
    keyed by (seed, step, place in the batch)."""
    k = config.ppo.group_size  # [D19] batch_size / k prompts, each sampled k times in consecutive rows
    groups = batch_indices(len(prompts), config.ppo.batch_size // k, trainer.step_count, config.seed)
    group_limits = response_limits(config.generation, len(groups))  # the same draws on every process
    idx, limits = [i for i in groups for _ in range(k)], [n for n in group_limits for _ in range(k)]
    seeds = sample_seeds(config.seed, trainer.step_count, len(idx))
    share = trainer.topology.shard(len(groups))
    mine = slice(share.start * k, share.stop * k)
    batch_prompts, batch_queries = [prompts[i] for i in idx[mine]], [queries[i] for i in idx[mine]]
    t0 = time.perf_counter()
    sampled = trainer.rollout(batch_queries, limits[mine], seeds[mine])
    texts = decode(trainer.tokenizer, sampled.responses())
    t1 = time.perf_counter()
    scores = torch.as_tensor(reward(batch_prompts, texts)).float().cpu()
    t2 = time.perf_counter()
    stats: dict[str, Any] = trainer.learn(batch_queries, sampled, scores)
    batch_prompts, texts = [prompts[i] for i in idx], trainer.topology.gather(texts)  # the global batch
    for part in remembering(reward):  # novelty: every process remembers the same global batch
        part.remember(texts)
    stats.update(guards.rollout_metrics(batch_prompts, texts, quality))
    verdict = guards.check([*history, stats], config.quality.guard)
    stats.update(verdict.metrics())
    stats.update({"time/generation": t1 - t0, "time/reward": t2 - t1, "time/total": time.perf_counter() - t0})
    return record(trainer.step_count, stats, batch={"query": batch_prompts, "response": texts}), verdict


def _postfix(record: dict[str, Any], verdict: guards.GuardReport) -> dict[str, str]:
    shown = {"reward": f"{record.get('env/reward_mean', float('nan')):.3f}",
             "kl": f"{record.get('objective/kl', float('nan')):.3f}"}  # fmt: skip
    if record.get("train/skipped"):
        shown["skipped"] = "non-finite"
    return {**shown, **({"guard": verdict.postfix()} if verdict.alarms else {})}


def select_run_engine(config: RunConfig, topology: Topology) -> Engine:
    """The engine of ``config`` on this process's device; sharded models (FSDP, ZeRO-3) take the reference
    engine, whose passes go through the model's own modules (the CPU engine keeps frozen weights' copies)."""
    from detoxrl.engine import select_engine
    from detoxrl.models.loading import resolve_device

    device = topology.place(resolve_device(config.device))
    return select_engine("reference" if topology.sharded else config.policy.engine, device)


def train(
    config: RunConfig, prompts: list[str], reward: Reward, out_dir: str | Path | None = None,
    resume: bool = False, progress: bool = True, engine: Engine | None = None,
) -> TrainResult:  # fmt: skip
    """Detoxify ``config.policy`` with ``config.ppo.algorithm`` (PPO, RLOO or GRPO) on ``prompts`` against
    ``reward(prompts, responses) -> (B,)``, on ``engine`` (default: ``config.policy.engine`` for
    ``config.device``)."""
    if not prompts:
        raise ValueError("train() needs at least one prompt.")
    run_dir, main = Path(out_dir or config.output_dir), distributed.setup(config.device).is_main
    with run_directory(run_dir, resume, evaluation=False, command="train", owner=main):
        return _train(config, prompts, reward, run_dir, resume, progress, engine)


def _build(
    config: RunConfig, prompts: list[str], reward: Reward, run_dir: Path, engine: Engine | None,
    top: Topology, checkpoint: Path | None,
) -> tuple[Trainer, list[torch.Tensor], QualityScorer]:  # fmt: skip
    """Steps 1-3 of ``_train``: the trainer (on this process's engine, resumed from ``checkpoint``), the
    prompts' tokens, the quality scorer."""
    from detoxrl.models.actor_critic import build_actor_critic
    from detoxrl.models.generation import format_prompts, tokenize_prompts
    from detoxrl.models.loading import load_policy
    from detoxrl.rewards.build import build_quality

    # 1. Seed once (every process alike); the engine, chosen once and written beside the resolved config by
    #    the main process, which alone writes the run directory.
    torch.manual_seed(config.seed), random.seed(config.seed), np.random.seed(config.seed)
    engine = engine or select_run_engine(config, top)
    engine.configure(top.threads(config.threads))
    if top.is_main:
        print(f"{engine.describe()}\n{top.describe()}" if top.distributed else engine.describe())
        save_config(config, run_dir / "config.yaml", comment=engine.describe())
    # 2. The policy with its value head (PPO's only) and reference, the trainer, the prompts, the quality
    #    scorer.
    policy = load_policy(config.policy, engine.device)
    critic = config.ppo.algorithm == "ppo"
    actor_critic = build_actor_critic(policy, config.policy, config.ppo.value_head_init_std, engine, critic)
    if top.is_main:
        print(actor_critic.describe())
    # 3. Resume: weights (before any wrapping shards them), optimizer, scheduler, KL controller, RNG states,
    #    step and the reward's memory of recent rollouts (novelty) from the last checkpoint.
    state = load_checkpoint(actor_critic, checkpoint) if checkpoint else None
    trainer = Trainer(config.ppo, actor_critic, policy.tokenizer, config.generation, config.steps, top)
    if state is not None:
        trainer.load_state_dict(state)
        for part, memory in zip(remembering(reward), state.get("reward_memory", []), strict=False):
            part.load_state_dict(memory)
    queries = tokenize_prompts(
        policy.tokenizer, format_prompts(policy.tokenizer, prompts, config.policy.chat_template)
    )
    return trainer, queries, build_quality(config.quality, engine.device)


def _save(trainer: Trainer, config: RunConfig, run_dir: Path, reward: Reward, final: bool = False) -> None:
    """A checkpoint (or the final weights) by the main process, the others waiting till it is there."""
    top, ac = trainer.topology, trainer.actor_critic
    weights = top.full_state_dict(trainer.train_module)  # sharded: gathered by every process; else None
    state = {**trainer.state_dict(), "reward_memory": [part.state_dict() for part in remembering(reward)]}
    if top.is_main and final:
        save_weights(ac, run_dir / "final", weights)
    elif top.is_main:
        save_checkpoint(ac, state, trainer.step_count, run_dir, config.keep_checkpoints, weights)
    top.barrier()


def _train(
    config: RunConfig, prompts: list[str], reward: Reward, run_dir: Path, resume: bool, progress: bool,
    engine: Engine | None,
) -> TrainResult:  # fmt: skip
    from tqdm.auto import tqdm

    from detoxrl.rundir import read_metrics

    # 1-3. The processes; the trainer, resumed from the last checkpoint (every process the same one: the
    #      main process's choice); the prompts and the quality scorer.
    top = distributed.setup(config.device)
    checkpoint = top.broadcast(latest_checkpoint(run_dir) if resume else None)
    trainer, queries, quality = _build(config, prompts, reward, run_dir, engine, top, checkpoint)
    if top.is_main:
        truncate_metrics(run_dir / "metrics.jsonl", trainer.step_count)
    # 4. The loop: one step, a checkpoint every save_every steps and before any stop (signal, guard), which
    #    every process takes together.
    history, records, stop = top.broadcast(read_metrics(run_dir) if top.is_main else []), [], StopRequest()
    logger = (
        MetricsLogger(run_dir / "metrics.jsonl", run_dir / "tensorboard") if top.is_main else MetricsLogger()
    )
    stopped_early = signalled = False
    bar = tqdm(range(trainer.step_count, config.steps), desc="ppo", disable=not progress or not top.is_main)
    with stop.catching():
        for _ in bar:
            line, verdict = _train_step(trainer, config, prompts, queries, reward, quality, history)
            logger.log(line)
            history.append(line)
            records.append(line)
            bar.set_postfix(_postfix(line, verdict))
            if verdict.alarms and top.is_main:
                bar.write(verdict.message())
            stopped_early, signalled = verdict.stop, top.any(stop.signal is not None)
            if trainer.step_count % config.save_every == 0 or signalled or stopped_early:
                _save(trainer, config, run_dir, reward)
            if signalled or stopped_early:
                break
    if signalled:
        signum = stop.signal or signal.SIGTERM  # another process's signal stopped this one
        where = latest_checkpoint(run_dir)
        message = (
            f"stopped by {signal.Signals(signum).name} after step {trainer.step_count} of {config.steps}"
        )
        raise Interrupted(f"{message} ({where} holds it)", 128 + signum, str(run_dir))
    # 5. The final adapter (+ PPO's value head): ``PeftModel.from_pretrained(base, final_dir)`` loads it.
    if trainer.step_count % config.save_every and not stopped_early:
        _save(trainer, config, run_dir, reward)
    _save(trainer, config, run_dir, reward, final=True)
    return TrainResult(run_dir, run_dir / "final", records, stopped_early)

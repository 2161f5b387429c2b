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

import logging
import random
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from detoxrl.config import RunConfig, save_config
from detoxrl.config.io import flatten, to_dict
from detoxrl.data.prompts import load_prompts
from detoxrl.errors import Interrupted
from detoxrl.metrics import guards
from detoxrl.metrics.quality import QualityScorer
from detoxrl.models.actor_critic import build_actor_critic
from detoxrl.models.generation import decode
from detoxrl.models.loading import load_policy, recorded_base
from detoxrl.models.sampling import response_limits
from detoxrl.recipes import prompts as prompts_of
from detoxrl.recipes.preflight import disk_line
from detoxrl.recipes.session import Session, setup
from detoxrl.rewards.base import Reward
from detoxrl.rewards.build import build_quality, build_reward
from detoxrl.rewards.novelty import remembering
from detoxrl.rundir import (
    ResumePoint,
    latest_checkpoint,
    read_metrics,
    resume_point,
    run_directory,
    set_aside,
    truncate_metrics,
)
from detoxrl.training.checkpoint import load_checkpoint, save_checkpoint, save_final
from detoxrl.training.metrics_log import MetricsLogger, build_trackers, check_trackers, record
from detoxrl.training.rollout import batch_indices, sample_seeds
from detoxrl.training.trainer import Trainer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    final_dir: Path  # PEFT adapter (or full model) + tokenizer + value_head.safetensors (PPO's)
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


@dataclass
class Loop:
    """What the loop carries from step to step, built once (``_build``)."""

    config: RunConfig
    run_dir: Path
    trainer: Trainer
    prompts: list[str]  # each within the prompt limit (recipes/prompts.py)
    queries: list[torch.Tensor]  # the prompts' tokens, as the policy sees them
    reward: Reward
    quality: QualityScorer
    logger: MetricsLogger
    history: list[dict[str, Any]]  # every step's record, from the first (a resumed run's included)
    base: str  # what the saved adapters record as their base (models.loading.recorded_base)


def _train_step(loop: Loop) -> tuple[dict[str, Any], guards.GuardReport]:
    """Rollout -> reward -> RL step -> quality guards -> one metrics record. This process samples and
    scores its share of the global batch (whole groups of k samples for rloo and grpo), each row's draws
    keyed by (seed, step, place in the batch)."""
    config, trainer, prompts, queries = loop.config, loop.trainer, loop.prompts, loop.queries
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
    scores = torch.as_tensor(loop.reward(batch_prompts, texts)).float().cpu()
    t2 = time.perf_counter()
    stats: dict[str, Any] = trainer.learn(batch_queries, sampled, scores)
    batch_prompts, texts = [prompts[i] for i in idx], trainer.topology.gather(texts)  # the global batch
    for part in remembering(loop.reward):  # novelty: every process remembers the same global batch
        part.remember(texts)
    stats.update(guards.rollout_metrics(batch_prompts, texts, loop.quality))
    verdict = guards.check([*loop.history, stats], config.quality.guard)
    stats.update(verdict.metrics())
    stats.update({"time/generation": t1 - t0, "time/reward": t2 - t1, "time/total": time.perf_counter() - t0})
    return record(trainer.step_count, stats, batch={"query": batch_prompts, "response": texts}), verdict


def _postfix(line: dict[str, Any], verdict: guards.GuardReport) -> dict[str, str]:
    shown = {
        "reward": f"{line.get('env/reward_mean', float('nan')):.3f}",
        "kl": f"{line.get('objective/kl', float('nan')):.3f}",
    }
    if line.get("train/skipped"):
        shown["skipped"] = "non-finite"
    return {**shown, **({"guard": verdict.postfix()} if verdict.alarms else {})}


def train(
    config: RunConfig,
    prompts: list[str],
    reward: Reward,
    out_dir: str | Path | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    session: Session | None = None,
) -> TrainResult:
    """Detoxify ``config.policy`` with ``config.ppo.algorithm`` (PPO, RLOO or GRPO) on ``prompts`` against
    ``reward(prompts, responses) -> (B,)``, in ``session`` (default: ``session.setup(config)``)."""
    if not prompts:
        raise ValueError("train() needs at least one prompt.")
    check_trackers(config.report_to)  # before anything is written
    session = session or setup(config)
    run_dir = Path(out_dir or config.output_dir)
    point = resume_point(run_dir) if resume else ResumePoint(None)  # no whole checkpoint: before anything
    overwrite = config.overwrite_output_dir
    with run_directory(run_dir, resume, False, "train", session.is_main, overwrite=overwrite):
        return train_in(config, prompts, reward, run_dir, point=point, progress=progress, session=session)


def _build(
    config: RunConfig,
    prompts: list[str],
    reward: Reward,
    run_dir: Path,
    session: Session,
    *,
    point: ResumePoint,
) -> Loop:
    """Steps 1-3 of ``train_in``: the trainer (resumed from ``point``, the newest whole checkpoint: every
    process the same one, the main process's choice), the prompts' tokens, the quality scorer, the metrics
    log."""
    # 1. Seed once (every process alike); the engine written beside the resolved config by the main process,
    #    which alone writes the run directory; damaged checkpoints newer than the resume point set aside.
    top, engine = session.topology, session.engine
    if point.damaged and session.is_main:
        log.warning(point.note())
        set_aside(point)
    torch.manual_seed(config.seed), random.seed(config.seed), np.random.seed(config.seed)
    session.say(f"{engine.describe()}\n{top.describe()}" if top.distributed else engine.describe())
    if session.is_main:
        save_config(config, run_dir / "config.yaml", comment=engine.describe())
    # 2. The policy; room for its checkpoints; the prompts' tokens, each within the prompt limit (the count
    #    of those cut said and written into data.json); its value head (PPO's only), reference; the trainer.
    policy = load_policy(config.policy, engine.device)
    disk_line(config, policy.model.config, folder=run_dir, resume=point.checkpoint is not None)
    fitted = prompts_of.fit(config, prompts, policy.tokenizer, policy.model.config, part="train")
    session.say(fitted.describe("training prompts"))
    if session.is_main:
        prompts_of.record(run_dir, "train", fitted)
    critic = config.ppo.algorithm == "ppo"
    actor_critic = build_actor_critic(policy, config.policy, config.ppo.value_head_init_std, engine, critic)
    session.say(actor_critic.describe())
    # 3. Resume: weights (before any wrapping shards them), optimizer, scheduler, KL controller, RNG states,
    #    step and the reward's memory of recent rollouts (novelty) from the last checkpoint.
    checkpoint = top.broadcast(point.checkpoint)  # none in a new run: run_directory made sure
    state = load_checkpoint(actor_critic, checkpoint) if checkpoint else None
    trainer = Trainer(
        config.ppo, actor_critic, policy.tokenizer, config.generation, config.steps, topology=top
    )
    if state is not None:
        trainer.load_state_dict(state)
        for part, memory in zip(remembering(reward), state.get("reward_memory", []), strict=False):
            part.load_state_dict(memory)
    if session.is_main:
        truncate_metrics(run_dir / "metrics.jsonl", trainer.step_count)
    main = session.is_main  # the others log nothing
    logger = MetricsLogger()
    if main:
        name = config.run_name or run_dir.resolve().name
        trackers = build_trackers(
            config.report_to,
            run_dir / "tensorboard",
            project=config.project,
            run_name=name,
            config=flatten(to_dict(config)),
        )
        logger = MetricsLogger(run_dir / "metrics.jsonl", trackers)
    history = top.broadcast(read_metrics(run_dir) if main else [])
    quality = build_quality(config.quality, engine.device)
    base = recorded_base(policy.source)
    return Loop(config, run_dir, trainer, fitted.texts, fitted.ids, reward, quality, logger, history, base)


def _save(loop: Loop, final: bool = False) -> None:
    """A checkpoint (or the final weights with the tokenizer) by the main process, the others waiting till
    it is there. Both record the base as ``loop.base``, so that they load on another machine."""
    trainer, run_dir = loop.trainer, loop.run_dir
    top, ac = trainer.topology, trainer.actor_critic
    weights = top.full_state_dict(trainer.train_module)  # sharded: gathered by every process; else None
    memory = [part.state_dict() for part in remembering(loop.reward)]
    state = {**trainer.state_dict(), "reward_memory": memory}
    if top.is_main and final:
        save_final(ac, run_dir / "final", weights, base=loop.base, tokenizer=trainer.tokenizer)
    elif top.is_main:
        keep = loop.config.keep_checkpoints
        save_checkpoint(ac, state, trainer.step_count, run_dir, keep, weights=weights, base=loop.base)
    top.barrier()


def train_in(
    config: RunConfig,
    prompts: list[str],
    reward: Reward,
    run_dir: Path,
    *,
    point: ResumePoint,
    progress: bool,
    session: Session,
) -> TrainResult:
    """``train`` in a run directory already open (``rundir.run_directory``), its trackers checked and its
    resume ``point`` found: ``train`` itself, and ``detoxrl run``'s training."""
    # 1-3. The trainer, resumed from the newest whole checkpoint; the prompts, quality scorer, metrics log.
    loop = _build(config, prompts, reward, run_dir, session, point=point)
    trainer, top = loop.trainer, session.topology
    # 4. The loop: one step, a checkpoint every save_every steps and before any stop (signal, guard), which
    #    every process takes together.
    records: list[dict[str, Any]] = []
    stop, stopped_early, signalled = StopRequest(), False, False
    bar = tqdm(
        range(trainer.step_count, config.steps),
        desc=config.ppo.algorithm,
        disable=not progress or not session.is_main,
    )
    with stop.catching():
        for _ in bar:
            line, verdict = _train_step(loop)
            loop.logger.log(line)
            loop.history.append(line)
            records.append(line)
            bar.set_postfix(_postfix(line, verdict))
            if verdict.alarms and session.is_main:
                bar.write(verdict.message())
            stopped_early, signalled = verdict.stop, top.any(stop.signal is not None)
            if trainer.step_count % config.save_every == 0 or signalled or stopped_early:
                _save(loop)
            if signalled or stopped_early:
                break
    loop.logger.finish()
    if signalled:
        signum = stop.signal or signal.SIGTERM  # another process's signal stopped this one
        where = latest_checkpoint(run_dir)
        message = (
            f"stopped by {signal.Signals(signum).name} after step {trainer.step_count} of {config.steps}"
        )
        raise Interrupted(f"{message} ({where} holds it)", 128 + signum, str(run_dir))
    # 5. The final adapter (+ its tokenizer, PPO's value head): ``AutoPeftModelForCausalLM.from_pretrained``
    #    (or ...ForSeq2SeqLM) loads it wherever its recorded base can be found.
    if trainer.step_count % config.save_every and not stopped_early:
        _save(loop)
    _save(loop, final=True)
    return TrainResult(run_dir, run_dir / "final", records, stopped_early)


def train_command(config: RunConfig, *, resume: bool = False) -> int:
    """``detoxrl train``: the training prompts of ``config.data`` (all but the held-out share) against
    ``config.reward``, no evaluation; the final adapter's folder said at the end."""
    session = setup(config)
    prompts = [example.text for example in load_prompts(config.data).train]
    reward = build_reward(config.reward, session.device)
    result = train(config, prompts, reward, resume=resume, session=session)
    session.say(f"final adapter: {result.final_dir}")
    return 0

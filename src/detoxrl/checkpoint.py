"""Atomic checkpoints of a PPO run and their restoration. Knows the trainer's state, not its algorithm.

A checkpoint is a folder ``checkpoint-NNNNNN`` holding ``policy/`` (adapter or model + value head)
and ``state.pt`` (optimizer, scheduler, KL coefficient, score moments, RNG states, step).
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from detoxrl.errors import TrainingError

if TYPE_CHECKING:
    from detoxrl.trainer import PPOTrainer

CHECKPOINT_PREFIX = "checkpoint-"


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(trainer: PPOTrainer, run_dir: str | Path, keep: int = 2) -> Path:
    """Adapter + value head, optimizer, scheduler, KL controller, score moments, RNG states and step,
    written to a temporary folder renamed at the end: a crash never leaves a half checkpoint."""
    run_dir = Path(run_dir)
    final = run_dir / f"{CHECKPOINT_PREFIX}{trainer.step_count:06d}"
    tmp = run_dir / f".tmp-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.actor_critic.save(tmp / "policy")
    torch.save({"trainer": trainer.state_dict(), "rng": _rng_state()}, tmp / "state.pt")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in sorted(run_dir.glob(f"{CHECKPOINT_PREFIX}*"))[:-keep]:
        shutil.rmtree(old)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = sorted(p for p in Path(run_dir).glob(f"{CHECKPOINT_PREFIX}*") if (p / "state.pt").is_file())
    return found[-1] if found else None


def load_checkpoint(trainer: PPOTrainer, checkpoint: str | Path) -> None:
    """Restore everything ``save_checkpoint`` wrote; training then continues as if never stopped."""
    checkpoint = Path(checkpoint)
    try:
        trainer.actor_critic.load(checkpoint / "policy")
        state = torch.load(checkpoint / "state.pt", weights_only=False)
        trainer.load_state_dict(state["trainer"])
    except (OSError, KeyError, RuntimeError, ValueError) as e:
        raise TrainingError(
            f"Checkpoint '{checkpoint}' cannot be loaded ({e}); delete it to use an older one."
        ) from None
    _set_rng_state(state["rng"])

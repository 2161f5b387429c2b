"""The metrics log of a run: one record per RL step, appended to ``metrics.jsonl`` and written as
TensorBoard scalars (``tensorboard --logdir RUN_DIR``). Knows nothing of how the figures were computed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter

SAMPLES_LOGGED = 4  # query/response pairs of each step kept in its record


def record(
    step: int,
    stats: dict[str, float],
    batch: dict[str, list[str]] | None = None,
    rewards: torch.Tensor | None = None,
) -> dict[str, Any]:
    """One step's record: its number, its statistics, the rewards' mean and std (B,) where given, and the
    batch's first query/response pairs."""
    line: dict[str, Any] = {"step": step, **stats}
    if rewards is not None:
        line["env/reward_mean"] = float(rewards.mean())
        line["env/reward_std"] = float(rewards.std()) if rewards.numel() > 1 else 0.0
    if batch is not None and "query" in batch and "response" in batch:
        pairs = zip(batch["query"][:SAMPLES_LOGGED], batch["response"][:SAMPLES_LOGGED], strict=True)
        line["samples"] = [{"query": q, "response": r} for q, r in pairs]
    return line


class MetricsLogger:
    """Appends records to ``metrics_path`` and their scalars to TensorBoard at ``tensorboard_dir``; either
    None: not written (another process than the main one logs nothing)."""

    def __init__(
        self, metrics_path: str | Path | None = None, tensorboard_dir: str | Path | None = None
    ) -> None:
        self.metrics_path = Path(metrics_path) if metrics_path else None
        self.tensorboard_dir = tensorboard_dir
        self._tensorboard: Any = None  # a SummaryWriter, opened at the first record

    def log(self, line: dict[str, Any]) -> None:
        if self.metrics_path is not None:
            with self.metrics_path.open("a") as f:
                f.write(json.dumps(line) + "\n")
        if self.tensorboard_dir is not None:
            self._log_tensorboard(line)

    def _log_tensorboard(self, line: dict[str, Any]) -> None:
        """The same scalars as metrics.jsonl, as TensorBoard events."""
        if self._tensorboard is None:
            self._tensorboard = SummaryWriter(str(self.tensorboard_dir))
        for key, value in line.items():
            if isinstance(value, int | float) and key != "step":
                self._tensorboard.add_scalar(key, value, line["step"])
        self._tensorboard.flush()

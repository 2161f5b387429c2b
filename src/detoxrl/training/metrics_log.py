"""The metrics log of a run: one record per RL step, appended to ``metrics.jsonl`` and sent to the trackers
people already use, through accelerate's (``report_to``: TensorBoard by default, offline; Weights & Biases,
Trackio, MLflow, ... where installed). Knows nothing of how the figures were computed.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import torch
from accelerate.tracking import LOGGER_TYPE_TO_CLASS, GeneralTracker, MLflowTracker, TensorBoardTracker

from detoxrl.errors import ConfigError

SAMPLES_LOGGED = 4  # query/response pairs of each step kept in its record
PACKAGES = {"comet_ml": "comet-ml"}  # a tracker's PyPI name where it is not its module's
RUN_NAME_KEY = {
    "wandb": "name",
    "trackio": "name",
    "comet_ml": "experiment_name",
}  # where each takes a run name


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


def check_trackers(report_to: tuple[str, ...]) -> None:
    """Each tracker's package is installed, or one line saying which to install (``--dry-run`` and start)."""
    for name in report_to:
        module = "torch.utils.tensorboard" if name == "tensorboard" else name
        if importlib.util.find_spec(module.split(".")[0]) is None:
            package = PACKAGES.get(name, name)
            raise ConfigError(
                f"Config key 'report_to' names {name}, whose package is not installed: pip install {package} "
                f"(or 'detoxrl[{name}]'), or drop it from report_to."
            )


def build_trackers(
    report_to: tuple[str, ...],
    tensorboard_dir: str | Path,
    *,
    project: str = "detoxrl",
    run_name: str = "",
    config: dict[str, Any] | None = None,
) -> list[GeneralTracker]:
    """accelerate's trackers for ``report_to``, started: TensorBoard writes into ``tensorboard_dir``, the
    others into ``project`` under ``run_name``, each given the run's settings (flattened ``config``)."""
    check_trackers(report_to)
    trackers: list[GeneralTracker] = []
    for name in report_to:
        if name == "tensorboard":  # its run name is a sub-folder: none, the run directory says which run
            tracker: GeneralTracker = TensorBoardTracker("", tensorboard_dir)
        elif name == "mlflow":
            tracker = MLflowTracker(experiment_name=project, run_name=run_name)
        else:
            key = RUN_NAME_KEY.get(name)
            tracker = LOGGER_TYPE_TO_CLASS[name](project, **({key: run_name} if key else {}))
        tracker.start()
        if name != "tensorboard" and config:  # TensorBoard's hparams add a folder; config.yaml holds them
            tracker.store_init_configuration(config)
        trackers.append(tracker)
    return trackers


class MetricsLogger:
    """Appends records to ``metrics_path`` and sends their numbers to ``trackers``; with neither, logs
    nothing (processes other than the main one)."""

    def __init__(
        self, metrics_path: str | Path | None = None, trackers: list[GeneralTracker] | None = None
    ) -> None:
        self.metrics_path = Path(metrics_path) if metrics_path else None
        self.trackers = trackers or []

    def log(self, line: dict[str, Any]) -> None:
        if self.metrics_path is not None:
            with self.metrics_path.open("a") as f:
                f.write(json.dumps(line) + "\n")
        numbers = {k: v for k, v in line.items() if isinstance(v, int | float) and k != "step"}
        for tracker in self.trackers:
            tracker.log(numbers, step=line["step"])
            if isinstance(tracker, TensorBoardTracker):
                tracker.writer.flush()  # readable while the run goes on

    def finish(self) -> None:
        for tracker in self.trackers:
            tracker.finish()

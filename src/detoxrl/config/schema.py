"""Typed, frozen run configuration: the only home of defaults, of what a value may be and of what it means.
Knows nothing of models, data files or tensors (``--dry-run`` looks at those: recipes/preflight.py).

A config is built from (lowest to highest precedence) the dataclass defaults, a preset or YAML file, and
``a.b=c`` overrides (config/io.py turns those into typed values; unknown keys are errors with a
did-you-mean, renamed keys say where they went). Every field is a ``param``: its default, its rule and its
doc. Every dataclass checks its own values in ``__post_init__`` (ranges, NaN, choices, consistency; what
``run`` needs across sections: ``RunConfig.check_evaluation``), so ``--dry-run``, a real run and
``PPOConfig(mini_batch_size=0)`` in Python raise the same ``ConfigError``: one line naming the key, the
value and what to do. The sections live in policy.py, sampling.py, rl.py and evaluation.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from detoxrl.config.checks import SEED as SEED_RULE
from detoxrl.config.checks import TEXT, Check, check, count, optional, param
from detoxrl.config.evaluation import EvalConfig, QualityConfig
from detoxrl.config.policy import DataConfig, PolicyConfig, RewardConfig
from detoxrl.config.rl import PPOConfig
from detoxrl.config.sampling import SamplingConfig, check_rollout_sampling
from detoxrl.errors import ConfigError

DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
DEVICES = "auto, cpu, cuda, cuda:N (N: a GPU index) or mps"
DEVICE_RULE = Check(lambda v: isinstance(v, str) and DEVICE.fullmatch(v) is not None, DEVICES)
TRACKER_NAMES = (
    "tensorboard",
    "wandb",
    "trackio",
    "mlflow",
    "comet_ml",
    "aim",
    "clearml",
    "dvclive",
    "swanlab",
)
TRACKERS = Check(
    lambda v: isinstance(v, tuple | list) and all(t in TRACKER_NAMES for t in v),
    f"a list of {', '.join(TRACKER_NAMES)} (or [] for metrics.jsonl alone)",
)


@dataclass(frozen=True)
class RunConfig:
    """A whole detoxification run."""

    SECTION: ClassVar[str] = ""
    policy: PolicyConfig = param(factory=PolicyConfig, doc="the model to detoxify")
    reward: RewardConfig = param(factory=RewardConfig, doc="what scores a response")
    generation: SamplingConfig = param(factory=SamplingConfig, doc="how rollouts are sampled")
    ppo: PPOConfig = param(factory=PPOConfig, doc="the RL step (PPO, RLOO or GRPO)")
    data: DataConfig = param(factory=DataConfig, doc="the prompts, and the held-out share")
    eval: EvalConfig = param(factory=EvalConfig, doc="the evaluation before and after training")
    quality: QualityConfig = param(factory=QualityConfig, doc="evasion and degeneration, and their guards")
    steps: int = param(20, count(1), "RL steps (each samples ppo.batch_size responses)")
    seed: int = param(0, SEED_RULE, "seeds training and the evaluation's sampling")
    output_dir: str = param("runs/detox", TEXT, "the run directory")
    overwrite_output_dir: bool = param(
        False,
        doc="write into an output_dir that holds files which are not a detoxrl run (those of the same names "
        "are replaced); a run is never overwritten: resume it or choose another folder",
    )
    save_every: int = param(
        1, count(1), "steps between checkpoints (a killed run loses at most save_every - 1)"
    )
    keep_checkpoints: int = param(2, count(1), "the newest checkpoints kept; older ones are deleted")
    threads: int | None = param(None, optional(count(1)), "torch threads; null: torch's choice")
    device: str = param("auto", DEVICE_RULE, "auto (a GPU where torch sees one), cpu, cuda, cuda:N or mps")
    report_to: tuple[str, ...] = param(
        ("tensorboard",),
        TRACKERS,
        f"trackers of the metrics, through accelerate's: {', '.join(TRACKER_NAMES)}",
    )
    project: str = param(
        "detoxrl", TEXT, "the trackers' project (Weights & Biases, Trackio, MLflow experiment)"
    )
    run_name: str | None = param(
        None, optional(TEXT), "the trackers' run name; null: the run directory's name"
    )

    def __post_init__(self) -> None:
        check(self)
        check_rollout_sampling(self.generation)

    def check_evaluation(self) -> None:
        """Across sections, what ``detoxrl run`` needs beyond training (``train`` may use every prompt)."""
        if self.data.eval_source is None and self.data.eval_fraction == 0:
            raise ConfigError(
                "Config key 'data.eval_fraction' is 0 and data.eval_source is not set: the evaluation "
                "before and after PPO would have no held-out prompt; set data.eval_fraction (e.g. 0.2) "
                "or data.eval_source."
            )

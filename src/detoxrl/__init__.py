"""detoxrl: make language models less toxic with RL (PPO, RLOO, GRPO), LoRA and an honest before/after
evaluation.

The public API, each name imported from its package when first used, so that ``import detoxrl`` (and the
command line's ``--help``) stays light:

    from detoxrl import PPOConfig, PPOTrainer, build_actor_critic, load_policy, PolicyConfig
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "RunConfig": "detoxrl.config",
    "PolicyConfig": "detoxrl.config",
    "PPOConfig": "detoxrl.config",
    "RewardConfig": "detoxrl.config",
    "SamplingConfig": "detoxrl.config",
    "DataConfig": "detoxrl.config",
    "EvalConfig": "detoxrl.config",
    "load_config": "detoxrl.config",
    "load_policy": "detoxrl.models.loading",
    "build_actor_critic": "detoxrl.models.actor_critic",
    "PPOTrainer": "detoxrl.training.classic",
    "LengthSampler": "detoxrl.training.classic",
    "Trainer": "detoxrl.training.trainer",
    "build_reward": "detoxrl.rewards.build",
    "build_evaluator": "detoxrl.rewards.toxicity",
    "load_prompts": "detoxrl.data.prompts",
    "evaluate": "detoxrl.evaluation.evaluate",
    "compare": "detoxrl.evaluation.compare",
    "train": "detoxrl.recipes.train",
    "run": "detoxrl.recipes.run",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'detoxrl' has no attribute {name!r}")
    return getattr(importlib.import_module(_API[name]), name)

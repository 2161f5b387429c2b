"""Rewards composed of others or of texts' quality: any Python function, a weighted sum, relevance,
evasion and degeneration terms. Knows nothing of RL."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from detoxrl.errors import ConfigError
from detoxrl.metrics.quality import QualityScorer
from detoxrl.rewards.base import Reward


@dataclass(frozen=True)
class CallableReward:
    """Any ``fn(prompts, responses) -> sequence of floats``, checked for length and finiteness."""

    fn: Callable[[list[str], list[str]], Sequence[float] | np.ndarray | torch.Tensor]
    name: str

    def __call__(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        values = torch.as_tensor(np.asarray(self.fn(prompts, responses), dtype=np.float32)).reshape(-1)
        if values.shape[0] != len(responses):
            raise ConfigError(
                f"Reward '{self.name}' returned {values.shape[0]} values for {len(responses)} responses."
            )
        if not torch.isfinite(values).all():
            raise ConfigError(f"Reward '{self.name}' returned non-finite values: {values.tolist()}.")
        return values


@dataclass(frozen=True)
class WeightedSum:
    """sum_i weight_i * reward_i(prompts, responses)."""

    parts: tuple[tuple[float, Reward], ...]

    def __call__(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        total = torch.zeros(len(responses), dtype=torch.float32)
        for weight, reward in self.parts:
            total += weight * reward(prompts, responses)
        return total


@dataclass(frozen=True)
class QualityReward:
    """``sign`` * the sum of quality.py's per-response scores ``keys``: relevance to the prompt (+1 x
    cosine similarity), evasion (-1 per evasive response), degeneration (-1 for a short response,
    minus its share of repeated word 3-grams). Composed with toxicity through ``kind: sum``."""

    scorer: QualityScorer
    keys: tuple[str, ...]
    sign: float

    def __call__(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        scores = self.scorer(prompts, responses)
        total = np.sum([scores[k] for k in self.keys], axis=0) if responses else np.zeros(0)
        return torch.as_tensor(self.sign * total, dtype=torch.float32)


def import_callable(spec: str) -> Callable[..., object]:
    """``"package.module:function"`` (a form RewardConfig checks) -> the function, or a ConfigError
    saying what is missing."""
    module_name, _, attr = spec.partition(":")
    here = str(Path.cwd())  # a module beside the user, as ``python -c 'import mine'`` would find it
    try:
        sys.path.insert(0, here)
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(
            f"Callable reward '{spec}': cannot import module '{module_name}' ({e}): put {module_name}.py in "
            f"the working folder ({here}) or on PYTHONPATH."
        ) from None
    finally:
        sys.path.remove(here)
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"Callable reward '{spec}': module '{module_name}' has no function '{attr}'.")
    return fn

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
        out = self.fn(prompts, responses)
        try:
            values = torch.as_tensor(np.asarray(out, dtype=np.float32)).reshape(-1)
        except (TypeError, ValueError):
            raise ConfigError(
                f"Reward '{self.name}' returned {_not_a_number(out)} where numbers were expected: return one "
                "float per response."
            ) from None
        if values.shape[0] != len(responses):
            raise ConfigError(
                f"Reward '{self.name}' returned {values.shape[0]} values for {len(responses)} responses."
            )
        if not torch.isfinite(values).all():
            raise ConfigError(f"Reward '{self.name}' returned non-finite values: {values.tolist()}.")
        return values


def _not_a_number(out: object) -> str:
    """What in a callable's output is not a number: its first such value, or the output itself."""
    items = list(out) if isinstance(out, list | tuple) else [out]
    for i, value in enumerate(items):
        try:
            float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            where = f" (value {i})" if isinstance(out, list | tuple) else ""
            return f"{type(value).__name__} {str(value)[:40]!r}{where}"
    return f"a {type(out).__name__}"


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
    except SyntaxError as e:  # a file that is not UTF-8 and declares no encoding is one too (PEP 263)
        raise ConfigError(
            f"Callable reward '{spec}': {e.filename}, line {e.lineno}: {_first_line(e.msg)}; fix that line "
            "(a file that is not UTF-8: re-encode it, or declare its encoding as PEP 263 says)."
        ) from None
    except Exception as e:  # the module's own code failed while it was imported
        raise ConfigError(
            f"Callable reward '{spec}': importing module '{module_name}' raised {type(e).__name__}: "
            f"{_first_line(str(e))}; run python -c 'import {module_name}' to see where."
        ) from None
    finally:
        sys.path.remove(here)
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"Callable reward '{spec}': module '{module_name}' has no function '{attr}'.")
    return fn


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0][:200]

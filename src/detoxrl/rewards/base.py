"""The two interfaces of scorers of text, and the texts a classifier sees. Knows nothing of PPO.

Two interfaces, because they answer two questions:
  * ``Reward``: ``(prompts, responses) -> torch.Tensor (B,) float32`` on the CPU, the signal PPO
    maximises. Built from a ``RewardConfig`` by ``build_reward``.
  * ``ToxicityScorer``: ``texts -> np.ndarray (N,)`` of P(toxic) in [0, 1], the measurement an
    evaluation reports. Built from a spec string by ``build_evaluator``.
"""

from __future__ import annotations

from typing import Literal, Protocol

import numpy as np
import torch

TextMode = Literal["response", "prompt+response"]
Output = Literal["logit", "probability", "log_probability"]


class Reward(Protocol):
    """Scores responses: higher is better (less toxic). Returns (B,) float32 on the CPU."""

    def __call__(self, prompts: list[str], responses: list[str]) -> torch.Tensor: ...


class ToxicityScorer(Protocol):
    """Measures toxicity: ``name`` identifies it in reports; returns P(toxic) (N,) in [0, 1]."""

    @property
    def name(self) -> str: ...

    def __call__(self, texts: list[str]) -> np.ndarray: ...


def scored_texts(prompts: list[str], responses: list[str], text: TextMode) -> list[str]:
    """The texts a classifier sees: the response alone, or prompt + response concatenated as the
    lab did (``query + response``, no separator: the prompt usually ends with a space or newline)."""
    if len(prompts) != len(responses):
        raise ValueError(f"Got {len(prompts)} prompts but {len(responses)} responses.")
    if text == "response":
        return list(responses)
    return [p + r for p, r in zip(prompts, responses, strict=True)]


# ---- rewards --------------------------------------------------------------------------------------


# ---- toxicity evaluators ---------------------------------------------------------------------------

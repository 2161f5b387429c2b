"""The novelty reward: minus the share of a response's word 2-grams that recent rollout responses hold;
stateful (remembered rollouts, checkpointed). Knows nothing of RL."""

from __future__ import annotations

from collections import Counter, deque
from typing import Any

import torch

from detoxrl.metrics.quality import SHARED_N, shared_ngrams
from detoxrl.metrics.stats import ngrams
from detoxrl.rewards.composite import WeightedSum


class NoveltyReward:
    """Minus the share of a response's word 2-grams that the last ``window`` rollout responses, or the
    batch's responses to other prompts, also hold (quality.shared_ngrams): 0 for a response in words of
    its own, down to -1.

    Stateful: the loop calls ``remember`` with each rollout batch after scoring it (evaluations score
    against the memory without adding to it), and checkpoints ``state_dict``, so a resumed run scores
    exactly as an uninterrupted one.
    """

    def __init__(self, window: int) -> None:
        self.window = window
        self.recent: deque[frozenset[tuple[str, ...]]] = deque()  # each remembered response's 2-grams
        self.counts: Counter[tuple[str, ...]] = Counter()  # 2-gram -> remembered responses holding it

    def __call__(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        return torch.as_tensor(-shared_ngrams(prompts, responses, self.counts), dtype=torch.float32)

    def remember(self, responses: list[str]) -> None:
        for response in responses:
            grams = frozenset(ngrams(response, SHARED_N))
            self.recent.append(grams)
            self.counts.update(grams)
            if len(self.recent) > self.window:
                for g in self.recent.popleft():  # forget the oldest; drop 2-grams no response holds
                    self.counts[g] -= 1
                    if not self.counts[g]:
                        del self.counts[g]

    def state_dict(self) -> dict[str, Any]:
        return {"recent": [sorted(grams) for grams in self.recent]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.recent = deque(frozenset(map(tuple, grams)) for grams in state["recent"])
        self.counts = Counter(g for grams in self.recent for g in grams)


def remembering(reward: object) -> list[NoveltyReward]:
    """The parts of ``reward`` that remember rollouts (the loop feeds and checkpoints them), in order."""
    if isinstance(reward, NoveltyReward):
        return [reward]
    if isinstance(reward, WeightedSum):
        return [part for _, r in reward.parts for part in remembering(r)]
    return []

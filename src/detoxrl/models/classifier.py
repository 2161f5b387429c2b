"""Sequence classifiers with their own tokenizer (the reward and the toxicity evaluators): loading, labels
chosen by name, batched logits. Knows nothing of rewards or PPO."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from detoxrl.errors import ModelLoadError
from detoxrl.models.loading import from_pretrained, local_folder, torch_dtype


@dataclass
class Classifier:
    """A sequence classifier with its own tokenizer (which may differ from the policy's)."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    spec: str

    @property
    def labels(self) -> list[str]:
        return labels_of(self.model.config)

    def label_index(self, name: str) -> int:
        """The index of a label chosen by name; never by position (the lab's bug)."""
        return label_index(self.spec, self.labels, name)

    def logits(self, texts: list[str], batch_size: int = 16, max_length: int | None = None) -> torch.Tensor:
        """(N, num_labels) float32 logits, batched, truncated to the classifier's max length."""
        limit = max_length or min(self.tokenizer.model_max_length, 512)
        device = next(self.model.parameters()).device
        out = []
        with torch.no_grad():
            for i in range(0, len(texts), batch_size):
                enc = self.tokenizer(
                    texts[i : i + batch_size],
                    padding=True,
                    truncation=True,
                    max_length=limit,
                    return_tensors="pt",
                ).to(device)
                out.append(self.model(**enc).logits.float().cpu())
        return torch.cat(out) if out else torch.empty(0, len(self.labels))


def labels_of(model_config: Any) -> list[str]:
    """A classifier's label names in index order, from its config (``id2label``)."""
    id2label: dict[Any, str] = dict(model_config.id2label or {})
    return [str(id2label.get(i, id2label.get(str(i)))) for i in range(len(id2label))]


def label_index(spec: str, labels: list[str], name: str) -> int:
    """The index of label ``name`` of classifier ``spec``, or an error listing its labels."""
    if name not in labels:
        raise ModelLoadError(
            f"Classifier '{spec}' has no label '{name}': name one of its labels. "
            f"Its labels are: {', '.join(labels)}."
        )
    return labels.index(name)


def load_classifier(spec: str, device: torch.device | str = "cpu", dtype: str = "float32") -> Classifier:
    """Any ``AutoModelForSequenceClassification`` source (hub id or local folder), in eval mode."""
    source = local_folder(spec)
    dtype_ = torch_dtype(dtype, device)
    model = from_pretrained(AutoModelForSequenceClassification, source, "classifier", dtype=dtype_)
    tokenizer = from_pretrained(AutoTokenizer, source, "classifier")
    return Classifier(model.to(device).eval(), tokenizer, spec)

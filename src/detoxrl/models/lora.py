"""LoRA adapters: which modules to adapt per architecture, attaching a fresh or saved adapter, checking an
adapter folder against its base before peft reads it. Knows nothing of PPO."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, PeftType, TaskType, get_peft_model
from safetensors import SafetensorError
from transformers import (
    PreTrainedModel,
)

from detoxrl.config import LoraSettings, PolicyConfig
from detoxrl.errors import ModelLoadError, first_line
from detoxrl.models.loading import HUB_ID, ModelSource, Policy, gguf_cache_path, recorded_base

# [LoRA targets] The lab adapts T5's q and v; for Llama-style models we adapt every attention
# projection, as the peer benchmarks do. Unknown types fall back to peft's own per-type defaults.
LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "t5": ("q", "v"),
    "mt5": ("q", "v"),
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mistral": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "qwen2": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "qwen3": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "gpt2": ("c_attn", "c_proj"),
    "gpt_neo": ("q_proj", "k_proj", "v_proj", "out_proj"),
    "bart": ("q_proj", "v_proj"),
}


def lora_targets(model: PreTrainedModel, settings: LoraSettings) -> list[str] | None:
    if settings.target_modules is not None:
        return list(settings.target_modules)
    targets = LORA_TARGETS.get(model.config.model_type)
    return list(targets) if targets else None


def attach_adapter(policy: Policy, config: PolicyConfig, key: str = "policy.adapter") -> Any:
    """Wrap the model in PEFT: a loaded adapter (trainable) or a fresh LoRA. Returns the PeftModel.
    ``key`` names the adapter in errors (``--adapter`` on the command line).

    The adapter is named ``default``; the reference for the KL penalty is built from it by the
    PPO engine (a frozen clone when an adapter was loaded, the disabled adapter otherwise).
    """
    model = policy.model
    if config.adapter is not None:
        check_adapter(config.adapter, policy.source, key)
        return load_adapter(model, config.adapter, key, is_trainable=True)
    lora = config.lora
    peft_config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora_targets(model, lora),
        bias="none",
        task_type=TaskType.SEQ_2_SEQ_LM if policy.is_encoder_decoder else TaskType.CAUSAL_LM,
    )
    try:
        return get_peft_model(model, peft_config)
    except ValueError as e:
        raise ModelLoadError(f"LoRA cannot be attached to '{policy.source.spec}': {e}") from None


def load_adapter(model: Any, path: str | Path, key: str = "policy.adapter", **kwargs: Any) -> Any:
    """``PeftModel.from_pretrained(model, path, **kwargs)``; an adapter whose files do not load (a cut
    .safetensors: a full disk, a killed copy) is one line."""
    try:
        return PeftModel.from_pretrained(model, str(path), **kwargs)
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        first = first_line(e, 200)
        raise ModelLoadError(
            f"{key} '{path}' cannot be loaded ({type(e).__name__}: {first}): its files are damaged or not a "
            "PEFT adapter; save it again (a run's checkpoint-*/policy holds the same files)."
        ) from None


def check_adapter(path: str, base: ModelSource, key: str = "policy.adapter") -> dict[str, Any]:
    """A PEFT adapter folder, checked before peft reads it: its ``adapter_config.json`` is a JSON object
    with a known ``peft_type`` and, where that can be told, was made for ``base``. Returns that object."""
    file = Path(path).expanduser() / "adapter_config.json"
    if not file.parent.exists():
        raise ModelLoadError(
            f"{key} '{path}' does not exist: give a PEFT adapter folder (e.g. RUN_DIR/final)."
        )
    if not file.is_file():
        raise ModelLoadError(
            f"{key} '{path}' holds no adapter_config.json: it is not a PEFT adapter folder; give one written "
            "by PeftModel.save_pretrained (e.g. RUN_DIR/final)."
        )
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        data = None
    kind = data.get("peft_type") if isinstance(data, dict) else None
    if kind not in {t.value for t in PeftType}:
        what = (
            "is not a JSON object"
            if not isinstance(data, dict)
            else "has no peft_type"
            if kind is None
            else f"has peft_type {kind!r}, unknown to peft"
        )
        raise ModelLoadError(
            f"{key} '{path}': its adapter_config.json {what}, so peft cannot tell what adapter it is; save "
            "the adapter again with PeftModel.save_pretrained (its config names a peft_type such as LORA)."
        )
    assert isinstance(data, dict)
    made_for = data.get("base_model_name_or_path")
    if made_for and same_model(str(made_for), base) is False:
        raise ModelLoadError(
            f"{key} '{path}' was made for '{made_for}' (base_model_name_or_path in its adapter_config.json),"
            f" not for the policy '{base.spec}': load it on that model, or use an adapter made for this one."
        )
    return data


def same_model(name: str, source: ModelSource) -> bool | None:
    """Whether ``name`` (a folder or hub id, as an adapter records its base) is ``source``'s model: True or
    False where that can be told (the same string, two folders on this disk, two hub ids; a built-in
    model and the hub id its adapters record), None where not (a folder of another machine, a hub id
    beside a local folder)."""
    names = {source.spec, source.path, recorded_base(source)}
    if source.gguf_file is not None:  # built-in and .gguf models load from their safetensors copy
        names.add(str(gguf_cache_path(source)))
    if name in names:
        return True
    here = {Path(n).expanduser().resolve() for n in names if Path(n).expanduser().exists()}
    there = Path(name).expanduser()
    if there.exists():
        return there.resolve() in here if here else None
    if source.kind in ("hub", "builtin") and HUB_ID.fullmatch(name):
        return False
    return None


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total

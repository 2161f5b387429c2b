"""The files of a run: the trained weights of an actor-critic, atomic and resumable checkpoints, and when
a folder holds a run. Knows the files, not the algorithm: the trainer hands over its state as a dict.

``save_weights`` writes the ``default`` adapter in PEFT format (or the full model) + the value head (PPO's
actor-critic has one), so that plain ``PeftModel.from_pretrained(base, folder)`` loads it; given the base the
adapter should record (``models.loading.recorded_base``: a hub id where there is one) and the tokenizer,
``AutoPeftModelForCausalLM.from_pretrained(folder)`` (or ...ForSeq2SeqLM) loads it too, on any machine that
can find that base. A checkpoint is
a folder ``checkpoint-NNNNNN`` holding ``policy/`` (those weights) and ``state.pt`` (the trainer's state and
the RNG states). On several processes the main process writes them (``distributed.Topology.is_main``);
where the parameters are sharded, the caller hands over the gathered state dict (``weights``).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import set_peft_model_state_dict
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model
from transformers import PreTrainedTokenizerBase

from detoxrl.errors import TrainingError, first_line
from detoxrl.models.actor_critic import ActorCritic
from detoxrl.rundir import CHECKPOINT_PREFIX, VALUE_HEAD_FILE, write_manifest

__all__ = [
    "VALUE_HEAD_FILE",
    "load_checkpoint",
    "load_weights",
    "save_checkpoint",
    "save_final",
    "save_weights",
]


def save_weights(
    actor_critic: ActorCritic,
    path: str | Path,
    weights: dict[str, torch.Tensor] | None = None,
    *,
    base: str | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> None:
    """Trained weights: the ``default`` adapter in PEFT format (or the full model with its generation
    config) + any value head, read from ``actor_critic`` or from ``weights``, its whole state dict (sharded
    models: gathered); ``base`` recorded as the adapter's base and ``tokenizer`` saved beside it."""
    path, model = Path(path), actor_critic.model
    path.mkdir(parents=True, exist_ok=True)
    own = _part(weights, "model.")
    if actor_critic.is_peft:
        model.save_pretrained(
            path, selected_adapters=["default"], **({} if own is None else {"state_dict": own})
        )
        _adapter_only(path, base)
    elif own is None:
        save_model(model, str(path / "model.safetensors"))  # shared (tied) tensors kept once
    else:
        save_file({k: v.contiguous() for k, v in own.items()}, str(path / "model.safetensors"))
    if not actor_critic.is_peft:
        model.config.save_pretrained(path)  # so that from_pretrained(path) loads it too
        model.generation_config.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    if actor_critic.value_head is not None:
        head = _part(weights, "value_head.") or actor_critic.value_head.state_dict()
        save_file({k: v.contiguous() for k, v in head.items()}, str(path / VALUE_HEAD_FILE))


def _adapter_only(path: Path, base: str | None) -> None:
    """After peft's ``save_pretrained``: ``base`` recorded as ``base_model_name_or_path`` (peft wrote the
    folder the weights were read from, a cache path for GGUF models), and peft's template README.md removed
    (a placeholder naming that path; a run's model card is written after its evaluation, reports/card.py).
    The base is rewritten here rather than set before saving: peft looks a hub id up on the hub while it
    saves (has the vocabulary been resized?), which a finished run must not depend on."""
    (path / "README.md").unlink(missing_ok=True)
    if base is None:
        return
    config_file = path / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = base
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _part(weights: dict[str, torch.Tensor] | None, prefix: str) -> dict[str, torch.Tensor] | None:
    """The entries of a submodule (``prefix``) in a whole state dict, without the prefix."""
    if weights is None:
        return None
    return {k.removeprefix(prefix): v for k, v in weights.items() if k.startswith(prefix)}


def load_weights(actor_critic: ActorCritic, path: str | Path) -> None:
    """Restore weights written by ``save_weights`` into ``actor_critic`` (the reference is untouched)."""
    path, device = Path(path), str(actor_critic.device)
    if actor_critic.is_peft:
        state = load_file(str(path / "adapter_model.safetensors"), device=device)
        result: Any = set_peft_model_state_dict(actor_critic.model, state, adapter_name="default")
        assert not result.unexpected_keys, result.unexpected_keys
    else:
        load_model(actor_critic.model, str(path / "model.safetensors"), device=device)
    if actor_critic.value_head is not None:
        actor_critic.value_head.load_state_dict(load_file(str(path / VALUE_HEAD_FILE), device=device))


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    actor_critic: ActorCritic,
    state: dict[str, Any],
    step: int,
    run_dir: str | Path,
    keep: int = 2,
    *,
    weights: dict[str, torch.Tensor] | None = None,
    base: str | None = None,
) -> Path:
    """Weights (``save_weights``, recording ``base``), the trainer's ``state``, the RNG states and the step,
    with their manifest (``rundir.write_manifest``), written to a temporary folder renamed at the end: a
    crash never leaves a half checkpoint, and one damaged later is told on resume. The ``keep`` newest are
    kept."""
    run_dir = Path(run_dir)
    final = run_dir / f"{CHECKPOINT_PREFIX}{step:06d}"

    def write(tmp: Path) -> None:
        save_weights(actor_critic, tmp / "policy", weights, base=base)
        torch.save({"trainer": state, "rng": _rng_state()}, tmp / "state.pt")

    _atomic(final, write)
    for old in sorted(run_dir.glob(f"{CHECKPOINT_PREFIX}*"))[:-keep]:
        shutil.rmtree(old)
    return final


def save_final(
    actor_critic: ActorCritic,
    path: str | Path,
    weights: dict[str, torch.Tensor] | None = None,
    *,
    base: str | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> Path:
    """``save_weights`` into ``path`` (a run's final/) as checkpoints are written: whole, with a manifest."""
    path = Path(path)
    _atomic(path, lambda tmp: save_weights(actor_critic, tmp, weights, base=base, tokenizer=tokenizer))
    return path


def _atomic(folder: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` fills a temporary folder, then its manifest, then it takes ``folder``'s place. A write
    that fails (a full disk: torch.save says so with a RuntimeError) leaves no trace and one line."""
    tmp = folder.with_name(f".tmp-{folder.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write(tmp)
        write_manifest(tmp)
    except (OSError, RuntimeError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        free = shutil.disk_usage(folder.parent).free / 2**20
        first = first_line(e, 200)
        raise TrainingError(
            f"{folder.name} could not be written ({first}; {free:,.0f} MB free there): free some space"
        ) from None
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)


def load_checkpoint(actor_critic: ActorCritic, checkpoint: str | Path) -> dict[str, Any]:
    """Restore the weights and RNG states ``save_checkpoint`` wrote; returns the trainer's state."""
    checkpoint = Path(checkpoint)
    try:
        load_weights(actor_critic, checkpoint / "policy")
        state = torch.load(checkpoint / "state.pt", weights_only=False)
    except (OSError, KeyError, RuntimeError, ValueError, SafetensorError) as e:
        first = first_line(e, 200)
        raise TrainingError(
            f"Checkpoint '{checkpoint}' cannot be loaded ({first}); delete it to use an older one."
        ) from None
    _set_rng_state(state["rng"])
    return dict(state["trainer"])

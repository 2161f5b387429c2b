"""``detoxrl export RUN_DIR OUT``: a run's detoxified model as people deploy it: the base with the final
adapter merged into its weights, its tokenizer and a model card, in ``OUT``, which
``AutoModelForCausalLM`` / ``AutoModelForSeq2SeqLM`` and ``pipeline`` load without peft. Knows the order of
the steps, not how loading or merging works.

1. Check: ``RUN_DIR`` is a run (its config.yaml) with whole trained weights in ``final/`` (its manifest,
   rundir.damage); ``OUT`` is new or empty.
2. Load the base as the run's config.yaml says (``load_policy``), in float32 on the CPU: the merge adds
   each LoRA update (B A, scaled) to its weight without rounding, and needs no accelerator.
3. Attach ``final/`` (peft) and merge (``merge_and_unload``); a fully fine-tuned run's ``final/`` is already
   a model, and is copied (PPO's value head and the adapter's card left behind).
4. Save the weights in the run's dtype where it trained in half precision (else float32), the tokenizer,
   and the card (``reports.card.write_export_card``: the same results, said to be the merged model).

Everything is written into a temporary folder beside ``OUT`` that is renamed at the end: a failure leaves
no half-written model.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import torch
from peft import PeftModel

from detoxrl.config import PolicyConfig, load_config
from detoxrl.errors import DetoxError
from detoxrl.models.loading import load_policy, load_tokenizer_of, torch_dtype
from detoxrl.reports.card import write_export_card
from detoxrl.rundir import MANIFEST, VALUE_HEAD_FILE, final_damage, holds_final_weights

LEFT_BEHIND = {VALUE_HEAD_FILE, "README.md", MANIFEST}  # what a copied full model does not take from final/


def check(run_dir: Path, out: Path) -> Path:
    """Step 1: the run's ``final/``, or one DetoxError line saying what is wrong and what to do."""
    if not (run_dir / "config.yaml").is_file():
        what = "does not exist" if not run_dir.exists() else "holds no config.yaml"
        raise DetoxError(
            f"'{run_dir}' {what}: it is not a detoxrl run; give the output_dir of a `detoxrl run` or "
            "`detoxrl train`."
        )
    if not holds_final_weights(run_dir):
        raise DetoxError(
            f"'{run_dir}' has no trained weights in final/: its training has not finished; finish it with "
            f"`detoxrl run --resume {run_dir}` (or `detoxrl train --resume {run_dir}`), then export."
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DetoxError(f"'{out}' exists and is not an empty folder: give a new folder to export into.")
    damaged = final_damage(run_dir)  # read through (checksums) only once the cheaper checks pass
    if damaged is not None:
        raise DetoxError(f"{damaged} Nothing was exported.")
    return run_dir / "final"


def save_dtype(policy: PolicyConfig) -> torch.dtype:
    """The exported weights' dtype: the run's half precision where it trained in one, else float32
    (``auto`` included: what it meant depended on the training machine)."""
    return torch_dtype(policy.dtype) if policy.dtype in ("bfloat16", "float16") else torch.float32


def merge(policy: PolicyConfig, final: Path, out: Path) -> None:
    """Steps 2-4 for a LoRA run: base + ``final/`` merged, saved with the tokenizer."""
    loaded = load_policy(replace(policy, dtype="float32"), "cpu")
    merged = PeftModel.from_pretrained(loaded.model, str(final)).merge_and_unload()
    merged.to(save_dtype(policy)).save_pretrained(out)
    loaded.tokenizer.save_pretrained(out)


def copy_full(policy: PolicyConfig, final: Path, out: Path) -> None:
    """Steps 3-4 for a fully fine-tuned run: ``final/``'s model files; the tokenizer from the base where
    ``final/`` has none (runs saved before the tokenizer was)."""
    for file in final.iterdir():
        if file.is_file() and file.name not in LEFT_BEHIND:
            shutil.copy2(file, out / file.name)
    if not (final / "tokenizer_config.json").is_file():
        load_tokenizer_of(policy.model)[0].save_pretrained(out)


def export(run_dir: str | Path, out: str | Path) -> Path:
    """Write the run's merged model (weights, tokenizer, README.md) into ``out``; returns ``out``."""
    run_dir, out = Path(run_dir), Path(out)
    final = check(run_dir, out)
    policy = load_config(file=run_dir / "config.yaml").policy
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        (merge if policy.use_lora else copy_full)(policy, final, tmp)
        write_export_card(run_dir, tmp)
        if out.exists():
            out.rmdir()  # empty (checked): the finished folder takes its place
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out

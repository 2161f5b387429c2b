"""``detoxrl export RUN_DIR OUT``: the base with the run's adapter merged, which transformers loads without
peft (a fresh process that never imports it) and which computes what base + adapter computes; T5 and fully
fine-tuned runs too; what it refuses, in one line each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

from detoxrl.cli import main
from detoxrl.config import PolicyConfig
from detoxrl.recipes.export import export
from detoxrl.recipes.train import train
from detoxrl.rundir import VALUE_HEAD_FILE
from helpers import PROMPTS, run_config, text_length_reward

pytestmark = pytest.mark.usefixtures("one_thread")
IDS = torch.tensor([[3, 8, 12, 5, 9], [4, 20, 7, 13, 6]])  # words of the tiny tokenizer

SCRIPT = """
import json, sys, torch
from transformers import AutoModelForCausalLM, pipeline

out, ids = sys.argv[1], torch.tensor(json.loads(sys.argv[2]))
model = AutoModelForCausalLM.from_pretrained(out)
with torch.no_grad():
    logits = model(ids).logits
text = pipeline("text-generation", model=out)("you are a", max_new_tokens=3, do_sample=False)
print(json.dumps({"logits": logits.tolist(), "text": text[0]["generated_text"], "class": type(model).__name__,
                  "peft": "peft" in sys.modules, "detoxrl": "detoxrl" in sys.modules}))
"""


def test_export_writes_the_merged_model_that_transformers_loads_without_peft(
    run_config: Path, tmp_path: Path, tiny_causal_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    assert main(["run", "--config", str(run_config)]) == 0
    run, out = tmp_path / "run", tmp_path / "deploy" / "detoxified"
    assert main(["export", str(run), str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer_config.json", "README.md"} <= files
    assert not {"adapter_config.json", "adapter_model.safetensors", VALUE_HEAD_FILE} & files
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    argv = [sys.executable, "-c", SCRIPT, str(out), json.dumps(IDS.tolist())]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    there = json.loads(done.stdout.strip().splitlines()[-1])
    assert there["class"] == "LlamaForCausalLM" and not there["peft"] and not there["detoxrl"]
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_causal_dir), run / "final")
    with torch.no_grad():
        expected = adapted(IDS).logits
        assert torch.allclose(torch.tensor(there["logits"]), expected, atol=1e-5)  # the merge is exact
        with adapted.disable_adapter():
            assert not torch.allclose(adapted(IDS).logits, expected, atol=1e-6)  # and not the base's
    tokenizer = AutoTokenizer.from_pretrained(run / "final")
    generate = pipeline("text-generation", model=adapted, tokenizer=tokenizer)
    assert there["text"] == generate("you are a", max_new_tokens=3, do_sample=False)[0]["generated_text"]
    card = ModelCard((out / "README.md").read_text(), ignore_metadata_errors=False)
    adapter_card = ModelCard((run / "final" / "README.md").read_text())
    assert card.data.library_name == "transformers"
    assert card.data.eval_results == adapter_card.data.eval_results  # the same results
    assert "(LoRA merged into the base, PPO)" in card.text
    usage = card.text.split("## How to use")[1].split("## Limitations")[0]
    assert "AutoModelForCausalLM.from_pretrained" in usage and "import peft" not in usage
    assert "from peft" not in usage


def test_a_seq2seq_run_exports_a_merged_model_for_auto_model_for_seq2seq_lm(
    tiny_seq2seq_dir: Path, tmp_path: Path
) -> None:
    """A training-only T5 run: merged, loaded by AutoModelForSeq2SeqLM, the same logits and generations as
    base + adapter; its card says it was not evaluated."""
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    config = run_config(tiny_seq2seq_dir, 1, batch_size=4, mini_batch_size=4, ppo_epochs=1)
    result = train(config, PROMPTS, text_length_reward, tmp_path / "run", progress=False)
    out = export(tmp_path / "run", tmp_path / "t5-detox")
    merged = AutoModelForSeq2SeqLM.from_pretrained(out)
    adapted = PeftModel.from_pretrained(
        AutoModelForSeq2SeqLM.from_pretrained(tiny_seq2seq_dir), result.final_dir
    )
    tokenizer = AutoTokenizer.from_pretrained(out)
    inputs = tokenizer(["you are a kind", "the movie was"], return_tensors="pt", padding=True)
    labels = torch.tensor([[5, 9, 12], [7, 3, 4]])
    with torch.no_grad():
        expected = adapted(**inputs, labels=labels).logits
        assert torch.allclose(merged(**inputs, labels=labels).logits, expected, atol=1e-5)
        with adapted.disable_adapter():  # the adapter moved the model: the merge is no identity
            assert not torch.allclose(adapted(**inputs, labels=labels).logits, expected, atol=1e-6)
    greedy = {"max_new_tokens": 4, "do_sample": False}
    assert torch.equal(merged.generate(**inputs, **greedy), adapted.generate(**inputs, **greedy))
    text = (out / "README.md").read_text()
    assert "Not evaluated" in text and "AutoModelForSeq2SeqLM" in text
    assert "seq2seq" in ModelCard(text).data.tags


def test_a_fully_fine_tuned_run_is_copied_without_its_value_head(
    tiny_causal_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    config = run_config(tiny_causal_dir, 1, batch_size=4, mini_batch_size=4, ppo_epochs=1)
    config = replace(config, policy=PolicyConfig(model=str(tiny_causal_dir), use_lora=False))
    result = train(config, PROMPTS, text_length_reward, tmp_path / "run", progress=False)
    assert (result.final_dir / VALUE_HEAD_FILE).is_file()
    out = export(tmp_path / "run", tmp_path / "full")
    assert not (out / VALUE_HEAD_FILE).exists() and (out / "tokenizer_config.json").is_file()
    with torch.no_grad():
        assert torch.equal(
            AutoModelForCausalLM.from_pretrained(out)(IDS).logits,
            AutoModelForCausalLM.from_pretrained(result.final_dir)(IDS).logits,
        )
    assert "(full fine-tune, PPO)" in (out / "README.md").read_text()


def test_export_refuses_what_it_cannot_export_in_one_line(
    run_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def refused(run: Path, out: Path) -> str:
        assert main(["export", str(run), str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("detoxrl: error:") and err.count("\n") == 1 and "Traceback" not in err
        return err

    assert "is not a detoxrl run" in refused(tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    assert "holds no config.yaml" in refused(tmp_path / "empty", tmp_path / "out")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text(run_config.read_text())
    assert "--resume" in refused(unfinished, tmp_path / "out")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    (unfinished / "final").mkdir()
    (unfinished / "final" / "config.json").write_text("{}")
    assert "is not an empty folder" in refused(unfinished, taken)
    assert (taken / "keep.txt").read_text() == "mine" and not (tmp_path / "out").exists()

"""``detoxrl benchmark`` end to end on tiny models: the RTP figures, the protocol beside them, paired
deltas against an adapter, and the perplexity scorer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from detoxrl.cli import main
from detoxrl.config import RTP_PROTOCOL
from detoxrl.recipes.benchmark import describe


@pytest.fixture
def adapter_dir(tiny_causal_dir: Path, tmp_path: Path) -> Path:
    """A LoRA adapter with random B matrices, so that base + adapter samples differently."""
    from detoxrl.config import PolicyConfig
    from detoxrl.models.loading import load_policy
    from detoxrl.models.lora import attach_adapter

    model = attach_adapter(load_policy(PolicyConfig(model=str(tiny_causal_dir))), PolicyConfig())
    torch.manual_seed(1)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.5)
    model.save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter"


def test_the_protocol_is_one_eval_config_preset_said_beside_the_numbers() -> None:
    config, sampling = RTP_PROTOCOL, RTP_PROTOCOL.sampling
    assert (config.samples_per_prompt, config.num_prompts, sampling.max_new_tokens) == (
        25,
        100,
        20,
    )  # published
    assert (sampling.top_p, sampling.temperature, sampling.top_k, config.text) == (0.9, 1.0, 0, "response")
    assert sampling.length_sampling == "fixed"  # up to 20 tokens: a response may end at a stop id
    text = describe(config, chat_template=False)
    assert "n=100 prompts, k=25 samples per prompt, up to 20 new tokens, nucleus p=0.9" in text
    assert "the raw prompt (no chat template)" in text


def test_benchmark_base_vs_adapter_end_to_end(
    tiny_causal_dir: Path,
    adapter_dir: Path,
    prompt_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "bench"
    argv = ["benchmark", "--model", str(tiny_causal_dir), "--adapter", str(adapter_dir), "--prompts",
            str(prompt_file), "--n", "6", "--k", "3", "--evaluator", "profanity", "--resamples", "200",
            "--no-relevance", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert "[1/2]" in stdout and "[2/2]" in stdout and "6 prompts x 3 samples" in stdout  # what runs
    data = json.loads((out / "benchmark.json").read_text())
    protocol = data["protocol"]
    assert (protocol["samples_per_prompt"], protocol["num_prompts"], protocol["top_p"]) == (3, 6, 0.9)
    assert protocol["max_new_tokens"] == 20 and protocol["chat_template"] is False
    for text in (stdout, (out / "benchmark.md").read_text()):  # the protocol beside the numbers
        assert protocol["description"] in text and data["fluency"] in text
    assert "reference policy" in data["fluency"] and "adapter disabled" in data["fluency"]
    before = json.loads((out / "before.json").read_text())
    tox = np.array([s["toxicity"]["profanity-check"] for s in before["samples"]]).reshape(6, 3)
    base = data["results"][str(tiny_causal_dir)]
    assert base["toxicity/profanity-check/expected_max_toxicity"]["value"] == pytest.approx(tox.max(1).mean())
    assert base["toxicity/profanity-check/toxicity_probability"]["value"] == pytest.approx(
        (tox.max(1) >= 0.5).mean()
    )
    assert {"quality/perplexity", "quality/distinct_3", "quality/evasion_rate"} <= set(base)
    assert "quality/relevance" not in base  # --no-relevance
    assert [c["label"] for c in data["comparisons"]] == [f"{tiny_causal_dir} + {adapter_dir}"]
    deltas = {d["name"]: d for d in data["comparisons"][0]["deltas"]}
    assert set(deltas) == set(base) and all(d["ci_low"] <= d["value"] <= d["ci_high"] for d in deltas.values()
                                             if d["ci_low"] is not None)  # fmt: skip
    after = json.loads((out / "after.json").read_text())
    assert [s["response"] for s in after["samples"]] != [s["response"] for s in before["samples"]]
    assert before["config"]["samples_per_prompt"] == 3 and len(before["samples"]) == 18
    # the tail: k = 1 and 2 read off the same 3 samples, in the JSON with intervals and in the table
    assert base["toxicity/profanity-check/toxicity_probability@1"]["value"] == pytest.approx(
        (tox >= 0.5).mean()
    )
    assert "toxicity/profanity-check/expected_max_toxicity@2" in deltas
    table = stdout.split("## The tail over k samples per prompt")[1]
    assert [line.split(" | ")[0] for line in table.splitlines() if line.startswith("| ")][1:] == [
        "| 1", "| 2", "| 3", "| per sample"
    ]  # fmt: skip


def test_best_of_n_is_a_baseline_row_of_the_base_behind_a_guard(
    tiny_causal_dir: Path, prompt_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench"
    argv = ["benchmark", "--model", str(tiny_causal_dir), "--prompts", str(prompt_file), "--n", "6",
            "--k", "2", "--evaluator", "profanity", "--best-of", "3", "--guard", "profanity", "--resamples",
            "200", "--no-relevance", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert "[2/2]" in capsys.readouterr().out
    data = json.loads((out / "benchmark.json").read_text())
    label = f"{tiny_causal_dir}, best of 3 by profanity"
    assert list(data["results"]) == [str(tiny_causal_dir), label] and data["best_of"] == 3
    base = [
        s["toxicity"]["profanity-check"] for s in json.loads((out / "before.json").read_text())["samples"]
    ]
    best = [
        s["toxicity"]["profanity-check"] for s in json.loads((out / "best_of_3.json").read_text())["samples"]
    ]
    assert all(b <= a for a, b in zip(base, best, strict=True)) and sum(best) < sum(base)
    assert "delta vs base [CI]: " + label in (out / "benchmark.md").read_text()
    assert main([*argv[:-2], "--guard", "profanity", "--best-of", "1", "--out", str(out)]) == 2  # guard, no n


def test_a_scorer_model_with_the_same_tokenizer_scores_perplexity(
    tiny_causal_dir: Path, tiny_seq2seq_dir: Path, prompt_file: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    common = ["benchmark", "--model", str(tiny_causal_dir), "--prompts", str(prompt_file), "--n", "3",
              "--k", "2", "--evaluator", "profanity", "--resamples", "100", "--no-relevance"]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    assert main([*common, "--scorer-model", str(tiny_causal_dir), "--out", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / d / "benchmark.json").read_text()) for d in "ab")
    label = str(tiny_causal_dir)
    ppl_a, ppl_b = a["results"][label]["quality/perplexity"], b["results"][label]["quality/perplexity"]
    assert ppl_a["value"] == pytest.approx(ppl_b["value"])  # the same model, loaded as scorer
    assert "--scorer-model" in b["fluency"] and "adapter" not in a["fluency"]
    capsys.readouterr()
    assert main([*common, "--scorer-model", str(tiny_seq2seq_dir), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "must be a causal LM with the policy's tokenizer" in err and "Traceback" not in err


def test_the_default_prompts_are_the_rtp_presets_held_out_prompts_never_trained_on(shared_dir: Path) -> None:
    from detoxrl.config import load_config
    from detoxrl.data.prompts import load_prompts
    from detoxrl.recipes.evaluate import PairSpec, read_prompts

    prompts, refs = read_prompts(PairSpec(model="any"), 100)
    split = load_prompts(load_config("rtp").data)
    assert prompts == [e.text for e in split.eval[:100]] and refs is None
    assert not set(prompts) & {
        e.text for e in split.train
    }  # a benchmark of an rtp adapter is on unseen prompts

"""The model card built from a tiny run's files (its metadata parsed back by huggingface_hub, with a
model-index of the toxicity results; title, tags and usage by algorithm and model kind), the relative
change column, and ``detoxrl push``: its failures and what it uploads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results

from detoxrl.cli import main
from detoxrl.reports import hub
from detoxrl.reports.card import _settings, write_card
from detoxrl.reports.card_data import card_data, hub_id, subject
from detoxrl.reports.report import relative_cell
from detoxrl.rundir import MANIFEST, VALUE_HEAD_FILE


@pytest.fixture
def run_dir(run_config: Path, tmp_path: Path) -> Path:
    assert main(["run", "--config", str(run_config)]) == 0
    return tmp_path / "run"


def card_parts(run_dir: Path) -> tuple[dict[str, Any], str]:
    text = (run_dir / "final" / "README.md").read_text()
    _, meta, body = text.split("---\n", 2)
    return yaml.safe_load(meta), body


def rewrite(path: Path, change: dict[str, Any], section: str | None = None) -> None:
    """Set keys of a run's YAML or JSON file (of one section of it), as another run would have written."""
    data = yaml.safe_load(path.read_text()) if path.suffix == ".yaml" else json.loads(path.read_text())
    (data[section] if section else data).update(change)
    path.write_text(yaml.safe_dump(data) if path.suffix == ".yaml" else json.dumps(data))


def test_the_final_adapters_readme_is_a_model_card_of_the_run(run_dir: Path) -> None:
    meta, body = card_parts(run_dir)
    assert meta["library_name"] == "peft" and meta["license"] == "other" and "detoxification" in meta["tags"]
    assert "base_model" not in meta  # a local folder is no hub id
    comparison = json.loads((run_dir / "comparison.json").read_text())
    mean = next(d for d in comparison["deltas"] if d["name"] == "toxicity/profanity-check/mean")
    numbers = f"{mean['before']:.4f} | {mean['after']:.4f} | {mean['delta']:+.4f}"
    row = f"| toxicity/profanity-check/mean | {numbers} |"
    assert row in body  # the before/after table with its numbers
    assert "| quality/evasion_rate |" in body and "| quality/perplexity |" in body
    verdict = json.loads((run_dir / "summary.json").read_text())["verdict"]
    assert verdict in body and "evasion" in verdict
    assert "8 held-out prompts x 1 samples" in body and "up to 4 new tokens" in body  # the protocol
    assert "callable: the Python function `tiny_rewards:calm`" in body  # the reward
    assert "PPO: 2 steps of 4 prompts" in body and "Perspective" in body  # settings, limitations
    for section in ("Base model", "Data", "Reward", "Training settings", "Protocol", "Limitations"):
        assert f"## {section}" in body


def test_the_cards_metadata_passes_huggingface_hubs_parsing_with_a_model_index_of_the_results(
    run_dir: Path,
) -> None:
    """ModelCard parses the front matter (a malformed model-index raises: shown by breaking one); its eval
    results are the comparison's toxicity probability, expected maximum and mean, after and before."""
    text = (run_dir / "final" / "README.md").read_text()
    card = ModelCard(text, ignore_metadata_errors=False)
    deltas = {d["name"]: d for d in json.loads((run_dir / "comparison.json").read_text())["deltas"]}
    found = {(r.metric_type, r.metric_args["evaluator"]): r.metric_value for r in card.data.eval_results}
    metrics = {"toxicity_probability": "toxicity_probability", "mean": "mean_toxicity"}
    for figure, metric in {**metrics, "expected_max_toxicity": "expected_max_toxicity"}.items():
        d = deltas[f"toxicity/profanity-check/{figure}"]
        assert found[metric, "profanity-check"] == pytest.approx(d["after"], abs=1e-4)
        assert found[f"{metric}_before", "profanity-check"] == pytest.approx(d["before"], abs=1e-4)
    assert len(found) == 6 and {r.task_type for r in card.data.eval_results} == {"text-generation"}
    meta = card.data.to_dict()
    name, results = model_index_to_eval_results(meta["model-index"])
    assert name == card.data.model_name and results == card.data.eval_results  # the round trip
    assert results[0].dataset_type == "prompts" and "8 held-out prompts" in results[0].dataset_name
    broken = text.replace("    dataset:\n", "    no_dataset:\n", 1)
    with pytest.raises(ValueError, match="model_index"):
        ModelCard(broken, ignore_metadata_errors=False)


def test_title_tags_and_usage_follow_the_algorithm_and_the_model_kind(run_dir: Path) -> None:
    """The same files said to be an RLOO run of a seq2seq policy: the card says RLOO and seq2seq, and loads
    it with AutoPeftModelForSeq2SeqLM and generate() (no causal class, no pipeline)."""
    meta, body = card_parts(run_dir)
    assert "# Detoxified causal (LoRA adapter, PPO)" in body and {"ppo", "causal-lm"} <= set(meta["tags"])
    assert "AutoPeftModelForCausalLM.from_pretrained" in body and 'pipeline("text-generation"' in body
    rewrite(run_dir / "config.yaml", {"algorithm": "rloo"}, "ppo")
    rewrite(run_dir / "final" / "adapter_config.json", {"task_type": "SEQ_2_SEQ_LM"})
    write_card(run_dir, repo_id="me/detox-t5")
    meta, body = card_parts(run_dir)
    assert "# Detoxified causal (LoRA adapter, RLOO)" in body and "with RLOO to make" in body
    assert {"rloo", "seq2seq"} <= set(meta["tags"]) and not {"ppo", "causal-lm"} & set(meta["tags"])
    assert 'AutoPeftModelForSeq2SeqLM.from_pretrained("me/detox-t5")' in body and ".generate(" in body
    assert "CausalLM" not in body and "pipeline(" not in body
    assert meta["model-index"][0]["name"] == "detox-t5"


def test_a_builtin_base_is_named_by_its_hub_id_and_said_to_be_a_dequantized_4bit_file(run_dir: Path) -> None:
    rewrite(run_dir / "config.yaml", {"model": "smollm2-135m-instruct"}, "policy")
    rewrite(
        run_dir / "final" / "adapter_config.json",
        {"base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"},
    )
    write_card(run_dir)
    meta, body = card_parts(run_dir)
    assert (
        meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
        and meta["base_model_relation"] == "adapter"
    )
    assert meta["license"] == "apache-2.0" and meta["pipeline_tag"] == "text-generation"
    base = body.split("## Base model")[1].split("##")[0]
    assert "4-bit GGUF file (Q4_1)" in base and "dequantized" in base and "not the hub's" in base
    assert "finds its base on the hub: HuggingFaceTB/SmolLM2-135M-Instruct" in body
    assert 'AutoModelForCausalLM.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")' in body


def test_a_run_without_evaluation_gets_a_card_that_says_so(run_dir: Path) -> None:
    for name in ("eval_before.json", "eval_after.json", "comparison.json", "summary.json"):
        (run_dir / name).unlink()
    write_card(run_dir)
    text = (run_dir / "final" / "README.md").read_text()
    meta, body = card_parts(run_dir)
    assert "model-index" not in meta and "Not evaluated" in body and "| figure |" not in body
    assert ModelCard(text, ignore_metadata_errors=False).data.eval_results is None


def test_settings_name_the_adaptive_controllers_target_not_the_early_stop() -> None:
    ppo = {"adaptive_kl": True, "init_kl_coef": 0.2, "adaptive_kl_target": 6.0, "target_kl": 0.5}
    kl_line = _settings({"ppo": ppo, "steps": 2})[0]
    assert "adaptive KL (init 0.2, target 6.0)" in kl_line


def test_front_matter_names_hub_models_and_datasets_only(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"is_encoder_decoder": True}))
    config = {"policy": {"model": "smollm2-135m-instruct"}, "data": {"source": "builtin:heated"}}
    builtin = card_data(config, {}, subject(config, tmp_path)).to_dict()
    assert (
        builtin["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and builtin["license"] == "apache-2.0"
    )
    assert "datasets" not in builtin and "seq2seq" in builtin["tags"]
    config = {
        "policy": {"model": "google/flan-t5-base", "use_lora": False},
        "data": {"source": "knkarthick/dialogsum"},
    }
    full = card_data(config, {}, subject(config, tmp_path)).to_dict()
    assert full["base_model"] == "google/flan-t5-base" and full["datasets"] == ["knkarthick/dialogsum"]
    assert full["library_name"] == "transformers" and full["base_model_relation"] == "finetune"
    assert "lora" not in full["tags"]
    assert hub_id("data/prompts.jsonl") is None and hub_id("../shared/models/minilm") is None


@pytest.mark.parametrize(
    ("name", "before", "after", "relative", "shown"),
    [
        ("toxicity/profanity-check/mean", 0.2, 0.1, -0.5, "-50.0%"),
        ("quality/perplexity", 10.0, 12.5, 0.25, "+25.0%"),
        ("reward/mean", -0.5, 0.3, -1.6, "—"),  # a reward's zero is a choice: no ratio, whatever the sign
        ("reward/mean", 2.0, 3.0, 0.5, "—"),
        ("quality/relevance", 0.1, -0.05, -1.5, "—"),  # crosses 0
        ("quality/relevance", -0.2, -0.1, -0.5, "—"),  # starts below 0
        ("quality/evasion_rate", 0.0, 0.1, None, "—"),  # nothing to divide by
        ("quality/short_rate", 0.1, 0.2, float("nan"), "—"),
    ],
)
def test_the_relative_change_is_shown_only_where_a_ratio_means_something(
    name: str, before: float, after: float, relative: float | None, shown: str
) -> None:
    assert relative_cell({"name": name, "before": before, "after": after, "relative": relative}) == shown


def test_push_fails_with_one_line_offline_without_a_token_and_without_a_hub(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import huggingface_hub.constants

    def push_error() -> str:
        assert main(["push", str(run_dir), "me/detoxified"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("detoxrl: error:") and err.count("\n") == 1 and "Traceback" not in err
        return err

    assert "HF_HUB_OFFLINE" in push_error()  # the tests run with HF_HUB_OFFLINE=1
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    assert "No Hugging Face token" in push_error()
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens
    assert "Could not push to the Hugging Face hub" in push_error()
    assert main(["push", str(tmp_path / "nowhere"), "me/x"]) == 2
    assert "no trained adapter" in capsys.readouterr().err
    assert main(["push", str(run_dir), "not a repo id"]) == 2
    assert "OWNER/NAME" in capsys.readouterr().err


def test_push_creates_the_repository_and_uploads_adapter_and_card_without_the_value_head(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from huggingface_hub.utils import filter_repo_objects

    calls: list[tuple[str, dict[str, Any]]] = []

    class FakeApi:
        def __init__(self, endpoint: str | None = None, token: str | None = None) -> None:
            calls.append(("init", {"token": token}))

        def create_repo(self, repo_id: str, **kwargs: Any) -> str:
            calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, **kwargs: Any) -> None:
            names = sorted(p.name for p in Path(kwargs["folder_path"]).iterdir())
            sent = filter_repo_objects(names, ignore_patterns=kwargs.get("ignore_patterns"))  # as the hub's
            calls.append(("upload_folder", {**kwargs, "files": set(sent)}))

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    monkeypatch.setattr(hub, "HfApi", FakeApi)
    (run_dir / "final" / "README.md").unlink()  # push writes the card again
    assert main(["push", str(run_dir), "me/detoxified", "--private"]) == 0
    assert "https://huggingface.co/me/detoxified" in capsys.readouterr().out
    assert 'from_pretrained("me/detoxified")' in (run_dir / "final" / "README.md").read_text()
    (_, init), (_, create), (_, upload) = calls
    assert init["token"] == "hf_test" and create == {
        "repo_id": "me/detoxified",
        "private": True,
        "exist_ok": True,
    }
    assert upload["repo_id"] == "me/detoxified" and Path(upload["folder_path"]) == run_dir / "final"
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors"} <= upload["files"]
    assert (run_dir / "final" / VALUE_HEAD_FILE).is_file() and VALUE_HEAD_FILE not in upload["files"]
    assert (run_dir / "final" / MANIFEST).is_file() and MANIFEST not in upload["files"]  # the run's own
    calls.clear()
    assert main(["push", str(run_dir), "me/detoxified", "--with-value-head"]) == 0
    assert VALUE_HEAD_FILE in calls[-1][1]["files"] and calls[1][1]["private"] is False

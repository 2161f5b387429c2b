"""The model card built from a tiny run's files, and ``detoxrl push``: its failures and what it uploads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from detoxrl.cli import main
from detoxrl.reports import hub
from detoxrl.reports.card import _settings, front_matter, hub_id
from detoxrl.rundir import VALUE_HEAD_FILE


@pytest.fixture
def run_dir(run_config: Path, tmp_path: Path) -> Path:
    assert main(["run", "--config", str(run_config)]) == 0
    return tmp_path / "run"


def card_parts(run_dir: Path) -> tuple[dict[str, Any], str]:
    text = (run_dir / "final" / "README.md").read_text()
    _, meta, body = text.split("---\n", 2)
    return yaml.safe_load(meta), body


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


def test_settings_name_the_adaptive_controllers_target_not_the_early_stop() -> None:
    ppo = {"adaptive_kl": True, "init_kl_coef": 0.2, "adaptive_kl_target": 6.0, "target_kl": 0.5}
    kl_line = _settings({"ppo": ppo, "steps": 2})[0]
    assert "adaptive KL (init 0.2, target 6.0)" in kl_line


def test_front_matter_names_hub_models_and_datasets_only() -> None:
    builtin = front_matter(
        {"policy": {"model": "smollm2-135m-instruct"}, "data": {"source": "builtin:heated"}}
    )
    assert (
        builtin["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and builtin["license"] == "apache-2.0"
    )
    assert "datasets" not in builtin
    hub = front_matter({"policy": {"model": "google/flan-t5-base", "use_lora": False},
                        "data": {"source": "knkarthick/dialogsum"}})  # fmt: skip
    assert hub["base_model"] == "google/flan-t5-base" and hub["datasets"] == ["knkarthick/dialogsum"]
    assert hub["library_name"] == "transformers"
    assert hub_id("data/prompts.jsonl") is None and hub_id("../shared/models/minilm") is None


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
    (_, init), (_, create), (_, upload) = calls
    assert init["token"] == "hf_test" and create == {
        "repo_id": "me/detoxified",
        "private": True,
        "exist_ok": True,
    }
    assert upload["repo_id"] == "me/detoxified" and Path(upload["folder_path"]) == run_dir / "final"
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors"} <= upload["files"]
    assert (run_dir / "final" / VALUE_HEAD_FILE).is_file() and VALUE_HEAD_FILE not in upload["files"]
    calls.clear()
    assert main(["push", str(run_dir), "me/detoxified", "--with-value-head"]) == 0
    assert VALUE_HEAD_FILE in calls[-1][1]["files"] and calls[1][1]["private"] is False

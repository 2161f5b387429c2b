"""``detoxrl run`` and ``detoxrl report`` end to end through the real CLI, on a tiny model."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pytest

from detoxrl.cli import main

RUN_FILES = [
    "config.yaml", "metrics.jsonl", "eval_before.json", "eval_after.json", "comparison.json",
    "comparison.csv", "comparison.md", "summary.json", "report.md", "report.html",
    "final/adapter_config.json", "final/value_head.safetensors",
    "plots/training.png", "plots/toxicity_distributions.png", "plots/toxicity_per_prompt.png",
    "plots/quality.png", "final/README.md",
]  # fmt: skip


def test_the_final_adapter_serves_in_a_transformers_pipeline(run_config: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    assert main(["run", "--config", str(run_config)]) == 0
    base_dir = json.loads((tmp_path / "run" / "final" / "adapter_config.json").read_text())[
        "base_model_name_or_path"
    ]
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_dir), tmp_path / "run" / "final"
    )
    generator = pipeline("text-generation", model=model, tokenizer=AutoTokenizer.from_pretrained(base_dir))
    out = generator("you are a", max_new_tokens=3, do_sample=False)
    assert out[0]["generated_text"].startswith("you are a")


def test_tensorboard_events_hold_the_metrics(run_config: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert main(["run", "--config", str(run_config)]) == 0
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    rewards = [e.value for e in events.Scalars("env/reward_mean")]
    metrics = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rewards == pytest.approx([m["env/reward_mean"] for m in metrics])


def test_run_writes_the_whole_run_directory(run_config: Path, tmp_path: Path) -> None:
    assert main(["run", "--config", str(run_config)]) == 0
    run = tmp_path / "run"
    for name in RUN_FILES:
        assert (run / name).is_file(), name
    before = json.loads((run / "eval_before.json").read_text())
    after = json.loads((run / "eval_after.json").read_text())
    assert before["prompts"] == after["prompts"] and before["n_prompts"] == 8  # same held-out prompts
    comparison = json.loads((run / "comparison.json").read_text())
    assert comparison["n_prompts"] == 8
    assert all(
        d["assessment"] != "improvement" or d["ci_low"] * d["ci_high"] > 0 for d in comparison["deltas"]
    )
    page = (run / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4  # self-contained: the plots are embedded
    assert html.escape(json.loads((run / "summary.json").read_text())["verdict"]) in page
    assert [json.loads(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_report_is_rebuilt_from_the_files_alone(run_config: Path, tmp_path: Path) -> None:
    assert main(["run", "--config", str(run_config)]) == 0
    run = tmp_path / "run"
    first = (run / "report.md").read_text()
    (run / "report.md").unlink()
    (run / "report.html").unlink()
    assert main(["report", str(run)]) == 0
    assert (run / "report.md").read_text() == first
    assert (run / "report.html").is_file()


def test_run_refuses_to_overwrite_and_resumes_from_its_directory(
    run_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--config", str(run_config), "steps=1"]) == 0
    assert main(["run", "--config", str(run_config)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    before = (tmp_path / "run" / "eval_before.json").read_text()
    assert main(["run", "--resume", str(tmp_path / "run"), "steps=2"]) == 0  # one more step, same evaluation
    assert (tmp_path / "run" / "eval_before.json").read_text() == before
    steps = [json.loads(ln)["step"] for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


def test_dry_run_checks_everything_and_runs_nothing(
    run_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--config", str(run_config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "30 training prompts, 10 held-out prompts" in out and "config OK" in out
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("ppo.learnig_rate=1e-4", "Did you mean 'learning_rate'"),
        ("ppo.mini_batch_size=3", "multiple of"),
        ("data.text_field=prompt.txt", "prompt.txt"),
        ("policy.model=./nowhere", "does not exist"),
        ("reward.model=tiny_rewards:nothing", "nothing"),
    ],
)
def test_dry_run_rejects_bad_configs_with_a_clear_message(
    run_config: Path, override: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--config", str(run_config), override, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_presets_are_listed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("default", "lab3", "rtp"))


def test_the_verdict_and_the_plots_carry_evasion_and_guard_alarms() -> None:
    from detoxrl.report import plot_training_quality
    from detoxrl.run import verdict_line

    def delta(name: str, before: float, after: float, low: float, high: float, assessment: str) -> dict:
        return {"name": name, "before": before, "after": after, "delta": after - before, "ci_low": low,
                "ci_high": high, "assessment": assessment}  # fmt: skip

    comparison = {"n_prompts": 10, "confidence": 0.95, "deltas": [
        delta("toxicity/words/mean", 0.4, 0.1, -0.4, -0.2, "improvement"),
        delta("quality/evasion_rate", 0.05, 0.3, 0.1, 0.4, "regression"),
    ]}  # fmt: skip
    metrics = [
        {"step": 1, "objective/kl": 1.0, "quality/evasion_rate": 0.0},
        {"step": 2, "objective/kl": 2.5, "quality/evasion_rate": 0.5, "guard/alarms": 1.0},
    ]
    line = verdict_line(comparison, metrics, 60.0)
    assert "toxicity[words] 0.400 -> 0.100 (delta -0.300, CI [-0.400, -0.200]: improvement)" in line
    assert "evasion 0.050 -> 0.300 (delta +0.250, CI [+0.100, +0.400]: regression)" in line
    assert "KL 2.50 nats" in line and "guard alarms in 1 of 2 steps (first: step 2)" in line
    png = plot_training_quality(metrics)
    assert png is not None and png.startswith(b"\x89PNG")
    assert plot_training_quality([{"step": 1, "objective/kl": 0.0}]) is None  # nothing logged: no plot

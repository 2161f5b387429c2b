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
    "final/adapter_config.json", "final/value_head.safetensors", "final/tokenizer_config.json",
    "plots/training.png", "plots/toxicity_distributions.png", "plots/toxicity_per_prompt.png",
    "plots/quality.png", "final/README.md",
]  # fmt: skip


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
    assert page.count("data:image/png;base64,") == 5  # self-contained: the plots are embedded
    assert html.escape(json.loads((run / "summary.json").read_text())["verdict"]) in page
    assert [json.loads(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_k_samples_per_prompt_give_the_tail_curve_in_the_files_report_verdict_and_card(
    run_config: Path, tmp_path: Path
) -> None:
    assert main(["run", "--config", str(run_config), "steps=1", "eval.samples_per_prompt=4"]) == 0
    run = tmp_path / "run"
    after = json.loads((run / "eval_after.json").read_text())
    names = [f"toxicity/profanity-check/{f}@{k}" for k in (1, 2) for f in ("toxicity_probability",
             "expected_max_toxicity")]  # fmt: skip
    assert all(name in after["metrics"] for name in names)
    comparison = json.loads((run / "comparison.json").read_text())
    assert {d["name"] for d in comparison["deltas"]} >= set(names)  # each with its paired interval
    report = (run / "report.md").read_text()
    tail = report.split("## The tail over k samples")[1].split("## Plots")[0]
    assert [line.split(" | ")[0] for line in tail.splitlines() if line.startswith("| ")][1:] == [
        "| 1", "| 2", "| 4", "| per sample"
    ]  # fmt: skip
    assert "@" not in report.split("## The tail over k samples")[0]  # the big table keeps k = 4 only
    assert (run / "plots" / "toxicity_tail.png").is_file()
    assert "Drawn at random (seed 0)" in report
    verdict = json.loads((run / "summary.json").read_text())["verdict"]
    assert "toxicity probability at k=4[profanity-check]" in verdict
    assert "## The tail over k samples" in (run / "final" / "README.md").read_text()


@pytest.mark.parametrize("truncation", ["left", "drop"])
def test_prompts_longer_than_the_model_are_fitted_counted_and_written_into_the_run(
    run_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], truncation: str
) -> None:
    """Every third prompt is 3,000 words (tokens, for the tiny word-level tokenizer) long, the tiny policy
    has 256 positions and responses 4 tokens: every prompt the policy sees has at most 252 tokens."""
    from detoxrl.config.files import load_config
    from detoxrl.data.prompts import load_prompts

    words = ["you", "are", "a", "kind", "and", "helpful", "friend", "the", "movie", "was", "terrible"]
    texts = [" ".join([str(i), *words] * (250 if i % 3 == 0 else 1)) for i in range(40)]  # 3,000 or 12 words
    source = tmp_path / "long.jsonl"
    source.write_text("".join(json.dumps({"prompt": {"text": t}}) + "\n" for t in texts))
    overrides = [f"data.source={source}", f"data.truncation={truncation}"]
    assert main(["run", "--config", str(run_config), *overrides]) == 0
    prompts = load_prompts(load_config(file=run_config, overrides=overrides).data)
    long_train = sum(len(e.text.split()) > 252 for e in prompts.train)
    examined = prompts.eval if truncation == "drop" else prompts.eval[:8]
    long_eval = sum(len(e.text.split()) > 252 for e in examined)
    assert long_train and long_eval  # both sides meet long prompts
    out = capsys.readouterr().out
    done = "left out" if truncation == "drop" else "truncated from the left"
    for n, given, what in (
        (long_train, len(prompts.train), "training"),
        (long_eval, len(examined), "held-out"),
    ):
        line = f"prompts: {n} of {given} {what} prompts were over 252 tokens (the longest 3,000): {done}"
        assert f"{line} (data.max_prompt_tokens, data.truncation)\n" in out
    data = json.loads((tmp_path / "run" / "data.json").read_text())
    counts = {"truncated": 0, "dropped": long_train} if truncation == "drop" else {"truncated": long_train}
    assert data["train"] == {"prompts": 30, "max_prompt_tokens": 252, "truncation": truncation,
                             "truncated": 0, "dropped": 0, **counts, "longest": 3000}  # fmt: skip
    assert data["eval"]["prompts"] == len(examined) and data["eval"]["max_prompt_tokens"] == 252
    records = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    texts = [e.text for e in prompts.train]
    for query in (s["query"] for r in records for s in r["samples"]):  # as it was, or its last 252 words
        cut = len(query.split()) == 252 and truncation == "left" and any(t.endswith(query) for t in texts)
        assert query in texts or cut
    evaluated = json.loads((tmp_path / "run" / "eval_before.json").read_text())["samples"]
    assert len(evaluated) == 8 and max(len(s["prompt"].split()) for s in evaluated) <= 252


def test_report_is_rebuilt_from_the_files_alone(
    run_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--config", str(run_config)]) == 0
    run = tmp_path / "run"
    first = (run / "report.md").read_text()
    (run / "report.md").unlink()
    (run / "report.html").unlink()
    assert main(["report", str(run)]) == 0
    assert (run / "report.md").read_text() == first
    assert (run / "report.html").is_file()
    # A damaged final/ (a cut copy): the report says so, in one line and at its top; push refuses it.
    weights = run / "final" / "adapter_model.safetensors"
    size, data = weights.stat().st_size, weights.read_bytes()
    weights.write_bytes(data[:64])
    capsys.readouterr()
    assert main(["report", str(run)]) == 0
    line = (
        f"'{run / 'final'}' is damaged (adapter_model.safetensors has 64 of its {size:,} bytes): its weights "
        "cannot be loaded; checkpoint-000002/policy holds the weights of step 2 (copy it over final/)."
    )
    assert capsys.readouterr().err == f"note: {line}\n"
    assert (run / "report.md").read_text().startswith(f"# detoxrl run report\n\n**Warning:** {line}\n")
    assert main(["push", str(run), "me/detoxified"]) == 2
    assert capsys.readouterr().err == f"detoxrl: error: {line} Nothing was pushed.\n"
    assert (run / "checkpoint-000002" / "policy" / "adapter_model.safetensors").read_bytes() == data
    weights.write_bytes(data)
    assert main(["report", str(run)]) == 0
    assert (run / "report.md").read_text() == first


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
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "data: 30 training prompts, 10 held-out prompts"
    assert [line.split(":")[0] for line in lines[1:]] == [
        "policy", "prompts", "device", "reward", "evaluator", "output_dir", "disk", "trackers", "config OK"
    ]  # fmt: skip
    assert lines[1].endswith("(local folder; llama)") and lines[4] == "reward: callable tiny_rewards:calm"
    assert lines[2] == (  # 256 positions less 4 response tokens, past trl's 512
        "prompts: at most 252 tokens (the model has 256 positions); longer ones truncated from the left "
        "(data.truncation)"
    )
    assert lines[6] == f"output_dir: {tmp_path / 'run'} (created by the run)"
    assert not (tmp_path / "run").exists()


def test_dry_run_reads_labels_and_adapters_without_loading_weights(
    run_config: Path, tmp_path: Path, tiny_classifier_dir: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    import transformers

    def no_weights(*args: object, **kwargs: object) -> None:
        raise AssertionError("--dry-run loaded weights")

    for loader in ("AutoModelForCausalLM", "AutoModelForSequenceClassification"):
        monkeypatch.setattr(getattr(transformers, loader), "from_pretrained", no_weights)
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    overrides = [
        f"reward={{kind: classifier, model: '{tiny_classifier_dir}', label: nothate}}",
        f"policy.adapter={tmp_path / 'adapter'}",
        f"eval.evaluators=[{tiny_classifier_dir}]",
    ]
    assert main(["run", "--config", str(run_config), "--dry-run", *overrides]) == 0
    out = capsys.readouterr().out
    assert f"adapter: {tmp_path / 'adapter'} (LORA, its base model unrecorded)" in out
    assert f"reward: classifier {tiny_classifier_dir} (local folder), logit of label 'nothate'" in out
    assert f"evaluator: {tiny_classifier_dir} (local folder), toxic label 'hate'" in out


def test_dry_run_refuses_a_disk_too_small_for_the_checkpoints(
    run_config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil
    from types import SimpleNamespace

    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(free=1000))
    assert main(["run", "--config", str(run_config), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "Config key 'output_dir'" in err and "free some space, or set output_dir" in err


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


@pytest.fixture
def saved_run(tmp_path: Path) -> Path:
    from detoxrl.config.files import load_config, save_config

    run_dir = tmp_path / "saved"
    run_dir.mkdir()
    save_config(
        load_config(preset="default", overrides=["steps=10", "output_dir=elsewhere"]), run_dir / "config.yaml"
    )
    return run_dir


def test_resume_takes_only_overrides_that_cannot_change_the_run(saved_run: Path) -> None:
    from detoxrl.config.files import resume_config
    from detoxrl.errors import ConfigError

    config = resume_config(saved_run, ["steps=20", "save_every=5", "threads=1", "device=cpu"])
    assert (config.steps, config.save_every, config.threads, config.device) == (20, 5, 1, "cpu")
    assert config.output_dir == str(saved_run)  # the folder given, wherever the run was first written
    with pytest.raises(
        ConfigError, match=r"'ppo.learning_rate=1e-4' cannot be used with --resume: it would "
    ):
        resume_config(saved_run, ["ppo.learning_rate=1e-4"])
    with pytest.raises(ConfigError, match=r"'steps=5' .*steps can only grow \(this run is set for 10\)"):
        resume_config(saved_run, ["steps=5"])
    with pytest.raises(ConfigError, match=r"'eval.batch_size=4' cannot be used"):
        resume_config(saved_run, ["eval.batch_size=4"])  # evaluation seeds each batch: other draws
    with pytest.raises(ConfigError, match=r"Unknown config key 'ppo.learnig_rate'"):
        resume_config(saved_run, ["ppo.learnig_rate=1"])  # a typo is a typo first


def test_resume_refuses_more_steps_under_a_linear_schedule(saved_run: Path) -> None:
    from detoxrl.config.files import resume_config
    from detoxrl.errors import ConfigError

    text = (
        (saved_run / "config.yaml")
        .read_text()
        .replace("lr_scheduler_type: constant", "lr_scheduler_type: linear")
    )
    (saved_run / "config.yaml").write_text(text)
    with pytest.raises(ConfigError, match="steps sets the learning-rate decay"):
        resume_config(saved_run, ["steps=20"])
    assert resume_config(saved_run, ["threads=2"]).steps == 10


def test_dry_run_finds_a_hub_model_in_the_local_cache(
    run_config: Path, tmp_path: Path, tiny_causal_dir: Path
) -> None:
    """Offline, a hub id is fine when the Hugging Face cache holds it (a fresh process: the cache's place
    is read once, at import)."""
    import os
    import shutil
    import subprocess
    import sys

    snapshot = tmp_path / "hub" / "models--someone--tiny" / "snapshots" / "0123abcd"
    shutil.copytree(tiny_causal_dir, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abcd")
    src = Path(__file__).resolve().parents[2] / "src"
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(src), str(tmp_path)])}  # fmt: skip
    argv = [
        sys.executable,
        "-m",
        "detoxrl",
        "run",
        "--dry-run",
        "--config",
        str(run_config),
        "policy.model=someone/tiny",
    ]
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "policy: someone/tiny (hub id, in the local Hugging Face cache; llama)" in out.stdout.splitlines()


def test_the_verdict_and_the_plots_carry_evasion_and_guard_alarms() -> None:
    from detoxrl.recipes.run import verdict_line
    from detoxrl.reports.plots import plot_training_quality

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


@pytest.mark.parametrize("algorithm", ["rloo", "grpo"])
def test_a_critic_free_run_goes_end_to_end_with_report_and_resume(
    algorithm: str, run_config: Path, tmp_path: Path
) -> None:
    """``detoxrl run ... ppo.algorithm=rloo`` (and grpo): the whole run directory but a value head, and
    --resume, as for PPO; the config, report and model card say which algorithm trained."""
    overrides = [f"ppo.algorithm={algorithm}", "ppo.num_generations=2"]
    assert main(["run", "--config", str(run_config), "steps=1", *overrides]) == 0
    assert main(["run", "--resume", str(tmp_path / "run"), "steps=2"]) == 0
    run = tmp_path / "run"
    for name in RUN_FILES:
        assert (run / name).is_file() == (name != "final/value_head.safetensors"), name
    steps = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2] and not any(k.startswith("ppo/val/") for k in steps[-1])
    assert f"algorithm: {algorithm}" in (run / "config.yaml").read_text()
    size = f"{algorithm.upper()}: 2 steps of 4 responses (2 prompts x 2)"
    assert size in (run / "report.md").read_text() and size in (run / "final" / "README.md").read_text()
    assert "KL " in json.loads((run / "summary.json").read_text())["verdict"]


def test_the_dry_run_names_each_weighted_part_of_a_summed_reward() -> None:
    from detoxrl.config import RewardConfig
    from detoxrl.recipes.preflight import reward_lines

    terms = (RewardConfig(kind="evasion", weight=3.0), RewardConfig(kind="relevance", weight=2.0))
    parts = (RewardConfig(), *terms)
    assert reward_lines(RewardConfig(kind="sum", components=parts)) == [
        "reward: sum of 3 parts",
        "reward.components[0]: profanity-check",
        "reward.components[1]: evasion (weight 3)",
        "reward.components[2]: relevance (weight 2)",
    ]


def test_report_to_sends_metrics_to_the_trackers_named_and_a_missing_one_is_one_line(
    run_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    assert main(["run", "--config", str(run_config), "steps=1", "report_to=[]"]) == 0
    assert not (tmp_path / "run" / "tensorboard").exists()  # metrics.jsonl alone
    missing = next(t for t in ("aim", "swanlab", "dvclive", "clearml") if importlib.util.find_spec(t) is None)
    capsys.readouterr()
    argv = [
        "run",
        "--config",
        str(run_config),
        f"report_to=[tensorboard, {missing}]",
        "output_dir=" + str(tmp_path / "b"),
    ]
    assert main([*argv, "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    need = f"pip install {missing} (or 'detoxrl[{missing}]'), or drop it from report_to."
    assert (
        err
        == f"detoxrl: error: Config key 'report_to' names {missing}, whose package is not installed: {need}"
    )
    assert main(argv) == 2 and not (tmp_path / "b").exists()  # the same line before anything is written

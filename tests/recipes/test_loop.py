"""The config-driven loop (loop.py) and the run directory's life (checkpoint.run_directory): a start that
fails leaves nothing (or, later, a resumable run, and says which); SIGINT and SIGTERM stop cleanly after
the current step with a checkpoint and a line saying how to resume; after SIGKILL mid-step, --resume
repeats the uninterrupted run exactly, each step logged once (real subprocesses)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from detoxrl.config import (
    GuardConfig,
    PolicyConfig,
    PPOConfig,
    QualityConfig,
    RewardConfig,
    RunConfig,
    SamplingConfig,
)
from detoxrl.errors import ConfigError, DataError, TrainingError
from detoxrl.recipes import train as loop
from detoxrl.recipes.train import Reward, train
from detoxrl.rewards.build import build_reward
from detoxrl.rundir import latest_checkpoint

PROMPTS = ["you are a kind", "the movie was", "what a lovely day", "i hate waiting"] * 4
SRC = Path(__file__).resolve().parents[2] / "src"

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(model: Path, steps: int) -> RunConfig:
    return RunConfig(
        policy=PolicyConfig(model=str(model), chat_template=False),
        generation=SamplingConfig(max_new_tokens=4),
        ppo=PPOConfig(learning_rate=1e-2, batch_size=4, mini_batch_size=4),
        steps=steps,
    )


def failing_at(step: int) -> object:
    calls = []

    def reward(prompts: list[str], responses: list[str]) -> torch.Tensor:
        calls.append(1)
        if len(calls) == step:
            raise DataError("the reward service is down")
        return torch.tensor([float(len(r)) for r in responses])

    return reward


def test_a_start_that_fails_leaves_nothing_and_the_same_command_then_runs(
    tiny_causal_dir: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    with pytest.raises(DataError, match=rf"the reward service is down \(nothing was kept in '{run_dir}'\)"):
        train(tiny(tiny_causal_dir, 2), PROMPTS, failing_at(1), run_dir, progress=False)
    assert not run_dir.exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("a user's file")  # not a run: refused, untouched
    with pytest.raises(ConfigError, match=r"holds files that are not a detoxrl run \(notes.txt\)"):
        train(tiny(tiny_causal_dir, 2), PROMPTS, failing_at(1), tmp_path / "mine", progress=False)
    overwrite = replace(tiny(tiny_causal_dir, 2), overwrite_output_dir=True)  # asked for: its files are kept
    with pytest.raises(DataError, match="nothing was kept"):
        train(overwrite, PROMPTS, failing_at(1), tmp_path / "mine", progress=False)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    assert len(train(tiny(tiny_causal_dir, 2), PROMPTS, failing_at(99), run_dir, progress=False).metrics) == 2


def test_a_run_that_fails_later_is_kept_and_says_how_to_resume(tiny_causal_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with pytest.raises(DataError, match=rf"continue with detoxrl train --resume {run_dir}\)"):
        train(tiny(tiny_causal_dir, 4), PROMPTS, failing_at(3), run_dir, progress=False)
    assert latest_checkpoint(run_dir) == run_dir / "checkpoint-000002"
    with pytest.raises(TrainingError, match="already holds a run: continue it with detoxrl train --resume"):
        train(tiny(tiny_causal_dir, 4), PROMPTS, failing_at(99), run_dir, progress=False)
    records = train(tiny(tiny_causal_dir, 4), PROMPTS, failing_at(99), run_dir, resume=True, progress=False)
    assert [r["step"] for r in records.metrics] == [3, 4]


def test_keep_checkpoints_bounds_the_disk_a_long_run_takes(tiny_causal_dir: Path, tmp_path: Path) -> None:
    config = RunConfig(**{**vars(tiny(tiny_causal_dir, 5)), "keep_checkpoints": 3})
    train(config, PROMPTS, failing_at(99), tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == [
        f"checkpoint-00000{i}" for i in (3, 4, 5)
    ]


def test_a_policy_that_turns_evasive_trips_the_guard_and_stops_early_with_a_checkpoint(
    tiny_causal_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """[issue 16] The loop's wiring of the guards: from step 4 every response is a refusal (the decoded
    texts of a synthetic evasive policy). The alarm compares the last 3 steps with the first 3, so it is
    raised at step 6 (steps 4-6 all evasive) and, with early_stop and patience 2, training stops after
    step 7 of 10 with that step checkpointed."""
    calls: list[int] = []

    def evasive_from_step_4(tokenizer: object, responses: list[torch.Tensor]) -> list[str]:
        calls.append(1)
        texts = decode(tokenizer, responses)
        return texts if len(calls) < 4 else ["I'm sorry, but I can't help with that."] * len(texts)

    decode = loop.decode
    monkeypatch.setattr(loop, "decode", evasive_from_step_4)
    guard = GuardConfig(early_stop=True, patience=2)
    config = RunConfig(
        **{**vars(tiny(tiny_causal_dir, 10)), "quality": QualityConfig(relevance=False, guard=guard)}
    )
    result = train(config, PROMPTS, failing_at(99), tmp_path, progress=False)
    steps = {r["step"]: r for r in result.metrics}
    assert result.stopped_early and sorted(steps) == list(range(1, 8))
    assert all(steps[s]["quality/evasion_rate"] == 0.0 for s in (1, 2, 3))
    assert all(steps[s]["quality/evasion_rate"] == 1.0 for s in range(4, 8))
    assert [bool(steps[s]["guard/alarms"]) for s in range(1, 8)] == [False] * 5 + [True] * 2
    assert steps[6]["guard/evasion_rate"] == 1.0
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-000007"


def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_whole_one(
    tiny_causal_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A cut .safetensors (a full disk, a killed copy) in the newest checkpoint: the run continues from the
    one before, says so in one line, and repeats the lost step as the uninterrupted run did. With no whole
    checkpoint left, one line and nothing touched."""
    config = tiny(tiny_causal_dir, 4)
    straight = train(config, PROMPTS, failing_at(99), tmp_path / "straight", progress=False).metrics
    run_dir = tmp_path / "damaged"
    train(config, PROMPTS, failing_at(99), run_dir, progress=False)  # checkpoints 3 and 4 kept, final/
    weights = run_dir / "checkpoint-000004" / "policy" / "adapter_model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="detoxrl"):
        resumed = train(config, PROMPTS, failing_at(99), run_dir, resume=True, progress=False)
    assert [r["step"] for r in resumed.metrics] == [4]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"checkpoint-000004 is damaged (policy/adapter_model.safetensors has 100 of its {size:,} bytes): the "
        "run continues from step 3 (checkpoint-000003), and step 4 is run again as before (the damaged files "
        "are kept, renamed damaged-checkpoint-000004)"
    ]
    assert same_steps(metrics(run_dir), straight) <= 1e-6
    for step in (3, 4):
        state = run_dir / f"checkpoint-00000{step}" / "state.pt"
        state.write_bytes(state.read_bytes()[:1000])
    files = sorted(str(p) for p in run_dir.rglob("*"))
    with pytest.raises(
        TrainingError, match=rf"^No checkpoint of '{run_dir}' can be resumed \(checkpoint-000004"
    ):
        train(config, PROMPTS, failing_at(99), run_dir, resume=True, progress=False)
    assert sorted(str(p) for p in run_dir.rglob("*")) == files


# ---- real processes: signals and SIGKILL ------------------------------------------------------------


@pytest.fixture
def slow_run(tmp_path: Path, tiny_causal_dir: Path, prompt_file: Path) -> tuple[Path, dict[str, str]]:
    """A train config whose reward sleeps 0.3 s (so that a step is long enough to be interrupted in its
    middle) and the environment of a subprocess that runs it."""
    (tmp_path / "slow_reward.py").write_text(
        "import time\n\n\ndef score(prompts, responses):\n"
        "    time.sleep(0.3)\n    return [float(len(r)) for r in responses]\n"
    )
    config = tmp_path / "slow.yaml"
    config.write_text(
        f"policy: {{model: '{tiny_causal_dir}', chat_template: false}}\n"
        "reward: {kind: callable, model: 'slow_reward:score'}\n"
        f"data: {{source: '{prompt_file}', text_field: prompt.text}}\n"
        "ppo: {batch_size: 4, mini_batch_size: 2, ppo_epochs: 2, score_norm: true}\n"
        "generation: {min_new_tokens: 2, max_new_tokens: 6, length_sampling: per_prompt}\n"
        "quality: {relevance: false}\nsteps: 6\nthreads: 1\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(tmp_path)]), "HF_HUB_OFFLINE": "1"}
    return config, env


def start(config: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "detoxrl", "train", *args]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def metrics(run_dir: Path) -> list[dict[str, float]]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def stop_after(process: subprocess.Popen[str], run_dir: Path, steps: int, signum: int) -> tuple[int, str]:
    """Send ``signum`` as soon as ``steps`` steps are logged (the next one is under way)."""
    deadline = time.monotonic() + 120
    while len(metrics(run_dir)) < steps and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    return process.returncode, err


def novelty() -> Reward:
    return build_reward(RewardConfig(kind="novelty", window=8))


def same_steps(a: list[dict[str, float]], b: list[dict[str, float]]) -> float:
    """The largest difference of rewards and KL between two runs' records (each step once, in order)."""
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, len(a) + 1))
    keys = ("env/reward_mean", "objective/kl", "objective/kl_coef", "ppo/loss/total")
    return max(abs(x[k] - y[k]) for x, y in zip(a, b, strict=True) for k in keys)


def test_the_novelty_memory_is_checkpointed_so_a_resumed_run_scores_as_an_uninterrupted_one(
    sharp_causal_dir: Path, tmp_path: Path
) -> None:
    config = replace(tiny(sharp_causal_dir, 4), generation=SamplingConfig(max_new_tokens=24))
    straight = train(config, PROMPTS, novelty(), tmp_path / "straight", progress=False).metrics
    third = straight[2]["samples"]  # step 3's global batch: without the memory it would score otherwise
    forgetful = novelty()([x["query"] for x in third], [x["response"] for x in third]).mean().item()
    assert forgetful != pytest.approx(straight[2]["env/reward_mean"])
    train(replace(config, steps=2), PROMPTS, novelty(), tmp_path / "resumed", progress=False)
    state = torch.load(tmp_path / "resumed" / "checkpoint-000002" / "state.pt", weights_only=False)
    assert len(state["trainer"]["reward_memory"][0]["recent"]) == 8  # steps 1-2: 8 responses
    train(config, PROMPTS, novelty(), tmp_path / "resumed", resume=True, progress=False)
    assert same_steps(metrics(tmp_path / "resumed"), straight) <= 1e-6


@pytest.mark.slow
def test_signals_stop_cleanly_and_sigkill_resumes_exactly(
    slow_run: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    config, env = slow_run
    straight = start(config, env, "--config", str(config), f"output_dir={tmp_path / 'straight'}")
    assert straight.wait(timeout=300) == 0, straight.communicate()[1]
    expected = metrics(tmp_path / "straight")
    # SIGINT and SIGTERM: the current step finishes, is checkpointed, and the process says how to resume.
    for name, signum in (("SIGINT", signal.SIGINT), ("SIGTERM", signal.SIGTERM)):
        run_dir = tmp_path / name
        code, err = stop_after(
            start(config, env, "--config", str(config), f"output_dir={run_dir}"), run_dir, 2, signum
        )
        done = len(metrics(run_dir))
        last = err.strip().splitlines()[-1]  # after the progress bar
        assert code == 128 + signum and "Traceback" not in err, err
        checkpoint = run_dir / f"checkpoint-{done:06d}"
        assert last == (
            f"detoxrl: stopped by {name} after step {done} of 6 ({checkpoint} holds it); "
            f"continue with: detoxrl train --resume {run_dir}"
        )
        assert latest_checkpoint(run_dir) == run_dir / f"checkpoint-{done:06d}"
    # SIGKILL mid-step: --resume continues from the last checkpoint and repeats the run step for step.
    run_dir = tmp_path / "killed"
    stop_after(
        start(config, env, "--config", str(config), f"output_dir={run_dir}"), run_dir, 3, signal.SIGKILL
    )
    assert 3 <= len(metrics(run_dir)) < 6  # killed before the end
    # ... and its newest checkpoint's state cut in half, as a full disk or a killed copy leaves it: the run
    # continues from the checkpoint before, says so in one line, and still repeats the run step for step.
    newest = latest_checkpoint(run_dir)
    assert newest is not None
    state = newest / "state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    step = int(newest.name.removeprefix("checkpoint-"))
    for resumed in ("killed", "SIGINT"):
        process = start(config, env, "--resume", str(tmp_path / resumed))
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0 and "Traceback" not in err, err
        notes = [line for line in err.splitlines() if line.startswith("note: ")]
        if resumed == "killed":
            assert len(notes) == 1 and notes[0].startswith(
                f"note: {newest.name} is damaged (state.pt has "
            ), err
            assert f"the run continues from step {step - 1} (checkpoint-{step - 1:06d})" in notes[0]
        assert same_steps(metrics(tmp_path / resumed), expected) <= 1e-4

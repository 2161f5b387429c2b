"""Data-parallel PPO (distributed.py) on 2 CPU processes over gloo against one process: the same responses,
rewards and advantages, the same first update (LoRA and value head weights), runs that resume on 2 or on 1
process and continue as if never stopped, and a sharded evaluation equal to the one-process one.

One launch of tests/parallel/dp_worker.py (2 processes, tiny model, about 20 s) is shared by the tests of this
file; the one-process runs happen in the test process. Printed: the largest differences (the closing note)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import dp_worker
import pytest
import torch
from safetensors.torch import load_file

from detoxrl.parallel import launch as launcher
from detoxrl.parallel.distributed import SINGLE, Topology
from detoxrl.parallel.launch import command, without_flag
from detoxrl.recipes.train import train

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("dp_worker.py")
TOLERANCE = 1e-5  # float32 sums in another order (8 rows per process instead of 16)
# The weights: rows whose prompts tokenize alike share one pass of the prompt [D25] where they meet in a
# pass, which differs between one and two processes; the gradients then agree to float32 rounding, which
# Adam's normalisation magnifies on near-zero entries (1.9e-5 here; 8.5e-7 with every prompt run apart).
WEIGHTS_TOLERANCE = 1e-4

pytestmark = pytest.mark.usefixtures("one_thread")


def launch(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")]),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}  # fmt: skip
    out = subprocess.run(list(argv), capture_output=True, text=True, env=env, timeout=600, cwd=cwd)
    assert out.returncode == 0, out.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def two_processes(tiny_causal_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """WORK with what 2 processes wrote: two/ (2 steps), two-experience.pt, two-resumed/ (2 -> 3 steps on
    2 processes), two-eval.json."""
    work = tmp_path_factory.mktemp("dp")
    launch(*command(["placeholder"], 2, cpu=True)[:6], str(WORKER), str(work),
           str(tiny_causal_dir))  # fmt: skip
    return work


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def max_difference(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> float:
    """The largest difference of any logged figure between two runs (the same steps, the same samples)."""
    assert [r["step"] for r in a] == [r["step"] for r in b]
    assert [r["samples"] for r in a] == [r["samples"] for r in b]
    keys = [k for k in a[0] if k not in ("step", "samples") and not k.startswith("time/")]
    return max(abs(x[k] - y[k]) for x, y in zip(a, b, strict=True) for k in keys)


def weights_difference(a: Path, b: Path) -> float:
    """The largest difference of the adapter and value head weights of two weight folders."""
    out = 0.0
    for name in ("adapter_model.safetensors", "value_head.safetensors"):
        if not (a / name).is_file():  # rloo and grpo have no value head
            assert not (b / name).is_file()
            continue
        x, y = load_file(a / name), load_file(b / name)
        assert x.keys() == y.keys()
        out = max(out, *(float((x[k] - y[k]).abs().max()) for k in x))
    return out


def compare_with_one_process(
    work: Path,
    name: str,
    model: Path,
    engine: str,
    tmp_path: Path,
    device: str = "auto",
    algorithm: str = "ppo",
) -> str:
    """Train on one process as ``name`` was trained on two (``dp_worker.tiny_config``) and compare: the
    same responses and rewards, log-probs, values and advantages, weights after the first update, metrics."""
    config = dp_worker.tiny_config(str(model), 2, engine, device, algorithm)
    with dp_worker.first_experience(tmp_path / "one-experience.pt"):
        train(config, dp_worker.PROMPTS, dp_worker.length_reward, tmp_path / "one", progress=False)
    one, two = torch.load(tmp_path / "one-experience.pt"), torch.load(work / f"{name}-experience.pt")
    assert torch.equal(one["response_ids"], two["response_ids"])  # the same responses, row for row
    assert torch.equal(one["response_mask"], two["response_mask"])
    assert torch.equal(one["scores"], two["scores"])  # the same rewards, normalised by the same moments
    mask = one["response_mask"].bool()
    per_token = [k for k in ("logprobs", "values", "advantages") if k in one and one[k].dim() == 2]
    gaps = {k: float((one[k] - two[k])[mask].abs().max()) for k in per_token}
    if one["advantages"].dim() == 1:  # rloo and grpo: one advantage per sequence
        gaps["advantages"] = float((one["advantages"] - two["advantages"]).abs().max())
    first_update = weights_difference(tmp_path / "one/checkpoint-000001/policy",
                                      work / f"{name}/checkpoint-000001/policy")  # fmt: skip
    final = weights_difference(tmp_path / "one/final", work / f"{name}/final")
    run = max_difference(metrics(tmp_path / "one"), metrics(work / name))
    assert max(gaps.values()) < TOLERANCE and max(first_update, final) < WEIGHTS_TOLERANCE and run < 1e-4
    assert not torch.equal(one["advantages"], torch.zeros_like(one["advantages"]))
    return f"max differences {gaps}, weights after the first update {first_update:.2e}, metrics {run:.2e}"


def test_two_processes_of_8_prompts_reproduce_one_process_of_16(
    two_processes: Path, tiny_causal_dir: Path, tmp_path: Path
) -> None:
    gaps = compare_with_one_process(two_processes, "two", tiny_causal_dir, "auto", tmp_path)
    print("1x16 vs 2x8 (DDP):", gaps)


def test_two_processes_of_2_groups_reproduce_one_process_of_4_groups_under_rloo(
    two_processes: Path, tiny_causal_dir: Path, tmp_path: Path
) -> None:
    """RLOO's leave-one-out baselines over groups of 4 samples, each process sampling whole groups."""
    gaps = compare_with_one_process(
        two_processes, "rloo", tiny_causal_dir, "auto", tmp_path, algorithm="rloo"
    )
    print("1x16 vs 2x8 (DDP, RLOO):", gaps)


def test_fsdp2_sharded_training_reproduces_one_process(
    two_processes: Path, tiny_causal_dir: Path, tmp_path: Path
) -> None:
    """FSDP2 (fully_shard over gloo): sampling with the parameters gathered, the reference through the
    disabled adapter, updates of sharded parameters, checkpoints and final adapter gathered by the main
    process."""
    gaps = compare_with_one_process(two_processes, "fsdp", tiny_causal_dir, "reference", tmp_path)
    print("1x16 vs 2x8 (FSDP2):", gaps)


def test_a_two_process_run_resumes_on_two_or_one_process_as_if_never_stopped(
    two_processes: Path, tiny_causal_dir: Path, tmp_path: Path
) -> None:
    config = dp_worker.tiny_config(str(tiny_causal_dir), 3)
    train(config, dp_worker.PROMPTS, dp_worker.length_reward, tmp_path / "straight", progress=False)
    shutil.copytree(two_processes / "two", tmp_path / "onto-one")
    train(config, dp_worker.PROMPTS, dp_worker.length_reward, tmp_path / "onto-one", resume=True,
          progress=False)  # fmt: skip
    straight = metrics(tmp_path / "straight")
    gaps = {}
    for name, run_dir in (("2->2", two_processes / "two-resumed"), ("2->1", tmp_path / "onto-one")):
        assert [r["step"] for r in metrics(run_dir)] == [1, 2, 3]
        gaps[name] = (max_difference(straight, metrics(run_dir)),
                      weights_difference(tmp_path / "straight/final", run_dir / "final"))  # fmt: skip
    print(f"resumed runs against a straight one-process run (metrics, final weights): {gaps}")
    assert all(m < 1e-4 and w < WEIGHTS_TOLERANCE for m, w in gaps.values())


def test_sharded_evaluation_equals_one_process_evaluation(two_processes: Path, tiny_causal_dir: Path) -> None:
    one = dp_worker.evaluate_tiny(str(tiny_causal_dir), SINGLE)
    two = json.loads((two_processes / "two-eval.json").read_text())
    assert [(r["prompt_index"], r["sample_index"]) for r in two] == [
        (p, j) for p in range(10) for j in range(2)
    ]
    for a, b in zip(one, two, strict=True):
        assert {k: v for k, v in a.items() if k != "nll"} == {k: v for k, v in b.items() if k != "nll"}
    nll = max(abs(a["nll"] - b["nll"]) for a, b in zip(one, two, strict=True))
    print(f"sharded evaluation: identical records, perplexity NLL max difference {nll:.2e}")
    assert nll < 1e-4


def test_shares_and_launch_commands() -> None:
    two = [Topology(rank=r, world_size=2) for r in range(2)]
    assert [t.shard(16) for t in two] == [slice(0, 8), slice(8, 16)]
    assert [t.shard(5) for t in two] == [slice(0, 2), slice(2, 5)]  # shares differ by one row at most
    assert SINGLE.shard(7) == slice(0, 7) and SINGLE.gather([1, 2]) == [1, 2]
    argv = ["run", "--num-processes", "2", "--preset", "default", "steps=2"]
    assert without_flag(argv) == without_flag(["run", "--num-processes=2", "--preset", "default", "steps=2"])
    cpu, gpu = command(argv, 2, cpu=True), command(argv, 2, cpu=False)
    assert cpu[1:3] == ["-m", "torch.distributed.run"] and cpu[-5:] == ["detoxrl", "run", "--preset",
                                                                          "default", "steps=2"]  # fmt: skip
    assert gpu[1:3] == ["-m", "accelerate.commands.launch"] and "--num-processes" not in gpu
    assert sys.executable == cpu[0] == gpu[0]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/gpu_check.sh runs these)")
def test_accelerates_fsdp2_on_a_gpu_reproduces_one_process(tiny_causal_dir: Path, tmp_path: Path) -> None:
    """accelerate's own FSDP2 wrapping (``accelerate launch --use_fsdp``; one process per GPU, as many as
    there are, at most 2), against one plain process on the GPU."""
    n = min(2, torch.cuda.device_count())
    launch(sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp", "--fsdp_version", "2",
           "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP", "--num_processes", str(n),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(WORKER), str(tmp_path), str(tiny_causal_dir), "cuda")  # fmt: skip
    gaps = compare_with_one_process(tmp_path, "accelerate", tiny_causal_dir, "auto", tmp_path / "one", "cuda")
    print(f"1 plain process vs {n} FSDP2 (accelerate) on CUDA:", gaps)


def test_processes_share_the_cores_and_refuse_mini_batches_too_small_to_share() -> None:
    from detoxrl.errors import ConfigError

    class Fake:  # the Accelerator's few attributes these checks read
        distributed_type = type("T", (), {"name": "MULTI_CPU"})

    two = Topology(rank=0, world_size=4, local_world_size=2, accelerator=Fake())
    cores = launcher.cores()
    assert two.threads(None) == max(1, cores // 2) and two.threads(64) == max(1, cores // 2)
    assert SINGLE.threads(None) is None and SINGLE.threads(3) == 3  # one process: as configured
    with pytest.raises(ConfigError, match=r"'ppo.mini_batch_size' \(2\) must be at least the number of"):
        two.check(2, 1)
    two.check(4, 2)


def test_threads_and_cpu_processes_above_the_cores_are_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from detoxrl.errors import ConfigError

    monkeypatch.setattr(launcher, "cores", lambda: 8)
    for fine in (None, 8):
        launcher.check_threads(fine)
        launcher.check_processes(fine, cpu=True)
    launcher.check_processes(64, cpu=False)  # GPUs: one process each, not the CPU's cores
    with pytest.raises(ConfigError) as e:
        launcher.check_threads(100_000)
    assert str(e.value) == (
        "Config key 'threads' must be at most 8 (this machine's cores), got 100000: more threads or "
        "processes than cores only wait for each other."
    )
    assert e.value.render("--threads").startswith("--threads must be at most 8 (this machine's cores), got")
    with pytest.raises(
        ConfigError, match=r"^--num-processes must be at most 8 on this machine's CPUs \(its cores\)"
    ):
        launcher.check_processes(9, cpu=True)
    with pytest.raises(ConfigError, match=r"^--num-processes must be a whole number >= 1, got 0"):
        launcher.check_processes(0, cpu=False)


@pytest.mark.slow
def test_cli_run_on_two_processes_writes_a_complete_run(
    run_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``detoxrl run --num-processes 2`` end to end: torch's launcher, evaluation shared out, the report."""
    from test_run import RUN_FILES

    from detoxrl.cli import main

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "src"), str(tmp_path)]))
    assert main(["run", "--config", str(run_config), "--num-processes", "2", "quality.relevance=false"]) == 0
    assert [name for name in RUN_FILES if not (tmp_path / "run" / name).is_file()] == []
    assert [r["step"] for r in metrics(tmp_path / "run")] == [1, 2]
    after = json.loads((tmp_path / "run" / "eval_after.json").read_text())
    assert [r["prompt_index"] for r in after["samples"]] == list(range(8))

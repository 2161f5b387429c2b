"""The benchmark's pure helpers (bench/): FLOP counting on known configs, summaries and tables from
canned results. No model runs; the timings themselves are figures, never tested."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from bench import compare, throughput
from bench.flops import ModelShape, attention_flops, mfu, pass_flops, step_flops

SMOLLM2 = {  # SmolLM2-135M-Instruct's config.json, the fields that set FLOPs
    "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
    "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
}  # fmt: skip
TINY = ModelShape(layers=2, hidden=4, intermediate=8, heads=2, kv_heads=1, head_dim=2, vocab=10, lora_rank=1)


def test_smollm2_weights_match_the_model() -> None:
    shape = ModelShape.from_config(SMOLLM2, lora_rank=32)
    # per layer: q, o 576x576; k, v 576x192; MLP 3 x 576x1536
    assert shape.layer_weights == 30 * (2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536) == 106_168_320
    assert shape.head_weights == 576 * 49152 == 28_311_552  # tied with the embedding: 134.5M with it
    # detoxrl's describe(): 3,686,977 trainable = LoRA + the value head's 577
    assert shape.lora_weights == 3_686_977 - 577


def test_attention_is_causal_sum_of_contexts() -> None:
    # 3 tokens see 1 + 2 + 3 keys: 4 * layers * (heads * head_dim) * 6
    assert attention_flops(TINY, 0, 3) == 4 * 2 * 4 * 6
    assert attention_flops(TINY, 0, 3) == attention_flops(TINY, 0, 1) + attention_flops(TINY, 1, 3)


def test_pass_flops_forward_and_frozen_backward() -> None:
    frozen = 2 * 3 * TINY.layer_weights + 2 * 2 * TINY.head_weights  # 3 tokens fed, 2 logit rows
    attention = attention_flops(TINY, 0, 3)
    lora = 2 * 3 * TINY.lora_weights
    assert pass_flops(TINY, 0, 3, 2, lora=False) == frozen + attention
    assert pass_flops(TINY, 0, 3, 2, lora=True) == frozen + attention + lora
    # frozen base: backward = activation gradients only (1x); attention and LoRA 2x
    assert pass_flops(TINY, 0, 3, 2, lora=True, backward_factor=1) == 2 * frozen + 3 * attention + 3 * lora
    assert pass_flops(TINY, 0, 3, 2, lora=True, backward_factor=2) == 3 * frozen + 3 * attention + 3 * lora


def test_step_flops_phases_add_up() -> None:
    shape = ModelShape.from_config(SMOLLM2, lora_rank=32)
    f = step_flops(shape, [200, 300], [48, 10])
    # prefill + decode with the KV cache do exactly the work of one pass over prompt + response
    assert f["generation"] == pytest.approx(f["policy_pass"])
    assert f["reference_pass"] < f["policy_pass"]  # no adapter
    assert f["update"] > 2 * f["reference_pass"]
    parts = ("generation", "policy_pass", "reference_pass", "update")
    assert f["total"] == pytest.approx(sum(f[k] for k in parts))
    # 2 * layer weights per real token fed (247 + 309), the LM head at the 58 response positions, attention
    fed = 2 * shape.layer_weights * 556 + 2 * shape.head_weights * 58
    assert f["reference_pass"] == fed + attention_flops(shape, 0, 247) + attention_flops(shape, 0, 309)
    assert step_flops(shape, [200], [48], ppo_epochs=2)["update"] == pytest.approx(
        2 * step_flops(shape, [200], [48])["update"]
    )


def test_mfu() -> None:
    assert mfu(100.0, 2.0, 100.0) == 0.5
    assert mfu(100.0, None, 100.0) is None
    assert mfu(100.0, 2.0, None) is None


def test_load_dialogues_selects_and_shuffles_like_the_peers(tmp_path: Path) -> None:
    texts = ["x" * n for n in (100, 200, 500, 1000, 1001, 300)]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"dialogue": t}) + "\n" for t in texts))
    expected = [t for t in texts if 200 <= len(t) <= 1000]
    random.Random(0).shuffle(expected)
    assert throughput.load_dialogues(path, 3) == expected[:3]


def record(wall: float, reward: float) -> dict[str, Any]:
    return {
        "samples": 16, "wall_s": wall, "generation_s": wall / 4, "reward_s": 0.1, "forward_s": wall / 4,
        "update_s": wall / 2 - 0.1, "cpu_util": 1.9, "reward_mean": reward, "kl": 0.5,
        "tokens": {"response": 16 * 48, "pass": 16 * 300, "prompt": 16 * 253, "forward": 16 * 300},
        "mfu_update": 0.3, "mfu_step": 0.2, "mfu_update_6n": 0.45,
    }  # fmt: skip


def test_summarise_takes_medians_of_the_measured_steps() -> None:
    records = [record(100.0, 0.9), record(10.0, 0.95), record(12.0, 0.96), record(11.0, 0.97)]
    s = throughput.summarise(records, warmup=1)
    assert s["timed_steps"] == 3 and s["median_step_s"] == 11.0
    assert s["samples_per_s_median"] == pytest.approx(16 / 11)
    assert s["median_gen_s"] == 11.0 / 4 and s["median_train_s"] == pytest.approx(11.0 / 2 - 0.1)
    assert s["median_score_s"] == pytest.approx(0.1 + 11.0 / 4)
    assert s["phases"]["update"]["tokens_per_s"] == pytest.approx(3 * 16 * 300 / (33 / 2 - 0.3))
    assert s["phases"]["forward"]["tokens_per_s"] == pytest.approx(3 * 16 * 300 / (33 / 4))
    assert (s["reward_first_step"], s["reward_last_step"]) == (0.9, 0.97)  # the warm-up step is first
    assert s["mean_resp_tokens"] == 48
    peak = {"float32": 1.7e11, "bfloat16": None}
    table = throughput.format_table({"summary": s, "peak_flops_per_s": peak, "config": {"dtype": "float32"}})
    assert "| update | 5.40 |" in table and "fp32 170.0 GFLOP/s, bf16 - GFLOP/s" in table


def canned(stem: str, samples_per_s: float, **extra: Any) -> dict[str, Any]:
    summary = {"median_step_s": 16 / samples_per_s, "samples_per_s_median": samples_per_s, "log_stem": stem}
    run = {"stem": stem, "label": stem, "kind": stem, "time_v_rss_mib": None}
    return {**run, "summary": {**summary, **extra}}


def test_compare_table_side_by_side_with_ratios_and_quirks() -> None:
    runs = [
        canned("ours", 0.8, mfu_update=0.55, peak_rss_mib_getrusage=2048.0),
        canned("ppo-classic", 0.2, peak_rss_mib_getrusage=5939.2, versions={"trl": "0.11.4"}),
        canned("grpo", 0.4),
    ]
    runs[1]["time_v_rss_mib"] = 6144.0
    lines = compare.format_table(runs).splitlines()
    assert lines[0] == "| | ours | ppo-classic | grpo |"
    row = {line.split(" | ")[0].strip("| *"): line for line in lines if line.startswith("|")}
    assert row["ours / this (samples/s)"].endswith("| 1.00x | 4.00x | 2.00x |")
    assert row["MFU update (needed FLOPs / peak)"].endswith("| 55.0% | - | - |")
    assert row["peak RSS GiB getrusage (time -v)"].endswith("| 2.00 | 5.80 (6.00) | - |")
    assert row["trl / transformers / torch"].endswith("| - / - / - | 0.11.4 / - / - | - / - / - |")
    text = "\n".join(lines)
    assert "LengthSampler(32..64)" in text and "4 prompts x 4 generations" in text


def test_compare_averages_sandwiched_runs_of_ours() -> None:
    runs = [canned("ours", 0.8), canned("ours-2", 0.6), canned("rloo", 0.35)]
    runs[1]["kind"] = "ours"
    assert compare.ours_samples_per_s(runs) == pytest.approx(0.7)
    assert compare.format_table([]) == "(no results)"


def test_load_runs_reads_results_and_time_reports(tmp_path: Path) -> None:
    (tmp_path / "trl_grpo.json").write_text(json.dumps({"summary": {"log_stem": "grpo"}, "steps": []}))
    (tmp_path / "ours.json").write_text(json.dumps({"summary": {}, "config": {"dtype": "bfloat16"}}))
    (tmp_path / "grpo.time").write_text("\tMaximum resident set size (kbytes): 3565158\n")
    (tmp_path / "notes.json").write_text("{}")
    runs = compare.load_runs(tmp_path)
    assert [(r["kind"], r["label"]) for r in runs] == [
        ("ours", "detoxrl (bfloat16)"),
        ("grpo", "trl 1.16 GRPOTrainer"),
    ]
    assert runs[1]["time_v_rss_mib"] == pytest.approx(3565158 / 1024)


def test_compare_gives_one_ratio_row_per_dtype_of_ours() -> None:
    runs = [canned("ours-bfloat16", 0.8), canned("ours-float32", 0.4), canned("grpo", 0.2)]
    for run, dtype in zip(runs[:2], ["bfloat16", "float32"], strict=True):
        run.update(kind="ours", dtype=dtype)
    lines = compare.format_table(runs).splitlines()
    row = {line.split(" | ")[0].strip("| *"): line for line in lines if line.startswith("|")}
    assert row["ours (bfloat16) / this (samples/s)"].endswith("| 1.00x | 2.00x | 4.00x |")
    assert row["ours (float32) / this (samples/s)"].endswith("| 0.50x | 1.00x | 2.00x |")
    assert compare.parse_args([]).dtypes == ["bfloat16", "float32"]
    with pytest.raises(SystemExit):
        compare.parse_args(["--dtype", "float16"])


def test_a_policy_pass_taken_from_sampling_is_not_counted_as_needed_work() -> None:
    shape = ModelShape.from_config(SMOLLM2, lora_rank=32)
    recs = []
    for policy_pass in (True, False):
        rec = {"prompt_lengths": [200, 250], "response_lengths": [48, 30], "policy_pass": policy_pass,
               "update_s": 2.0, "wall_s": 10.0, "forward_s": 1.0, "generation_s": 3.0}  # fmt: skip
        throughput.add_flops(rec, shape, 1e11)
        recs.append(rec)
    with_pass, without = recs
    skipped = with_pass["flops"]["policy_pass"]
    assert with_pass["floor_s"] - without["floor_s"] == pytest.approx(skipped / 1e11)
    assert with_pass["tokens"]["forward"] == 2 * without["tokens"]["forward"]
    assert without["mfu_update"] == with_pass["mfu_update"]


def test_a_baseline_checkout_gets_its_own_columns_and_ratios(tmp_path: Path) -> None:
    """--baseline: the loop at an earlier commit, beside ours; 'ours / this' reads as the speed-up."""
    for stem, dtype, rate, rev in (
        ("base-bfloat16", "bfloat16", 0.4, "abc123"),
        ("ours-bfloat16", "bfloat16", 0.8, "def456"),
    ):
        summary = {
            "log_stem": stem,
            "samples_per_s_median": rate,
            "median_step_s": 16 / rate,
            "revision": rev,
        }
        (tmp_path / f"{stem}.json").write_text(json.dumps({"summary": summary, "config": {"dtype": dtype}}))
    runs = compare.load_runs(tmp_path)
    assert [(r["kind"], r["label"]) for r in runs] == [
        ("ours", "detoxrl at def456 (bfloat16) [ours-bfloat16]"),
        ("base", "detoxrl at abc123 (bfloat16) [base-bfloat16]"),
    ]
    row = {
        ln.split(" | ")[0].strip("| *"): ln
        for ln in compare.format_table(runs).splitlines()
        if ln.startswith("|")
    }
    assert row["ours / this (samples/s)"].endswith("| 1.00x | 2.00x |")
    assert compare.parse_args(["--baseline", str(tmp_path)]).baseline == tmp_path


def test_scaling_table_has_a_row_per_process_count_and_the_collectives() -> None:
    from bench.scaling import table

    runs = [{"processes": 1, "median_step_s": 10.0, "samples_per_s": 1.6, "wall_s": 60.0},
            {"processes": 2, "median_step_s": 11.0, "samples_per_s": 1.45, "wall_s": 70.0}]  # fmt: skip
    text = table(runs, {"total_ms": 12.5, "collectives_ms": {"rows": 2.0, "gradients": 10.5}})
    lines = text.splitlines()
    assert lines[2] == "| 1 | 10.00 | 1.60 | 60 | - |" and lines[3] == "| 2 | 11.00 | 1.45 | 70 | 12.5 |"
    assert lines[-1] == "collectives per step (ms): rows 2.00, gradients 10.50"

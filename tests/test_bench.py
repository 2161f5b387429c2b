"""The benchmark's pure helpers (bench/): FLOP counting on known configs, summaries and tables from
canned results. No model runs; the timings themselves are figures, never tested."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from bench import compare, profile_update, throughput
from bench.flops import ModelShape, attention_flops, mfu, pass_flops, step_flops
from bench.peak import relative_spread, steady_rate

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


def fake_clock(durations: list[float]) -> tuple[Any, Any]:
    """A clock and an operation whose i-th call takes durations[i] seconds of that clock."""
    now, calls = [0.0], iter(durations)
    return (lambda: now[0]), (lambda: now.__setitem__(0, now[0] + next(calls)))


def test_the_peak_is_warmed_up_then_timed_in_blocks_until_two_agree() -> None:
    # 1 s of warm-up at 0.25 s a product (a cold start), then blocks of 3: 0.2, 0.1, 0.1 s medians
    clock, run = fake_clock([0.25] * 4 + [0.2, 0.2, 0.2] + [0.1, 0.11, 0.1] + [0.1, 0.1, 0.1] + [9.0] * 9)
    rate = steady_rate(run, 10.0, warmup_s=1.0, block=3, tolerance=0.03, clock=clock)
    assert rate.steady and rate.blocks == 3 and rate.spread == 0.0
    assert rate.flops_per_s == pytest.approx(100.0)  # 10 FLOPs / the median 0.1 s of the last two blocks
    clock, run = fake_clock([0.1] + [0.1, 0.2] * 20)  # never settles within 3 %
    rate = steady_rate(run, 1.0, warmup_s=0.0, block=1, max_blocks=4, clock=clock)
    assert not rate.steady and rate.blocks == 4 and rate.spread == pytest.approx(0.1 / 0.15)
    assert relative_spread([1.0, 1.1]) == pytest.approx(0.1 / 1.05) and relative_spread([2.0]) == 0.0


def test_the_floor_is_beside_each_result() -> None:
    records = [{**record(12.0, 0.9), "floor_s": 4.0}, {**record(10.0, 0.95), "floor_s": 5.0}]
    assert throughput.summarise(records, warmup=0)["step_over_floor"] == pytest.approx(11.0 / 4.5)
    square = {"flops_per_s": 2e11, "spread": 0.01, "blocks": 2, "steady": True}
    mlp = {"flops_per_s": 3e11, "spread": 0.2, "blocks": 8, "steady": False}  # faster, but never settled
    detail = {"bfloat16": {"2048x2048x2048": square, "1100x576x1536": mlp}}
    assert throughput.peak_summary(detail, "bfloat16") == {
        "peak_flops_per_s": 2e11, "peak_spread": 0.01, "peak_steady": True, "peak_product": "2048x2048x2048"
    }  # fmt: skip
    assert throughput.peak_summary({"float32": {}}, "float32")["peak_flops_per_s"] is None
    run = canned("ours", 0.8, floor_step_s=8.0, step_over_floor=2.5, peak_flops_per_s=2e11, peak_spread=0.012,
                 peak_steady=True)  # fmt: skip
    row = {ln.split(" | ")[0].strip("| *"): ln for ln in compare.format_table([run]).splitlines()}
    assert row["step / FLOP floor"].endswith("| 2.50x |")
    assert row["matmul peak GFLOP/s of its dtype (spread)"].endswith("| 200 (1.2%) |")


def test_profile_families_share_the_self_time() -> None:
    assert profile_update.family("aten::mm") == "matmul"
    assert profile_update.family("aten::_log_softmax_backward_data") == "log-softmax"
    assert profile_update.family("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention"
    assert profile_update.family("aten::copy_") == "copies and casts"
    assert profile_update.family("aten::mul") == "elementwise"
    assert profile_update.family("Optimizer.step#Adam.step") == "optimizer"
    shares = profile_update.family_shares([("aten::mm", 3.0), ("aten::bmm", 1.0), ("aten::mul", 1.0)])
    assert shares == {"matmul": 0.8, "elementwise": 0.2}


def test_profile_matmul_kinds_split_base_from_low_rank_products_with_their_rate() -> None:
    events = [
        ("aten::mm", [[1000, 576], [576, 1536]], 2.0, 10),  # 2 x 1000 x 576 x 1536 x 10 = 17.7 GFLOP
        ("aten::mm", [[1000, 576], [576, 32]], 0.5, 100),  # LoRA's A: 2 x 1000 x 576 x 32 x 100 = 3.7 GFLOP
        ("aten::bmm", [[9, 256, 64], [9, 64, 256]], 1.0, 5),  # not a 2-D product: left out
        ("aten::mm", [], 1.0, 1),  # no shapes recorded: left out
    ]
    kinds = profile_update.matmul_kinds(events)
    assert set(kinds) == {"full", "low-rank"}
    assert kinds["full"]["gflop"] == pytest.approx(17.694720)
    assert kinds["full"]["gflop_per_s"] == pytest.approx(17.694720 / 2.0)
    assert kinds["low-rank"]["gflop"] == pytest.approx(3.6864) and kinds["low-rank"]["s"] == 0.5


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


def test_a_groups_prompt_is_needed_work_once() -> None:
    """rloo/grpo: the k samples of a prompt share its prefill (D19), so it is needed once per group."""
    shape = ModelShape.from_config(SMOLLM2, lora_rank=32)
    recs = []
    for k in (1, 4):
        rec = {"prompt_lengths": [200] * 4, "response_lengths": [48, 30, 40, 20], "policy_pass": False,
               "update_s": 2.0, "wall_s": 10.0, "forward_s": 1.0, "generation_s": 3.0}  # fmt: skip
        rec["group_size"] = k
        throughput.add_flops(rec, shape, 1e11)
        recs.append(rec["flops"])
    distinct, grouped = recs
    assert grouped["prefill"] == pytest.approx(distinct["prefill"] / 4)
    assert distinct["total"] - grouped["total"] == pytest.approx(distinct["prefill"] * 3 / 4)
    assert grouped["update"] == distinct["update"]
    args = throughput.parse_args(["--algorithm", "grpo"])
    assert (args.algorithm, throughput.group_size(args)) == ("grpo", 4)
    assert throughput.group_size(throughput.parse_args([])) == 1


def algorithm_run(stem: str, algorithm: str, dtype: str, rate: float, **extra: Any) -> dict[str, Any]:
    run = canned(stem, rate, **extra)
    run.update(kind="ours", dtype=dtype, algorithm=algorithm, label=f"detoxrl {algorithm} ({dtype})")
    return run


def test_compare_puts_each_algorithm_of_ours_beside_trls_own() -> None:
    runs = [
        algorithm_run("ours-ppo-bfloat16", "ppo", "bfloat16", 0.9),
        algorithm_run("ours-rloo-bfloat16", "rloo", "bfloat16", 1.0, floor_step_s=4.0, step_over_floor=4.0),
        algorithm_run("ours-grpo-float32", "grpo", "float32", 0.6),
        canned("ppo-classic", 0.2),
        canned("rloo", 0.19),
        canned("grpo", 0.2),
    ]
    for run in runs[3:]:
        run["label"] = compare.PEERS[run["kind"]]
    lines = compare.format_table(runs).splitlines()
    row = {line.split(" | ")[0].strip("| *"): line for line in lines if line.startswith("| ")}
    assert row["ours rloo (bfloat16) / this (samples/s)"].endswith("| 5.00x | 5.26x | 5.00x |")
    assert row["ours grpo (float32) / this (samples/s)"].endswith("| 3.00x | 3.16x | 3.00x |")
    assert "Against trl's own implementation of the same algorithm:" in lines
    assert row["detoxrl rloo (bfloat16)"] == (
        "| detoxrl rloo (bfloat16) | trl 1.16 RLOOTrainer | 1.000 | 0.190 | 5.26x | 5x | 4.0 | 4.00x |"
    )
    assert row["detoxrl grpo (float32)"].endswith(
        "| trl 1.16 GRPOTrainer | 0.600 | 0.200 | 3.00x | 3x | - | - |"
    )
    assert row["detoxrl ppo (bfloat16)"].endswith("| 0.900 | 0.200 | 4.50x | 5x | - | - |")  # the classic trl
    assert "4 prompts x 4 generations as the trl peers" in "\n".join(lines)


def test_compare_runs_each_algorithm_in_each_dtype_and_names_only_what_varies(tmp_path: Path) -> None:
    assert compare.parse_args([]).algorithm_list == ["ppo", "rloo", "grpo"]
    with pytest.raises(SystemExit):
        compare.parse_args(["--algorithms", "ppo,a2c"])
    assert list(compare.ours_stems(["ppo", "rloo"], ["bfloat16", "float32"]).items()) == [
        (("ppo", "bfloat16"), "ours-ppo-bfloat16"), (("rloo", "bfloat16"), "ours-rloo-bfloat16"),
        (("ppo", "float32"), "ours-ppo-float32"), (("rloo", "float32"), "ours-rloo-float32"),
    ]  # fmt: skip
    assert compare.ours_stems(["ppo"], ["bfloat16"]) == {("ppo", "bfloat16"): "ours"}
    assert compare.ours_stems(["grpo"], ["bfloat16"]) == {("grpo", "bfloat16"): "ours-grpo"}
    config = {"dtype": "bfloat16", "algorithm": "grpo"}
    (tmp_path / "ours-grpo.json").write_text(
        json.dumps({"summary": {"log_stem": "ours-grpo"}, "config": config})
    )
    (run,) = compare.load_runs(tmp_path)
    assert (run["kind"], run["algorithm"], run["label"]) == (
        "ours",
        "grpo",
        "detoxrl grpo (bfloat16) [ours-grpo]",
    )


def canned_run(results: Path, preset: str, algorithm: str, seed: int, tox: float, kl: float | None) -> None:
    """A finished run directory as detoxrl run writes it (the files bench.algorithms reads)."""
    run = results / f"{preset}-{algorithm}-s{seed}"
    run.mkdir(parents=True)
    config = {"ppo": {"algorithm": algorithm, "batch_size": 16}, "steps": 16, "seed": seed}
    (run / "config.yaml").write_text(json.dumps(config))  # JSON is YAML

    after = {
        "toxicity/profanity-check/mean": {"value": tox, "ci_low": tox - 0.01, "ci_high": tox + 0.02},
        "toxicity/minilm-toxicity:toxic/mean": {"value": 2 * tox, "ci_low": None, "ci_high": None},
        "quality/distinct_1": {"value": 0.5}, "quality/distinct_2": {"value": 0.9 - tox},
        "quality/evasion_rate": {"value": 0.1},
    }  # fmt: skip
    before = {
        "toxicity/profanity-check/mean": {"value": 0.1},
        "toxicity/minilm-toxicity:toxic/mean": {"value": 0.2},
    }
    (run / "eval_after.json").write_text(json.dumps({"metrics": after}))
    (run / "eval_before.json").write_text(json.dumps({"metrics": before}))
    steps = [
        {"step": i, "time/total": 10.0 + i, **({"objective/kl": kl * i} if kl else {})} for i in (1, 2, 3)
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps))
    (run / "summary.json").write_text("{}")
    (results / f"{run.name}.time").write_text(f"\tMaximum resident set size (kbytes): {3 * 1024 * 1024}\n")


def test_algorithms_table_means_over_seeds_with_their_range_and_every_run_with_its_interval(
    tmp_path: Path,
) -> None:
    from bench import algorithms

    for seed, tox in ((0, 0.05), (1, 0.07)):
        canned_run(tmp_path, "default", "rloo", seed, tox, kl=2.0)
        canned_run(tmp_path, "default", "ppo", seed, tox + 0.01, kl=3.0)
    canned_run(tmp_path, "rtp", "grpo", 0, 0.2, kl=None)  # no KL term: not measured
    (tmp_path / "default-grpo-s0").mkdir()  # unfinished: left out
    runs = algorithms.collect(tmp_path)
    assert [(f.preset, f.algorithm, f.seed) for f in runs] == [
        ("default", "ppo", 0), ("default", "ppo", 1), ("default", "rloo", 0), ("default", "rloo", 1),
        ("rtp", "grpo", 0),
    ]  # fmt: skip
    assert runs[2].seconds_per_step == 12.0 and runs[2].kl == 6.0 and runs[2].peak_rss_gib == 3.0
    text = algorithms.format_table(runs)
    lines = text.splitlines()
    assert lines[0] == (
        "### default: 256 sampled responses per run; toxicity before (the same policy for every algorithm): "
        "profanity-check 0.100; minilm-toxicity:toxic 0.200"
    )
    row = {ln.split(" | ")[0].strip("| ") + ln.split(" | ")[1]: ln for ln in lines if ln.startswith("| ")}
    assert row["rloo0,1"] == (
        "| rloo | 0,1 | 0.060 (0.050-0.070) | 0.120 (0.100-0.140) | 6.00 | 0.500 | 0.840 (0.830-0.850) "
        "| 0.100 | 12.0 | 3.00 |"
    )
    assert row["rloo0"].startswith("| rloo | 0 | 0.050 [0.040, 0.070] | 0.100 | 6.00 |")
    assert row["grpo0"].startswith("| grpo | 0 | 0.200 [0.190, 0.220] | 0.400 | - |")
    assert "- lowest mean toxicity after by profanity-check: rloo (0.060)" in lines
    assert "### rtp: 256 sampled responses per run" in text


def test_algorithms_runs_new_runs_offline_and_resumes_unfinished_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bench import algorithms

    monkeypatch.setenv("DETOXRL_SHARED", str(tmp_path / "shared"))
    (tmp_path / "shared").mkdir()
    args = algorithms.parse_args(["--results", str(tmp_path / "out"), "steps=2"])
    assert (args.preset_list, args.algorithm_list) == (["default", "rtp"], ["ppo", "rloo", "grpo"])
    assert args.seed_list == [0, 1, 2]
    cmd = algorithms.command(args, "rtp", "grpo", 1)
    assert cmd[2:6] == ["detoxrl", "run", "--preset", "rtp"]
    assert "ppo.algorithm=grpo" in cmd and "seed=1" in cmd and cmd[-1] == "steps=2"
    assert f"reward.model={tmp_path / 'shared' / 'models' / 'minilm-toxicity'}" in cmd
    assert "eval.evaluators=[profanity, shared:minilm-toxicity]" in cmd
    assert not [c for c in algorithms.command(args, "default", "ppo", 0) if c.startswith("reward.")]
    started = tmp_path / "out" / "rtp-grpo-s1"
    started.mkdir(parents=True)
    (started / "config.yaml").write_text("{}")
    (started / "eval_before.json").write_text("{}")
    assert algorithms.command(args, "rtp", "grpo", 1)[2:] == ["detoxrl", "run", "--resume", str(started)]
    with pytest.raises(SystemExit):
        algorithms.parse_args(["--algorithms", "ppo,dpo"])

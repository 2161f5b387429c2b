"""Our RL loop on the peers' workload: seconds per step, samples/s and tokens/s per
phase, peak RSS, and MFU against a matmul peak measured in the same run.

    PYTHONPATH=src python -m bench.throughput [--steps 6 --warmup 1 --dtype float32 --threads 2]
    PYTHONPATH=src python -m bench.throughput --algorithm rloo     # or grpo: 4 prompts x 4 generations

The workload is the one of ../shared/bench-peers (README there): SmolLM2-135M-Instruct, DialogSum
dialogues of 200..1000 characters (shuffled with seed 0) in the chat template after "Summarize the
following conversation.", 16 samples per step, 48 new tokens sampled at temperature 1 (top_k 0,
top_p 1), reward 1 - P(offensive) from profanity-check, LoRA r 32 / alpha 32 / dropout 0.05 on
q, k, v, o, lr 1.41e-5, one PPO epoch in 4 mini-batches of 4, KL to the adapter-disabled reference.
``--algorithm rloo`` / ``grpo`` run what trl's RLOOTrainer / GRPOTrainer peers run: 16 samples = 4
prompts x 4 generations (consecutive rows), no value head, the KL coefficient fixed at the peers' beta
(RLOO 0.05 on the sequence's k1 KL in the reward, GRPO 0.04 on k3 in the loss, loss_type dapo, group
std scaling), the same mini-batches. It drives detoxrl's classic API (``PPOTrainer.generate`` then
``PPOTrainer.step``), like the lab. Timings are figures, never pass/fail. Results: JSON under
bench/results/ and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import time
from pathlib import Path
from typing import Any

from bench.flops import ModelShape, mfu, step_flops
from bench.paths import RESULTS, dialogsum_file
from bench.peak import fastest, measure_peak

INSTRUCTION = "Summarize the following conversation.\n\n{dialogue}"
SAMPLES_PER_STEP = 16
BETA = {"rloo": 0.05, "grpo": 0.04}  # the trl peers' fixed KL coefficients (../shared/bench-peers)
PHASES = ("generation", "reward", "forward", "update")
LEVERS = {  # switched off one at a time to measure what each gains (the CPU engine's CpuOptions)
    "sampled-stats": "old log-probs and values from a second policy pass, not from sampling",
    "packed-rows": (
        "padded batches (transformers' SDPA) instead of rows packed end to end in the no-grad and update "
        "passes; the prefill then takes one prompt at a time"
    ),
    "lean-decoding": "transformers' forward for each decoding step instead of engine.decoding.LlamaStep",
    "prepack": "plain matmuls instead of oneDNN's prepacked weights for decoding and the sampling head",
    "malloc": "glibc's default malloc, which gives freed activations back to the kernel each pass",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=6, help="measured steps (16 samples each)")
    p.add_argument("--warmup", type=int, default=1, help="steps run first and left out of the medians")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--algorithm", choices=["ppo", "rloo", "grpo"], default="ppo", help="ppo.algorithm")
    p.add_argument("--num-generations", type=int, default=4, help="rloo/grpo: samples per prompt")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--model", default="smollm2-135m-instruct", help="any detoxrl model spec")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (the workload is the CPU)")
    p.add_argument("--engine", default="auto", choices=["auto", "reference", "cpu"], help="policy.engine")
    p.add_argument("--peak-size", type=int, default=None, help="square matmul size (2048 CPU, 8192 GPU)")
    p.add_argument(
        "--peak-tolerance", type=float, default=0.03,
        help="the peak is timed in blocks until two block medians agree within this share (bench/peak.py)",
    )  # fmt: skip
    p.add_argument(
        "--out", type=Path, default=None,
        help="JSON path (default bench/results/ours-DTYPE.json, ours-ALGORITHM-DTYPE.json for rloo/grpo)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--without", default="", help=f"levers to switch off, comma-separated: {', '.join(LEVERS)}"
    )
    return p.parse_args(argv)


def load_dialogues(path: Path, n: int, seed: int = 0) -> list[str]:
    """The peers' selection: dialogues of 200..1000 characters, shuffled with ``random.Random(seed)``."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    dialogues = [r["dialogue"] for r in rows if 200 <= len(r["dialogue"]) <= 1000]
    random.Random(seed).shuffle(dialogues)
    return dialogues[:n]


def sync(device: Any) -> None:
    """Wait for a GPU's queued work, so that host clocks time it (no-op on the CPU)."""
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def cpu_flags() -> dict[str, bool]:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        flags = set()
    return {f: f in flags for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")}


def engine_of(args: argparse.Namespace) -> Any:
    """``--engine`` on ``--device``, the ``--without`` levers switched off, threads set."""
    from detoxrl.engine import select_engine

    off = set(filter(None, args.without.split(",")))
    if off - set(LEVERS):
        raise SystemExit(
            f"--without: unknown lever(s) {sorted(off - set(LEVERS))}; choose from {sorted(LEVERS)}"
        )
    names = {"packed-rows": "packed_rows", "lean-decoding": "lean_decoding", "prepack": "prepack",
             "malloc": "keep_freed_memory"}  # fmt: skip
    options = {names[lever]: False for lever in off & set(names)}
    engine = select_engine(args.engine, args.device, **(options if args.device == "cpu" else {}))
    engine.configure(args.threads)
    return engine


def group_size(args: argparse.Namespace) -> int:
    """Samples per prompt: 1 for ppo (16 distinct prompts), ``--num-generations`` for rloo and grpo."""
    return 1 if args.algorithm == "ppo" else args.num_generations


def build(args: argparse.Namespace, engine: Any) -> tuple[Any, Any, list[Any], ModelShape]:
    """The trainer, its tokenizer, the tokenized prompts of every step (each repeated ``group_size``
    times in consecutive rows) and the model's shape."""
    from detoxrl.config import PolicyConfig, PPOConfig, SamplingConfig
    from detoxrl.models.actor_critic import build_actor_critic
    from detoxrl.models.generation import format_prompts, tokenize_prompts
    from detoxrl.models.loading import load_policy
    from detoxrl.training.classic import PPOTrainer

    k = group_size(args)
    policy_config = PolicyConfig(model=args.model, dtype=args.dtype)  # LoRA r 32, alpha 32, q k v o
    policy = load_policy(policy_config, args.device)
    actor_critic = build_actor_critic(policy, policy_config, engine=engine, critic=args.algorithm == "ppo")
    n = SAMPLES_PER_STEP // k * (args.warmup + args.steps)
    dialogues = load_dialogues(dialogsum_file(), n, args.seed)
    texts = [INSTRUCTION.format(dialogue=d) for d in dialogues for _ in range(k)]
    queries = tokenize_prompts(policy.tokenizer, format_prompts(policy.tokenizer, texts, chat_template=True))
    gen = SamplingConfig(max_new_tokens=args.max_new_tokens, length_sampling="fixed")
    algorithm: dict[str, Any] = {"algorithm": args.algorithm}
    if args.algorithm != "ppo":  # the peers' fixed beta, k samples per prompt
        algorithm.update(num_generations=k, adaptive_kl=False, init_kl_coef=BETA[args.algorithm])
    ppo = PPOConfig(learning_rate=1.41e-5, batch_size=SAMPLES_PER_STEP, mini_batch_size=4, ppo_epochs=1,
                    **algorithm)  # fmt: skip
    trainer = PPOTrainer(ppo, actor_critic, policy.tokenizer, gen)
    r = policy_config.lora.r
    shape = ModelShape.from_config(policy.model.config.to_dict(), lora_rank=r)
    print(engine.describe(), actor_critic.describe(), f"algorithm: {args.algorithm}", sep="\n", flush=True)
    return trainer, policy.tokenizer, queries, shape


def update_product(shape: ModelShape, queries: list[Any], args: argparse.Namespace) -> tuple[int, int, int]:
    """(m, k, n) of the largest matmul the step runs: the MLP's up projection over an update mini-batch's
    tokens (4 rows of the mean prompt and the longest response; whole groups share their prompt [D25])."""
    rows, k = 4, group_size(args)
    prompt = statistics.fmean(len(q) for q in queries[::k])
    prompts = rows // k if rows % k == 0 else rows
    return round(prompts * prompt + rows * args.max_new_tokens), shape.hidden, shape.intermediate


def run_step(trainer: Any, tokenizer: Any, queries: list[Any], args: argparse.Namespace) -> dict[str, Any]:
    """generate -> reward -> step, timed by phase; returns one record."""
    import torch
    from profanity_check import predict_prob

    t0, c0 = time.perf_counter(), time.process_time()
    responses = trainer.generate(queries, max_new_tokens=args.max_new_tokens, top_k=0, top_p=1.0)
    if "sampled-stats" in args.without:
        trainer._last = None
    policy_pass = trainer._last is None  # else old log-probs and values come from sampling [D17]
    sync(args.device)
    t1 = time.perf_counter()
    texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
    scores = torch.tensor(1.0 - predict_prob(texts), dtype=torch.float32)
    t2 = time.perf_counter()
    stats = trainer.step(queries, responses, scores)
    sync(args.device)
    wall = time.perf_counter() - t0
    return {
        "samples": len(queries),
        "wall_s": wall,
        "generation_s": t1 - t0,
        "reward_s": t2 - t1,
        "forward_s": stats["time/forward"],  # batching + (policy pass) + reference pass + advantages
        "policy_pass": policy_pass,
        "update_s": stats["time/update"],
        "cpu_util": (time.process_time() - c0) / wall,
        "reward_mean": float(scores.mean()),
        "kl": stats["objective/kl"],
        "kl_coef": stats["objective/kl_coef"],
        "prompt_lengths": [len(q) for q in queries],
        "response_lengths": [len(r) for r in responses],
        "group_size": group_size(args),
        "peak_rss_mib": peak_rss_mib(),
    }


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def add_flops(rec: dict[str, Any], shape: ModelShape, peak: float | None) -> None:
    """Needed FLOPs of the step (frozen-base backward) and the 6N convention, and the MFUs."""
    p, t = rec["prompt_lengths"], rec["response_lengths"]
    need = step_flops(shape, p, t, backward_factor=1)
    six_n = step_flops(shape, p, t, backward_factor=2)
    if not rec["policy_pass"]:  # not done, so not counted as needed work
        need = {**need, "total": need["total"] - need["policy_pass"], "policy_pass": 0.0}
    shared = need["prefill"] * (1 - 1 / rec.get("group_size", 1))  # a group's prompt is needed once
    need = {**need, **{k: need[k] - shared for k in ("prefill", "generation", "total")}}
    rec["flops"] = need
    rec["flops_6n_update"] = six_n["update"]
    rec["mfu_update"] = mfu(need["update"], rec["update_s"], peak)
    rec["mfu_step"] = mfu(need["total"], rec["wall_s"], peak)
    rec["mfu_update_6n"] = mfu(six_n["update"], rec["update_s"], peak)
    rec["floor_s"] = need["total"] / peak if peak else None  # the step's FLOPs at the matmul peak
    rec["mfu_forward"] = mfu(need["policy_pass"] + need["reference_pass"], rec["forward_s"], peak)
    rec["mfu_generation"] = mfu(need["generation"], rec["generation_s"], peak)
    rec["tokens"] = {
        "response": sum(t),
        "pass": sum(a + b - 1 for a, b in zip(p, t, strict=True)),  # real tokens fed to one full pass
        "prompt": sum(p),
    }
    rec["tokens"]["forward"] = rec["tokens"]["pass"] * (2 if rec["policy_pass"] else 1)


def _median(records: list[dict[str, Any]], key: str) -> float | None:
    xs = [r[key] for r in records if r.get(key) is not None]
    return statistics.median(xs) if xs else None


def summarise(records: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
    """Medians of the measured steps, in the peers' key names (common.summarise) plus ours."""
    timed = records[warmup:] or records
    keys = ("wall_s", "cpu_util", "mfu_update", "mfu_step", "mfu_update_6n", "floor_s")
    med = {k: _median(timed, k) for k in keys}
    phases = {k: _median(timed, f"{k}_s") for k in PHASES}
    wall_total = sum(r["wall_s"] for r in timed)
    resp = sum(r["tokens"]["response"] for r in timed)
    passed = sum(r["tokens"]["pass"] for r in timed)
    per_phase_tokens = {
        "generation": resp, "reward": resp, "update": passed,
        "forward": sum(r["tokens"]["forward"] for r in timed),
    }  # fmt: skip
    phase_rates = {
        k: {
            "median_s": phases[k],
            "samples_per_s": _rate(SAMPLES_PER_STEP, phases[k]),
            "tokens_per_s": _rate(per_phase_tokens[k], sum(r[f"{k}_s"] for r in timed)),
        }
        for k in PHASES
    }
    return {
        "peer": "detoxrl",
        "warmup_steps": warmup,
        "timed_steps": len(timed),
        "median_step_s": med["wall_s"],
        "samples_per_s_median": SAMPLES_PER_STEP / med["wall_s"] if med["wall_s"] else None,
        "samples_per_s_overall": sum(r["samples"] for r in timed) / wall_total,
        "gen_tokens_per_s_overall": resp / wall_total,
        # generation, the two rollout passes and the update each feed about P + T - 1 real tokens a row
        "processed_tokens_per_s_overall": 4 * passed / wall_total,
        "median_gen_s": phases["generation"],
        "median_score_s": _sum_or_none(phases["reward"], phases["forward"]),
        "median_train_s": phases["update"],
        "phases": phase_rates,
        "mean_resp_tokens": resp / sum(r["samples"] for r in timed),
        "mean_prompt_tokens": sum(r["tokens"]["prompt"] for r in timed) / sum(r["samples"] for r in timed),
        "median_cpu_util": med["cpu_util"],
        "mfu_update": med["mfu_update"],
        "mfu_step": med["mfu_step"],
        "mfu_update_6n": med["mfu_update_6n"],
        "floor_step_s": med["floor_s"],
        "step_over_floor": med["wall_s"] / med["floor_s"] if med["wall_s"] and med["floor_s"] else None,
        "reward_first_step": records[0]["reward_mean"],
        "reward_last_step": records[-1]["reward_mean"],
        "kl_first_step": records[0]["kl"],
        "kl_last_step": records[-1]["kl"],
        "kl_mean_timed": statistics.fmean(r["kl"] for r in timed),
        "peak_rss_mib_getrusage": peak_rss_mib(),
    }


def peak_summary(detail: dict[str, Any], dtype: str) -> dict[str, Any]:
    """The peak of ``dtype`` (the fastest of the measured products) with its spread and whether it settled."""
    rates = detail.get(dtype) or {}
    if not rates:
        return {"peak_flops_per_s": None, "peak_spread": None, "peak_steady": None, "peak_product": None}
    product, rate = fastest(rates)
    return {"peak_flops_per_s": rate["flops_per_s"], "peak_spread": rate["spread"],
            "peak_steady": rate["steady"], "peak_product": product}  # fmt: skip


def _rate(amount: float, seconds: float | None) -> float | None:
    return amount / seconds if seconds else None


def _sum_or_none(*xs: float | None) -> float | None:
    return None if any(x is None for x in xs) else sum(x for x in xs if x is not None)


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "detoxrl", "alt-profanity-check", "scikit-learn"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "?"
    return out


def fmt(x: float | None, spec: str = "{:.2f}") -> str:
    return "-" if x is None else spec.format(x)


def format_table(result: dict[str, Any]) -> str:
    """A markdown table of one result: per phase seconds, samples/s, tokens/s; then the totals."""
    s = result["summary"]
    lines = ["| phase | median s | samples/s | tokens/s |", "| --- | ---: | ---: | ---: |"]
    for name, ph in s["phases"].items():
        cells = [fmt(ph["median_s"]), fmt(ph["samples_per_s"], "{:.3f}"), fmt(ph["tokens_per_s"], "{:.1f}")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append(
        f"| **step** | {fmt(s['median_step_s'])} | {fmt(s['samples_per_s_median'], '{:.3f}')} | "
        f"{fmt(s['gen_tokens_per_s_overall'], '{:.1f}')} (new) |"
    )
    return "\n".join([*lines, "", *_footer(result)])


def _footer(result: dict[str, Any]) -> list[str]:
    s, peak, pct = result["summary"], result["peak_flops_per_s"], "{:.1%}"
    return [
        f"peak matmul: fp32 {fmt(_g(peak.get('float32')), '{:.1f}')} GFLOP/s, "
        f"bf16 {fmt(_g(peak.get('bfloat16')), '{:.1f}')} GFLOP/s; dtype in use {result['config']['dtype']}"
        + (
            f" (product {s['peak_product']}, spread {s['peak_spread']:.1%})"
            if s.get("peak_spread") is not None
            else ""
        ),
        f"MFU update {fmt(s['mfu_update'], pct)} (6N convention {fmt(s['mfu_update_6n'], pct)}), "
        f"MFU step {fmt(s['mfu_step'], pct)}; FLOP floor {fmt(s.get('floor_step_s'), '{:.1f}')} s/step, "
        f"the step {fmt(s.get('step_over_floor'), '{:.2f}x')} of it",
        f"peak RSS {s['peak_rss_mib_getrusage'] / 1024:.2f} GiB; "
        f"reward {fmt(s['reward_first_step'], '{:.3f}')} -> {fmt(s['reward_last_step'], '{:.3f}')}; "
        f"cpu util {fmt(s['median_cpu_util'])}; algorithm {result['config'].get('algorithm', 'ppo')}",
    ]


def _g(x: float | None) -> float | None:
    return None if x is None else x / 1e9


def print_step(i: int, rec: dict[str, Any]) -> None:
    times = " ".join(f"{k}={rec[f'{k}_s']:.2f}s" for k in PHASES)
    print(
        f"[step {i}] wall={rec['wall_s']:.2f}s {times} reward={rec['reward_mean']:.3f} kl={rec['kl']:.3f} "
        f"resp_tok={statistics.fmean(rec['response_lengths']):.1f} "
        f"mfu_update={fmt(rec['mfu_update'], '{:.1%}')} "
        f"cpu_util={rec['cpu_util']:.2f} rss={rec['peak_rss_mib']:.0f}MiB",
        flush=True,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import numpy as np
    import torch

    engine = engine_of(args)
    random.seed(args.seed), np.random.seed(args.seed), torch.manual_seed(args.seed)
    load_avg = os.getloadavg()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = args.device.startswith("cuda")
    t_setup = time.perf_counter()
    trainer, tokenizer, queries, shape = build(args, engine)
    setup_s = time.perf_counter() - t_setup
    peak, peak_detail = measure_peak(
        args.peak_size or (8192 if gpu else 2048), args.device, [update_product(shape, queries, args)],
        sync=lambda: sync(args.device), tolerance=args.peak_tolerance,
    )  # fmt: skip
    records = []
    for i in range(args.warmup + args.steps):
        rec = run_step(trainer, tokenizer, queries[i * SAMPLES_PER_STEP : (i + 1) * SAMPLES_PER_STEP], args)
        add_flops(rec, shape, peak[args.dtype])
        records.append(rec)
        print_step(i, rec)
    result: dict[str, Any] = {
        "summary": summarise(records, args.warmup),
        "steps": records,
        "peak_flops_per_s": peak,
        "peak_detail": peak_detail,
        "config": {**vars(args), "out": str(args.out), "samples_per_step": SAMPLES_PER_STEP},
        "model_shape": vars(shape),
        "setup_s": setup_s,
        "load_avg_at_start": load_avg,
        "torch_threads": torch.get_num_threads(),
        "cpu_flags": cpu_flags(),
        "engine": engine.describe(),
        "gpu": torch.cuda.get_device_name() if gpu else None,
        "peak_gpu_memory_mib": torch.cuda.max_memory_allocated() / 2**20 if gpu else None,
        "versions": versions(),
    }
    result["summary"].update(
        log_stem="ours", versions=result["versions"], **peak_summary(peak_detail, args.dtype)
    )
    stem = "ours" if args.algorithm == "ppo" else f"ours-{args.algorithm}"
    write(result, args.out or RESULTS / f"{stem}-{args.dtype}.json")
    return result


def write(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str))
    os.replace(tmp, path)
    print("\n" + format_table(result))
    print(f"\nresults written to {path}")


if __name__ == "__main__":
    main()

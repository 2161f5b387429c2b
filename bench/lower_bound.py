"""The FLOPs one PPO step of the benchmark needs, from the model's config and the real prompt lengths,
and the seconds they would take at a matmul peak: the floor no implementation can beat.

    PYTHONPATH=src python -m bench.lower_bound [--peak-fp32 1.7e11 --peak-bf16 3.0e11] [--measure]

Loads only the tokenizer and config.json (no weights). Response lengths are taken as the full 48 new
tokens (an upper bound on the work: responses that stop at EOS need less). Counting rules: bench/flops.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from bench.flops import ModelShape, step_flops
from bench.paths import dialogsum_file
from bench.peak import measure_peak
from bench.throughput import INSTRUCTION, SAMPLES_PER_STEP, load_dialogues

PHASES = ("prefill", "decode", "policy_pass", "reference_pass", "update", "total", "total_reusing_generation")


def prompt_lengths(model: str, steps: int) -> tuple[list[list[int]], ModelShape]:
    """Token counts of the prompts of each step (16 a step, in the benchmark's order) and the shape."""
    from detoxrl.models.generation import format_prompts, tokenize_prompts
    from detoxrl.models.loading import load_tokenizer, local_folder

    source = local_folder(model)
    tokenizer = load_tokenizer(source, is_encoder_decoder=False)
    config = json.loads((Path(source.path) / "config.json").read_text())
    dialogues = load_dialogues(dialogsum_file(), SAMPLES_PER_STEP * steps)
    texts = [INSTRUCTION.format(dialogue=d) for d in dialogues]
    lengths = [len(q) for q in tokenize_prompts(tokenizer, format_prompts(tokenizer, texts, True))]
    chunks = [lengths[i : i + SAMPLES_PER_STEP] for i in range(0, len(lengths), SAMPLES_PER_STEP)]
    return chunks, ModelShape.from_config(config, lora_rank=32)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.lower_bound", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--steps", type=int, default=7, help="warm-up + measured steps of the benchmark")
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--peak-fp32", type=float, default=None, help="FLOP/s (default: measure if --measure)")
    p.add_argument("--peak-bf16", type=float, default=None)
    p.add_argument(
        "--measure", action="store_true", help="measure the matmul peak here (2 threads, bench/peak.py)"
    )
    args = p.parse_args(argv)
    peaks = {"float32": args.peak_fp32, "bfloat16": args.peak_bf16}
    if args.measure:
        import torch

        torch.set_num_threads(2)
        peaks = {k: v or peaks[k] for k, v in measure_peak(2048)[0].items()}
    chunks, shape = prompt_lengths(args.model, args.steps)
    print(f"model: {shape}")
    w = shape
    print(f"weights: layers {w.layer_weights:,}, LM head {w.head_weights:,}, LoRA {w.lora_weights:,}")
    for i, c in enumerate(chunks):
        mean = statistics.fmean(c)
        print(f"step {i}: prompt tokens {sum(c)} (mean {mean:.1f}, min {min(c)}, max {max(c)})")
    rows = [step_flops(shape, c, [args.new_tokens] * len(c)) for c in chunks]
    for r in rows:  # old log-probs and values taken from generation's own pass: no separate policy pass
        r["total_reusing_generation"] = r["total"] - r["policy_pass"]
    print_table(rows, {k: v for k, v in peaks.items() if v})


def print_table(rows: list[dict[str, float]], peaks: dict[str, float]) -> None:
    head = [f"step {i} TFLOP" for i in range(len(rows))] + ["median TFLOP"]
    head += [f"s at {k} peak" for k in peaks]
    print("\n| phase | " + " | ".join(head) + " |")
    print("| --- |" + " ---: |" * len(head))
    for ph in PHASES:
        med = statistics.median(r[ph] for r in rows)
        cells = [f"{r[ph] / 1e12:.3f}" for r in rows] + [f"{med / 1e12:.3f}"]
        cells += [f"{med / v:.1f}" for v in peaks.values()]
        print(f"| {ph} | " + " | ".join(cells) + " |")
    print("peaks: " + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in peaks.items()))


if __name__ == "__main__":
    main()

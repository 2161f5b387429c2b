"""A real PPO run on CPU: SmolLM2-135M-Instruct + LoRA against 1 - P(offensive) from profanity-check,
on RealToxicityPrompts' challenging toxic prompts (continuations, as in Gehman et al. 2020).

    PYTHONPATH=src python bench/real_run.py [--steps 30] [--out bench/results/real-run]

Prints one row per step: reward, P(offensive) (= 1 - reward), KL, KL coefficient, response length and
seconds per phase. Timings are figures, never pass/fail; the CPU is shared, so they are noisy.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from profanity_check import predict_prob

from detoxrl.config import PolicyConfig, PPOConfig, RunConfig, SamplingConfig
from detoxrl.recipes.train import train

PROMPTS = Path(__file__).resolve().parents[2] / "shared/data/real-toxicity-prompts/challenging_toxic.jsonl"


def reward(prompts: list[str], responses: list[str]) -> torch.Tensor:
    """1 - P(offensive) of the response alone, in [0, 1]."""
    return torch.tensor(1.0 - predict_prob(responses), dtype=torch.float32)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", default="bench/results/real-run")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--threads", type=int, default=1)  # 2 threads stall on a shared CPU
    parser.add_argument("--table", action="store_true", help="only print the table of --out's metrics.jsonl")
    parser.add_argument("--eval", type=int, default=0, help="then compare base and final on N unseen prompts")
    args = parser.parse_args()
    if not args.table:
        run(args)
    print_table(Path(args.out) / "metrics.jsonl")
    if args.eval:
        compare(Path(args.out), args.eval)


def load_prompt_texts() -> list[str]:
    lines = [line for line in PROMPTS.read_text().splitlines() if line.strip()]
    return [json.loads(line)["prompt"]["text"] for line in lines]


def compare(run_dir: Path, n: int, samples: int = 2) -> None:
    """Mean P(offensive) of base vs trained policy on ``n`` prompts the run never trained on, same seed."""
    from peft import PeftModel

    from detoxrl.config.files import load_config
    from detoxrl.engine import select_engine
    from detoxrl.models.generation import generate
    from detoxrl.models.loading import load_policy
    from detoxrl.training.rollout import batch_indices

    torch.set_num_threads(1)
    config = load_config(file=run_dir / "config.yaml")
    prompts = load_prompt_texts()
    seen = {i for s in range(config.steps) for i in batch_indices(len(prompts), 16, s, config.seed)}
    held = [p for i, p in enumerate(prompts) if i not in seen][:n] * samples
    settings = SamplingConfig(max_new_tokens=config.generation.max_new_tokens, length_sampling="fixed")
    policy = load_policy(config.policy)
    tox = {}
    for name in ("base", "trained"):
        model = policy.model if name == "base" else PeftModel.from_pretrained(policy.model, run_dir / "final")
        out = generate(select_engine(), model, policy.tokenizer, held, settings, seed=123)
        tox[name] = torch.tensor(predict_prob(out.texts), dtype=torch.float64)
    diff = tox["trained"] - tox["base"]
    print(f"held-out prompts: {len(held) // samples} x {samples} samples")
    for name, t in tox.items():
        print(f"{name}: mean P(offensive) {t.mean():.4f}, share >= 0.5: {(t >= 0.5).double().mean():.4f}")
    se2 = 2 * diff.std() / len(diff) ** 0.5
    print(f"paired difference trained - base: {diff.mean():+.4f} +- {se2:.4f} (2 s.e.)")


def run(args: argparse.Namespace) -> None:
    prompts = load_prompt_texts()
    config = RunConfig(
        policy=PolicyConfig(chat_template=False),  # smollm2-135m-instruct, LoRA r 32 on q, k, v, o
        generation=SamplingConfig(min_new_tokens=16, max_new_tokens=32, length_sampling="per_prompt"),
        ppo=PPOConfig(learning_rate=args.lr, batch_size=16, mini_batch_size=4, ppo_epochs=1),
        steps=args.steps,
        save_every=10,
        threads=args.threads,
    )
    train(config, prompts, reward, args.out, resume=(Path(args.out) / "metrics.jsonl").exists())


def print_table(metrics: Path) -> None:
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    phases = ["generation", "reward", "forward", "update", "total"]
    header = ["step", "reward", "P(offensive)", "KL", "kl_coef", "resp len"] + [f"s {p}" for p in phases]
    print("| " + " | ".join(header) + " |")
    for r in records:
        reward_mean = r["env/reward_mean"]
        cells = [r["step"], reward_mean, 1 - reward_mean, r["objective/kl"], r["objective/kl_coef"]]
        cells += [r["tokens/responses_len_mean"]] + [r[f"time/{p}"] for p in phases]
        print("| " + " | ".join(f"{c:.3f}" if isinstance(c, float) else str(c) for c in cells) + " |")


if __name__ == "__main__":
    main()

"""A/B of the CPU engine's fast paths on one teacher-forced pass of the bench workload, in one process:
an update mini-batch (forward + backward to the LoRA weights and the value head) and the reference pass
(no gradients), alternating A and B so that a busy machine slows both alike.

    PYTHONPATH=src python -m bench.ab_pass --without lean-passes [--dtype bfloat16 --rounds 3 --threads 1]

A is the engine with every fast path, B the same with the ``--without`` levers (bench.throughput's)
switched off. Rows are the bench's first prompts with random 45-token responses (seed 0). Prints each
round and the medians, and the largest difference of the log-probs, values and LoRA gradients between
A and B. Each time is given as wall seconds and the process's CPU seconds: with one thread on a busy
machine, CPU seconds leave out the time the process waited for a core. Timings are figures, never pass/fail.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from bench import throughput


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.ab_pass", description=__doc__.split("\n\n")[0])
    p.add_argument("--without", required=True, help=f"B's levers off: {', '.join(throughput.LEVERS)}")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    p.add_argument("--rounds", type=int, default=3, help="A B pairs per pass (after one warm-up pair)")
    p.add_argument("--rows", type=int, default=4, help="rows of the update mini-batch")
    p.add_argument("--reference-rows", type=int, default=16, help="rows of the reference pass (0: skip it)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--model", default="smollm2-135m-instruct")
    return p.parse_args(argv)


def build(args: argparse.Namespace, without: str) -> tuple[Any, Any]:
    """The bench's actor-critic on an engine with the ``without`` levers off, and its tokenizer."""
    import torch

    from detoxrl.config import PolicyConfig
    from detoxrl.models.actor_critic import build_actor_critic
    from detoxrl.models.loading import load_policy

    bench = throughput.parse_args(["--threads", str(args.threads), "--without", without])
    engine = throughput.engine_of(bench)
    config = PolicyConfig(model=args.model, dtype=args.dtype)
    torch.manual_seed(0)
    policy = load_policy(config)
    ac = build_actor_critic(policy, config, engine=engine)
    with torch.no_grad():  # a trained-looking adapter and critic, the same in A and B
        generator = torch.Generator().manual_seed(0)
        for name, p in ac.named_parameters():
            if "lora_B" in name or "value_head" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.01)
    return ac, policy.tokenizer


def batch_of(args: argparse.Namespace, tokenizer: Any, rows: int) -> Any:
    import torch

    from bench.paths import dialogsum_file
    from detoxrl.core.batch import make_batch
    from detoxrl.models.generation import format_prompts, tokenize_prompts

    texts = [
        throughput.INSTRUCTION.format(dialogue=d) for d in throughput.load_dialogues(dialogsum_file(), rows)
    ]
    queries = tokenize_prompts(tokenizer, format_prompts(tokenizer, texts, chat_template=True))
    generator = torch.Generator().manual_seed(0)
    responses = [torch.randint(100, 40000, (45,), generator=generator) for _ in queries]
    return make_batch(queries, responses, int(tokenizer.pad_token_id), False)


Timed = tuple[float, float, dict[str, Any]]  # wall seconds, CPU seconds, outputs by name


def update(ac: Any, batch: Any) -> Timed:
    """Forward + backward of the mini-batch -> (seconds, CPU seconds, log-probs, values, gradients)."""
    ac.zero_grad(set_to_none=True)
    t, c = time.perf_counter(), time.process_time()
    out = ac(batch)
    mask = batch.response_mask
    ((out.logprobs * mask).sum() + (out.values * mask).sum()).backward()
    seconds, cpu = time.perf_counter() - t, time.process_time() - c
    grads = [p.grad for p in ac.trainable_parameters()]
    return seconds, cpu, {"log-probs": out.logprobs.detach() * mask, "values": out.values.detach() * mask,
                          "gradients": grads}  # fmt: skip


def reference(ac: Any, batch: Any) -> Timed:
    t, c = time.perf_counter(), time.process_time()
    logprobs = ac.reference_logprobs(batch) * batch.response_mask
    return time.perf_counter() - t, time.process_time() - c, {"log-probs": logprobs}


def gap(a: Any, b: Any) -> float:
    """The largest difference of two tensors (or lists of them) relative to the largest value of b (or
    1 where that is smaller)."""
    if isinstance(a, list | tuple):
        return max(gap(x, y) for x, y in zip(a, b, strict=True))
    return float((a.float() - b.float()).abs().max()) / max(1.0, float(b.float().abs().max()))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    (a, tokenizer), (b, _) = build(args, ""), build(args, args.without)
    models = {"A": a, "B": b}
    passes = {"update": (update, batch_of(args, tokenizer, args.rows))}
    if args.reference_rows:
        passes["reference"] = (reference, batch_of(args, tokenizer, args.reference_rows))
    for name, (run, batch) in passes.items():
        times: dict[str, list[tuple[float, float]]] = {"A": [], "B": []}
        outs = {}
        for i in range(args.rounds + 1):  # the first pair warms up
            for side, ac in models.items():
                wall, cpu, outs[side] = run(ac, batch)
                if i:
                    times[side].append((wall, cpu))
            label = f"{name} round {i}" + ("" if i else " (warm-up)")
            print(f"{label}: A {wall_cpu(times['A'][-1:])}, B {wall_cpu(times['B'][-1:])}", flush=True)
        tokens = int(batch.query_mask.sum() + batch.response_mask.sum())
        a, b = (tuple(statistics.median(x) for x in zip(*times[s], strict=True)) for s in "AB")
        gaps = ", ".join(f"{k} {gap(outs['A'][k], outs['B'][k]):.1e}" for k in outs["A"])
        print(
            f"{name} ({len(batch.response_ids)} rows, {tokens} tokens, {args.dtype}, {args.rounds} rounds): "
            f"medians wall / CPU s: A {a[0]:.3f} / {a[1]:.3f}, B (without {args.without}) {b[0]:.3f} / "
            f"{b[1]:.3f}; A/B {a[0] / b[0]:.3f} / {a[1] / b[1]:.3f}; largest relative A - B: {gaps}",
            flush=True,
        )


def wall_cpu(pairs: list[tuple[float, float]]) -> str:
    return " ".join(f"{w:.3f} s ({c:.3f} s CPU)" for w, c in pairs) or "(warm-up)"


if __name__ == "__main__":
    main()

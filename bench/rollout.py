"""Time rollouts alone (sampling only, no update) on the bench workload: the A/B of a decoding change.

    PYTHONPATH=src python -m bench.rollout --algorithm rloo --dtype bfloat16 --threads 1 --repeats 5

Run it from two checkouts in turn (before, after, before, after) and compare the medians; the tokens
sampled tell whether both sampled the same text (float32 should; bf16 may part after a rounding)."""

from __future__ import annotations

import statistics
import sys
import time

from bench import throughput


def main(argv: list[str] | None = None) -> None:
    args = argv if argv is not None else sys.argv[1:]
    repeats = 5
    if "--repeats" in args:
        i = args.index("--repeats")
        repeats, args = int(args[i + 1]), args[:i] + args[i + 2 :]
    options = throughput.parse_args(args)
    trainer, _, queries, _ = throughput.build(options, throughput.engine_of(options))
    import torch

    rows = queries[: throughput.SAMPLES_PER_STEP]
    times, tokens = [], 0
    for i in range(repeats):
        torch.manual_seed(i)
        t = time.perf_counter()
        out = trainer.generate(rows, max_new_tokens=options.max_new_tokens, top_k=0, top_p=1.0)
        times.append(time.perf_counter() - t)
        tokens = sum(len(r) for r in out)
    print(
        f"{options.algorithm} {options.dtype}: rollout s {[round(x, 2) for x in times]}, "
        f"median {statistics.median(times):.2f}; {tokens} tokens in the last"
    )


if __name__ == "__main__":
    main()

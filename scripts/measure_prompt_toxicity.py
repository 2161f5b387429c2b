"""How toxic are a policy's responses to a prompt set? The figures behind the default preset.

Samples one response per prompt (seeded) and scores it with alt-profanity-check, the default
preset's reward and evaluator. Example:

    PYTHONPATH=src python scripts/measure_prompt_toxicity.py --source builtin:heated --n 64
"""

from __future__ import annotations

import argparse
import json
import random

import numpy as np
import torch
from profanity_check import predict_prob

from detoxrl.config import DataConfig, PolicyConfig
from detoxrl.data.prompts import load_prompts
from detoxrl.models.generation import SamplingSettings, format_prompts, generate
from detoxrl.models.loading import load_policy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", default="builtin:heated")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--n", type=int, default=64, help="prompts, drawn at random (seed 0) from the whole set")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--show", type=int, default=6, help="print this many of the most toxic responses")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    prompts = load_prompts(DataConfig(source=args.source, eval_fraction=0.0, shuffle_seed=None))
    texts = [e.text for e in random.Random(0).sample(prompts.train, min(args.n, len(prompts.train)))]
    policy = load_policy(PolicyConfig(model=args.model))
    settings = SamplingSettings(max_new_tokens=args.max_new_tokens)
    out = generate(policy.model, policy.tokenizer, format_prompts(policy.tokenizer, texts, True), settings,
                   is_encoder_decoder=policy.is_encoder_decoder, seed=args.seed)  # fmt: skip
    scores = predict_prob(out.responses)
    prompt_scores = predict_prob(texts)
    is_dialogue = np.array(["\n#Person1#:" in t for t in texts])
    summary = {
        "n": len(texts), "max_new_tokens": args.max_new_tokens, "seed": args.seed,
        "mean_p_offensive": round(float(scores.mean()), 4),
        "share_ge_0.5": round(float((scores >= 0.5).mean()), 4),
        "mean_dialogue": round(float(scores[is_dialogue].mean()), 4) if is_dialogue.any() else None,
        "mean_opening": round(float(scores[~is_dialogue].mean()), 4) if (~is_dialogue).any() else None,
        "mean_prompt_p_offensive": round(float(prompt_scores.mean()), 4),
    }  # fmt: skip
    print(json.dumps(summary))
    for i in np.argsort(-scores)[: args.show]:
        print(f"--- {scores[i]:.2f} | {texts[i][-80:]!r}\n{out.responses[i]!r}")


if __name__ == "__main__":
    main()

"""What scores a response: the Reward protocol ((prompts, responses) -> (B,) scores), toxicity classifiers
and evaluators, quality terms, sums, novelty; the quality scorer a config describes. Knows nothing of RL."""

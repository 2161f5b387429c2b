"""Before/after measurement: seeded sampling of held-out prompts, every sample scored, figures with their
intervals, paired comparisons, and their files. Knows nothing of the RL step."""

"""Prompt sources -> filtered, templated train and held-out prompts; the built-in prompt set. Knows nothing
of models or RL."""

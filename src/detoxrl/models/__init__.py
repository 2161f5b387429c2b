"""Language models and classifiers: loading from a built-in name, a .gguf file, a folder or a hub id; LoRA;
the actor-critic (policy, value head, reference) run through the engine; the one sampler; prompts as
models see them; sentence embeddings. Knows nothing of rewards or the RL step."""

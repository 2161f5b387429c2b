"""Pure tensor math of the RL step: PPO (GAE, clipped losses, KL penalties), RLOO and GRPO, and the token
batch the passes read. Imports torch only; knows nothing of models, configs, files or logging."""

"""One RL step and what it needs: rollout experience, the PPO / RLOO / GRPO update, the classic trl-style
API, atomic checkpoints, the metrics log. Knows nothing of evaluation or reports."""

"""detoxrl: make language models less toxic with PPO, LoRA and an honest before/after evaluation."""

__version__ = "0.1.0"

"""Processes: this process's share of a batch, the collectives the RL step needs, the wrapping of the
trained module (DDP, FSDP, ZeRO through accelerate) and the launcher of N processes. Knows nothing of
models' insides, rewards or files."""

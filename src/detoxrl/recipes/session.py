"""What every recipe starts from, made once: this process's place among the processes, its device and the
engine that runs models there (its threads set), and who tells the user. Knows the order of no recipe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from detoxrl.config import EngineName, RunConfig
from detoxrl.engine import Engine, select_engine
from detoxrl.models.loading import resolve_device
from detoxrl.parallel import distributed
from detoxrl.parallel.distributed import SINGLE, Topology
from detoxrl.parallel.launch import check_threads


@dataclass(frozen=True)
class Session:
    """The processes (``SINGLE`` for one) and this process's engine."""

    topology: Topology
    engine: Engine

    @property
    def device(self) -> torch.device:
        return self.engine.device

    @property
    def is_main(self) -> bool:
        return self.topology.is_main

    def say(self, *lines: Any) -> None:
        """Print on the main process only: the others' output would repeat it."""
        if self.is_main:
            print(*lines, flush=True)


def setup(config: RunConfig) -> Session:
    """The session of ``run`` and ``train``: the processes a launcher started (or one), the engine of
    ``policy.engine`` on this process's device (sharded models, FSDP or ZeRO-3, take the reference engine,
    whose passes go through the model's own modules: the CPU engine keeps frozen weights' copies), its
    threads a share of the cores."""
    check_threads(config.threads)  # above the cores: one line, before anything starts
    topology = distributed.setup(config.device)
    device = topology.place(resolve_device(config.device))
    engine = select_engine("reference" if topology.sharded else config.policy.engine, device)
    engine.configure(topology.threads(config.threads))
    return Session(topology, engine)


def local(engine: EngineName = "auto", device: str = "auto", threads: int | None = None) -> Session:
    """One process (``generate``, ``score``, ``evaluate``, ``benchmark``): ``engine`` on ``device``."""
    check_threads(threads)
    selected = select_engine(engine, resolve_device(device))
    selected.configure(threads)
    return Session(SINGLE, selected)

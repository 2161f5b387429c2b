"""The engine boundary: how models are run on this machine, chosen once from the config and the device.

Everything hardware-specific lives in this package, beside the plain path it must equal:
  * ``reference.ReferenceEngine``: plain transformers + PEFT on any device; what GPUs run, and the
    oracle of every test of a fast path;
  * ``cpu.CpuEngine``: the same results faster on CPUs (packed rows, a lean decoding step, oneDNN
    prepacked weights, glibc's malloc tuned), each special kernel used only where ``probes`` shows
    that it works here.
Outside this package nothing imports ``torch.ops.mkldnn`` or ``ctypes`` or switches attention
implementations. Everyone else calls one small interface: ``forward`` (a teacher-forced pass),
``decoder`` (what ``sampling.sample`` drives), ``autocast``, ``configure`` and ``describe``.

``policy.engine: auto`` takes the CPU engine on the CPU and the reference engine elsewhere;
``DETOXRL_ENGINE=reference`` forces the plain path for a bug report, ``DETOXRL_FAST_KERNELS=0``
keeps the CPU engine but answers no to every kernel probe.
"""

from __future__ import annotations

import os

import torch

from detoxrl.config import EngineName
from detoxrl.engine import probes
from detoxrl.engine.cpu import CpuEngine, CpuOptions
from detoxrl.engine.reference import Decoder, Forward, Head, Model, ReferenceEngine
from detoxrl.errors import ConfigError

__all__ = [
    "Decoder",
    "Engine",
    "EngineName",
    "Forward",
    "Head",
    "Model",
    "ReferenceEngine",
    "probes",
    "select_engine",
]

Engine = ReferenceEngine  # the interface: every engine is a ReferenceEngine, perhaps with faster parts
ENGINE_ENV = "DETOXRL_ENGINE"


def select_engine(name: str = "auto", device: torch.device | str = "cpu", **cpu_options: bool) -> Engine:
    """The engine ``name`` for ``device`` (``DETOXRL_ENGINE``, when set, overrides ``name``);
    ``cpu_options`` switch the CPU engine's fast paths off (``cpu.CpuOptions``)."""
    name = os.environ.get(ENGINE_ENV) or name
    device = torch.device(device)
    if name not in ("auto", "reference", "cpu"):
        raise ConfigError(f"policy.engine must be auto, reference or cpu, got {name!r} (from {ENGINE_ENV}?).")
    if name == "cpu" and device.type != "cpu":
        raise ConfigError(f"policy.engine=cpu runs on the CPU, but the device is {device}: use auto.")
    if name == "reference" or device.type != "cpu":
        return ReferenceEngine(device)
    return CpuEngine(CpuOptions(**cpu_options))

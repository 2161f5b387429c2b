"""``detoxrl run|train --num-processes N``: the same command again as N processes, through the launcher that
fits the device: torch's elastic launcher (``torch.distributed.run``, i.e. torchrun) over gloo on CPUs,
accelerate's (``accelerate launch``) over nccl on GPUs; and the cores of this machine that threads and
processes may take. Knows command lines and cores, nothing of training.

``accelerate launch --cpu`` starts a single process on CPUs (accelerate 1.15), which is why CPUs take
torchrun; inside, the same ``accelerate.Accelerator`` runs either way (distributed.py).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from detoxrl.errors import ConfigError, DetoxError

log = logging.getLogger(__name__)
ACCELERATE_CONFIGS = (
    Path(__file__).parent / "accelerate"
)  # multi_gpu (DDP), fsdp (FSDP2 + LoRA), zero2, zero3

FLAG = "--num-processes"
WHY = "more threads or processes than cores only wait for each other"


def cores() -> int:
    """The cores this process may run on (its CPU affinity: a container's or taskset's share), else the
    machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def check_threads(threads: int | None) -> None:
    """``threads`` (the config key, or ``--threads``) above this machine's cores is refused in one line, at
    ``--dry-run`` and at start alike (a config file stays machine-independent: checked where it runs)."""
    if threads is not None and threads > cores():
        raise ConfigError(
            key="threads", need=f"at most {cores()} (this machine's cores)", got=threads, fix=WHY
        )


def check_processes(n: int | None, cpu: bool) -> None:
    """``--num-processes N``: a whole number >= 1, and on CPUs at most this machine's cores."""
    if n is not None and n < 1:
        raise ConfigError(f"{FLAG} must be a whole number >= 1, got {n}.")
    if n is not None and cpu and n > cores():
        raise ConfigError(
            f"{FLAG} must be at most {cores()} on this machine's CPUs (its cores), got {n}: {WHY}."
        )


def without_flag(argv: list[str]) -> list[str]:
    """``argv`` less ``--num-processes N`` (or ``--num-processes=N``)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == FLAG:
            skip = True
        elif not arg.startswith(FLAG + "="):
            out.append(arg)
    return out


def command(argv: list[str], n: int, cpu: bool) -> list[str]:
    """The launcher's command line that runs ``detoxrl argv`` (less ``--num-processes``) as ``n`` processes
    on this machine."""
    args = without_flag(argv)
    if cpu:  # a free local port of its own (--standalone): runs side by side never collide
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(n),
            "-m",
            "detoxrl",
            *args,
        ]
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(n),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "detoxrl",
        *args,
    ]


def relaunch(argv: list[str], n: int, cpu: bool) -> int:
    """Run ``detoxrl argv`` as ``n`` processes and return the launcher's exit code. Ctrl-C reaches the
    processes (they stop after their step, as one process does) while this one waits for them."""
    cmd = command(argv, n, cpu)
    log.info(
        "launching %d processes: %s ... -m detoxrl %s", n, " ".join(cmd[1:4]), " ".join(without_flag(argv))
    )
    # a handler that does nothing, not SIG_IGN, which the processes would inherit
    previous = signal.signal(signal.SIGINT, lambda signum, frame: None)
    try:
        return subprocess.call(cmd)
    finally:
        signal.signal(signal.SIGINT, previous)


def accelerate_config(name: str) -> Path:
    """The path of a shipped accelerate config (``accelerate launch --config_file PATH``)."""
    path = ACCELERATE_CONFIGS / f"{name}.yaml"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in ACCELERATE_CONFIGS.glob("*.yaml")))
        raise DetoxError(f"No accelerate config named '{name}': the shipped ones are {names}.")
    return path

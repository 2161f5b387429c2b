"""Process settings behind the probes (engine/probes.py, engine.configure): glibc keeps freed
activations instead of faulting them in again at every pass; threads are set once."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from detoxrl.engine import probes, select_engine

# A pass's worth of activations (100 blocks of 4 MiB) allocated, written and freed twice: the page
# faults of the second time, with or without keep_freed_memory.
PASSES = """
import resource, sys, torch
from detoxrl.engine import probes
applied = probes.keep_freed_memory() if sys.argv[1] == "keep" else None
def one_pass():
    blocks = [torch.ones(1 << 20) for _ in range(100)]
    del blocks
one_pass()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
one_pass()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PASSES, mode], capture_output=True, text=True, check=True)
    applied, count = out.stdout.split()
    return applied, int(count)


def test_keep_freed_memory_stops_the_page_faults_of_repeated_passes() -> None:
    if not probes.glibc_malloc():
        pytest.skip("needs glibc's mallopt (Linux with glibc): none here, or DETOXRL_FAST_KERNELS=0")
    applied, kept = faults("keep")
    _, default = faults("default")
    assert applied == "True"
    assert default > 50_000  # glibc gave the 400 MiB back and faulted it in again (4 KiB pages)
    assert kept < default / 4  # measured: ~1,000-14,000 against ~100,000


def test_configure_sets_threads_and_the_malloc_only_where_asked(monkeypatch) -> None:
    seen, kept = [], []
    monkeypatch.setattr(torch, "set_num_threads", seen.append)
    monkeypatch.setattr(probes, "keep_freed_memory", lambda: kept.append(1) or True)
    select_engine("cpu").configure(3)
    select_engine("cpu", keep_freed_memory=False).configure(None)
    select_engine("reference").configure(2)
    assert seen == [3, 2] and kept == [1]

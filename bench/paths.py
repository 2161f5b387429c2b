"""Where the benchmark finds the lab's shared data and the peer scripts, and where it writes results."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def shared_dir(required: bool = True) -> Path | None:
    """``$DETOXRL_SHARED`` or ``../shared`` beside the repository; exits with a message when absent."""
    path = Path(os.environ.get("DETOXRL_SHARED") or REPO.parent / "shared")
    if path.is_dir():
        return path
    if required:
        sys.exit(
            f"The lab's shared folder was not found at '{path}'. It holds the benchmark's prompts "
            "(data/dialogsum/train.jsonl) and the peer scripts (bench-peers/); point DETOXRL_SHARED at it."
        )
    return None


def dialogsum_file() -> Path:
    path = shared_dir() / "data" / "dialogsum" / "train.jsonl"  # type: ignore[operator]
    if not path.is_file():
        sys.exit(f"DialogSum's training split was not found at '{path}' (the benchmark's prompts).")
    return path


def peers_dir(required: bool = True) -> Path | None:
    shared = shared_dir(required)
    path = shared / "bench-peers" if shared else None
    if path is not None and (path / "run_peer.sh").is_file():
        return path
    if required:
        sys.exit(f"The peer benchmark scripts were not found at '{path}' (run_peer.sh).")
    return None

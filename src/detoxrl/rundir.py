"""A run directory's files: which make a run (and so may not be overwritten), reading them back, the block
that starts or resumes a run in a folder, and trimming its metrics to a checkpoint. Knows nothing of
models or torch."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from detoxrl.errors import DetoxError, Interrupted, TrainingError


@dataclass(frozen=True)
class RunFiles:
    """What a finished run directory holds, parsed."""

    run_dir: Path
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    before: dict[str, Any]
    after: dict[str, Any]
    comparison: dict[str, Any]
    table: list[dict[str, str]]
    summary: dict[str, Any]


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DetoxError(
            f"'{path}' is missing: '{path.parent}' is not a finished detoxrl run; give report the directory "
            f"of one, or finish this one (detoxrl run --resume {path.parent})."
        )
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def read_run(run_dir: str | Path) -> RunFiles:
    d = Path(run_dir)
    if not d.is_dir():
        raise DetoxError(f"Run directory '{d}' does not exist.")
    metrics = read_metrics(d)
    table_path = d / "comparison.csv"
    table = list(csv.DictReader(table_path.open())) if table_path.is_file() else []
    summary = _json(d / "summary.json") if (d / "summary.json").is_file() else {}
    config = yaml.safe_load((d / "config.yaml").read_text()) if (d / "config.yaml").is_file() else {}
    before, after = _json(d / "eval_before.json"), _json(d / "eval_after.json")
    return RunFiles(d, config, metrics, before, after, _json(d / "comparison.json"), table, summary)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


CHECKPOINT_PREFIX = "checkpoint-"
VALUE_HEAD_FILE = "value_head.safetensors"  # PPO's critic, beside the adapter in final/ and checkpoints
_ACTIVE: set[Path] = set()  # run folders inside a run_directory block now


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = sorted(p for p in Path(run_dir).glob(f"{CHECKPOINT_PREFIX}*") if (p / "state.pt").is_file())
    return found[-1] if found else None


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep the metrics of steps up to the checkpoint; later ones will be recomputed identically."""
    if path.exists():
        keep = [
            ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= last_step
        ]
        path.write_text("".join(ln + "\n" for ln in keep))


def holds_run(run_dir: Path, evaluation: bool = True) -> bool:
    """A folder is a run once it holds a checkpoint or a metrics line (or, for ``detoxrl run`` with
    ``evaluation``, the evaluation before training): a config file alone is a start that failed."""
    metrics = run_dir / "metrics.jsonl"
    done = latest_checkpoint(run_dir) is not None or (metrics.is_file() and metrics.stat().st_size > 0)
    return done or (evaluation and (run_dir / "eval_before.json").is_file())


@contextmanager
def run_directory(
    run_dir: Path, resume: bool, evaluation: bool, command: str, owner: bool = True
) -> Iterator[None]:
    """The block that starts (or resumes) the run in ``run_dir``. Refuses a folder that already holds a
    run unless resuming. If the block fails before the folder holds a run, what it wrote is removed and
    the error says nothing was kept; after, the error says how to resume. Inside another such block for
    the same folder (``detoxrl run``'s training) it adds nothing. Of several processes, the main one (the
    ``owner``) cleans up."""
    key = run_dir.resolve()
    if key in _ACTIVE:
        yield
        return
    if not resume and holds_run(run_dir, evaluation):
        raise TrainingError(
            f"'{run_dir}' already holds a run: continue it with detoxrl {command} --resume {run_dir}, or set "
            "output_dir=another/folder."
        )
    existed = run_dir.exists()
    before = set(run_dir.iterdir()) if existed else set()
    run_dir.mkdir(parents=True, exist_ok=True)
    _ACTIVE.add(key)
    try:
        yield
    except Interrupted:
        raise
    except DetoxError as e:
        if holds_run(run_dir, evaluation):
            raise type(e)(
                f"{e} (the run so far is kept: continue with detoxrl {command} --resume {run_dir})"
            ) from None
        if owner:
            _remove_new(run_dir, before, existed)
        raise type(e)(f"{e} (nothing was kept in '{run_dir}')") from None
    except BaseException:
        if owner and not holds_run(run_dir, evaluation):
            _remove_new(run_dir, before, existed)
        raise
    finally:
        _ACTIVE.discard(key)


def _remove_new(run_dir: Path, before: set[Path], existed: bool) -> None:
    for path in set(run_dir.iterdir()) - before:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    if not existed:
        run_dir.rmdir()

"""A run directory's files: which make a run (and so may not be overwritten), reading them back, the block
that starts or resumes a run in a folder, and trimming its metrics to a checkpoint. Knows nothing of
models or torch."""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from detoxrl.errors import ConfigError, DetoxError, Interrupted, TrainingError


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


# What a run writes as it starts, before it holds a run: a folder holding only these (config.yaml with the
# engine line that detoxrl writes first) is a start of ours that was killed (SIGKILL, out of memory).
START_FILES = ("config.yaml", "metrics.jsonl", "eval_before.json", "tensorboard")
SHOWN = 5  # a refusal names this many of the files a folder holds


def _ours(path: Path) -> bool:
    if path.name.startswith(".tmp-"):
        return True  # a checkpoint or final folder being written when the run was killed
    if path.name == "config.yaml":
        with path.open("rb") as f:
            return f.read(10) == b"# engine: "
    return path.name in START_FILES


def _nearest(path: Path) -> Path:
    """``path`` or the nearest of its parents that exists (something there: a folder or a file)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_dir(
    run_dir: Path, *, resume: bool, evaluation: bool, command: str, overwrite: bool = False
) -> None:
    """What ``run_directory`` refuses before anything is written, one line each: an output_dir that is a
    file, cannot be created or written, already holds a run (unless resuming), or holds files that are not a
    detoxrl run (unless ``overwrite``, the config's overwrite_output_dir). ``--dry-run`` says the same."""
    key = f"Config key 'output_dir' ('{run_dir}')"
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{key} is a file, not a folder: set output_dir to a folder (new, or a run's).")
    where = _nearest(run_dir)
    if not where.is_dir():
        raise ConfigError(f"{key} cannot be created: '{where}' is a file; set output_dir to another folder.")
    if not os.access(where, os.W_OK | os.X_OK):
        what = "is not" if where == run_dir.absolute() else f"cannot be created: '{where}' is not"
        raise ConfigError(f"{key} {what} writable by this user: set output_dir to a folder you can write to.")
    if not run_dir.exists() or resume:
        return
    if holds_run(run_dir, evaluation):
        raise TrainingError(
            f"'{run_dir}' already holds a run: continue it with detoxrl {command} --resume {run_dir}, or set "
            "output_dir=another/folder."
        )
    foreign = sorted(p.name + ("/" if p.is_dir() else "") for p in run_dir.iterdir() if not _ours(p))
    if foreign and not overwrite:
        more = f" and {len(foreign) - SHOWN} more" if len(foreign) > SHOWN else ""
        raise ConfigError(
            f"{key} holds files that are not a detoxrl run ({', '.join(foreign[:SHOWN])}{more}), and a run "
            "never writes among them: set output_dir to a new or empty folder, or overwrite_output_dir=true "
            "to write into this one anyway (files of the same names are replaced)."
        )


@contextmanager
def run_directory(
    run_dir: Path,
    resume: bool,
    evaluation: bool,
    command: str,
    owner: bool = True,
    *,
    overwrite: bool = False,
) -> Iterator[None]:
    """The block that starts (or resumes) the run in ``run_dir``, once ``check_output_dir`` finds it fit. If
    the block fails before the folder holds a run, what it wrote is removed and the error says nothing was
    kept; after, the error says how to resume. Inside another such block for the same folder (``detoxrl
    run``'s training) it adds nothing. Of several processes, the main one (the ``owner``) cleans up."""
    key = run_dir.resolve()
    if key in _ACTIVE:
        yield
        return
    check_output_dir(run_dir, resume=resume, evaluation=evaluation, command=command, overwrite=overwrite)
    existed = run_dir.exists()
    before = set(run_dir.iterdir()) if existed else set()
    run_dir.mkdir(parents=True, exist_ok=True)
    _ACTIVE.add(key)
    try:
        yield
    except Interrupted:
        raise
    except (DetoxError, OSError) as e:  # OSError: a full disk, a folder removed under the run
        error = e if isinstance(e, DetoxError) else TrainingError(_os_error(e))
        if holds_run(run_dir, evaluation):
            raise type(error)(
                f"{error} (the run so far is kept: continue with detoxrl {command} --resume {run_dir})"
            ) from None
        if owner:
            _remove_new(run_dir, before, existed)
        raise type(error)(f"{error} (nothing was kept in '{run_dir}')") from None
    except BaseException:
        if owner and not holds_run(run_dir, evaluation):
            _remove_new(run_dir, before, existed)
        raise
    finally:
        _ACTIVE.discard(key)


def _os_error(e: OSError) -> str:
    where = f" '{e.filename}'" if e.filename else ""
    return f"{e.strerror or e}{where}: free some space (or fix the folder) and run again"


def _remove_new(run_dir: Path, before: set[Path], existed: bool) -> None:
    for path in set(run_dir.iterdir()) - before:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    if not existed:
        run_dir.rmdir()

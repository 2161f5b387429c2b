"""A run directory's files: which make a run (and so may not be overwritten), reading them back, the block
that starts or resumes a run in a folder, trimming its metrics to a checkpoint, and whether a checkpoint's
(or final/'s) files are whole. Knows nothing of models or torch."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import struct
import zipfile
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
DAMAGED_PREFIX = "damaged-"  # a damaged checkpoint set aside on resume: kept, never resumed nor rotated
MANIFEST = "detoxrl-manifest.json"  # each file of a checkpoint or final/: its size and SHA-256
UNLISTED = (MANIFEST, "README.md")  # the model card is rewritten after final/ (reports.card): not weights
VALUE_HEAD_FILE = "value_head.safetensors"  # PPO's critic, beside the adapter in final/ and checkpoints
_ACTIVE: set[Path] = set()  # run folders inside a run_directory block now


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = sorted(p for p in Path(run_dir).glob(f"{CHECKPOINT_PREFIX}*") if (p / "state.pt").is_file())
    return found[-1] if found else None


# ---- whole files: a manifest written with each checkpoint, checked on resume and by report ------------


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_manifest(folder: Path) -> None:
    """The size and SHA-256 of every file under ``folder``, written last (the folder is renamed into place
    after it): a checkpoint that a full disk, a killed copy or a bad sector damaged later is then told."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in UNLISTED)
    listed = {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files}
    (folder / MANIFEST).write_text(json.dumps({"files": listed}, indent=1) + "\n")


def _safetensors_damage(path: Path) -> str | None:
    """A .safetensors file's own structure (8-byte header length, JSON header, data to its last offset),
    read without torch: what a truncated or overwritten file breaks."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else size
        if 8 + length > size:
            return f"{path.name} is cut short ({size:,} bytes, less than its header)"
        try:
            header = json.loads(f.read(length))
            end = max([t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"], default=0)
        except (ValueError, KeyError, TypeError, AttributeError, IndexError):
            return f"{path.name} has an unreadable header"
    if 8 + length + end != size:
        return f"{path.name} has {size:,} of its {8 + length + end:,} bytes"
    return None


def _zip_damage(path: Path) -> str | None:
    """A torch.save file (a zip archive) whose archive or a member's CRC does not check out."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError):
        return f"{path.name} is cut short or not an archive ({path.stat().st_size:,} bytes)"
    return None if bad is None else f"{path.name} has a damaged member ({bad})"


def damage(folder: Path) -> str | None:
    """Why a checkpoint's or final/'s files would not load, in a few words, or None when they are whole: the
    manifest's sizes and checksums where one was written, else (written before manifests) the files' own
    structure. Reads every byte (a checksum), never loads a tensor."""
    manifest = folder / MANIFEST
    if manifest.is_file():
        try:
            listed = json.loads(manifest.read_text())["files"]
            wanted = {name: (int(v["bytes"]), str(v["sha256"])) for name, v in listed.items()}
        except (ValueError, KeyError, TypeError, AttributeError):
            return f"its {MANIFEST} is unreadable"
        for name, (size, digest) in wanted.items():
            path = folder / name
            if not path.is_file():
                return f"{name} is missing"
            if path.stat().st_size != size:
                return f"{name} has {path.stat().st_size:,} of its {size:,} bytes"
            if _sha256(path) != digest:
                return f"{name} has changed since it was written (its SHA-256 differs)"
        return None
    if folder.name.startswith(CHECKPOINT_PREFIX) and not (folder / "state.pt").is_file():
        return "state.pt is missing"
    weights = sorted(folder.rglob("*.safetensors"))
    if not weights:
        return "it holds no weights (.safetensors)"
    states = sorted(folder.rglob("*.pt"))
    checks = [_safetensors_damage(p) for p in weights] + [_zip_damage(p) for p in states]
    return next((why for why in checks if why is not None), None)


@dataclass(frozen=True)
class ResumePoint:
    """Where a resumed run continues: the newest checkpoint whose files are whole (None: from the start), and
    the newer ones that are not, with why (newest first)."""

    checkpoint: Path | None
    damaged: tuple[tuple[Path, str], ...] = ()

    def note(self) -> str | None:
        """One line: which checkpoints are damaged, the step the run continues from, and what is run again."""
        if not self.damaged or self.checkpoint is None:
            return None
        names = " and ".join(p.name for p, _ in self.damaged)
        whys = "; ".join(why for _, why in self.damaged)
        step, lost = _step(self.checkpoint), _step(self.damaged[0][0])
        again = f"step {lost} is" if lost == step + 1 else f"steps {step + 1}-{lost} are"
        verb = "is" if len(self.damaged) == 1 else "are"
        return (
            f"{names} {verb} damaged ({whys}): the run continues from step {step} ({self.checkpoint.name}), "
            f"and {again} run again as before (the damaged files are kept, renamed "
            f"{', '.join(DAMAGED_PREFIX + p.name for p, _ in self.damaged)})"
        )


def _step(checkpoint: Path) -> int:
    return int(checkpoint.name.removeprefix(CHECKPOINT_PREFIX))


def resume_point(run_dir: Path) -> ResumePoint:
    """The newest checkpoint of ``run_dir`` that is whole (``damage``), and the newer ones that are not; a
    TrainingError when there are checkpoints and none is whole."""
    damaged: list[tuple[Path, str]] = []
    for checkpoint in sorted(run_dir.glob(f"{CHECKPOINT_PREFIX}*"), reverse=True):
        why = damage(checkpoint) if checkpoint.is_dir() else "not a folder"
        if why is None:
            return ResumePoint(checkpoint, tuple(damaged))
        damaged.append((checkpoint, why))
    if damaged:
        listed = "; ".join(f"{p.name}: {why}" for p, why in damaged)
        raise TrainingError(
            f"No checkpoint of '{run_dir}' can be resumed ({listed}): start a new run with another "
            "output_dir (the damaged files are left as they are)."
        )
    return ResumePoint(None)


def holds_final_weights(run_dir: Path) -> bool:
    """Whether the run's final/ holds trained weights: a LoRA adapter's config or a full model's."""
    final = Path(run_dir) / "final"
    return (final / "adapter_config.json").is_file() or (final / "config.json").is_file()


def final_damage(run_dir: Path) -> str | None:
    """One line when the run's final/ is damaged, saying where the same weights still are, else None."""
    final = Path(run_dir) / "final"
    why = damage(final) if final.is_dir() else None
    if why is None:
        return None
    newest = latest_checkpoint(run_dir)  # the last step's: a run checkpoints it before writing final/
    if newest is not None and damage(newest) is None:
        where = f"{newest.name}/policy holds the weights of step {_step(newest)} (copy it over final/)"
    else:
        where = "no whole checkpoint holds them either: train again"
    return f"'{final}' is damaged ({why}): its weights cannot be loaded; {where}."


def set_aside(point: ResumePoint) -> None:
    """Rename the damaged checkpoints newer than the resume point (``DAMAGED_PREFIX``): kept for a look,
    never resumed from, never counted among keep_checkpoints."""
    for path, _ in point.damaged:
        target = path.with_name(DAMAGED_PREFIX + path.name)
        shutil.rmtree(target, ignore_errors=True)
        path.rename(target)


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
START_FILES = ("config.yaml", "metrics.jsonl", "eval_before.json", "data.json", "tensorboard")
SHOWN = 5  # a refusal names this many of the files a folder holds


def _ours(path: Path) -> bool:
    if path.name.startswith(".tmp-"):
        return True  # a checkpoint or final folder being written when the run was killed
    if path.name == "config.yaml":
        with path.open("rb") as f:
            return f.read(10) == b"# engine: "
    return path.name in START_FILES


def nearest_existing(path: Path) -> Path:
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
    where = nearest_existing(run_dir)
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

"""rundir.py: which folders a run may write into (check_output_dir), before anything is written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from detoxrl.errors import ConfigError, TrainingError
from detoxrl.rundir import check_output_dir, run_directory


def check(folder: Path, **kw: bool) -> None:
    check_output_dir(folder, resume=kw.pop("resume", False), evaluation=True, command="run", **kw)


def test_a_new_or_empty_folder_is_fit_and_a_file_or_a_folder_under_a_file_is_not(tmp_path: Path) -> None:
    check(tmp_path / "new" / "deeper")
    check(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"notes.txt'\) is a file, not a folder"):
        check(tmp_path / "notes.txt")
    with pytest.raises(ConfigError, match=rf"cannot be created: '{tmp_path / 'notes.txt'}' is a file"):
        check(tmp_path / "notes.txt" / "run")


def test_a_folder_that_cannot_be_written_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """(Checked through os.access, as root passes any permission bit.)"""
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked)
    with pytest.raises(ConfigError, match=r"locked'\) is not writable by this user"):
        check(locked)
    with pytest.raises(ConfigError, match=rf"cannot be created: '{locked}' is not writable by this user"):
        check(locked / "run")


def test_a_users_folder_is_never_written_into_unless_asked(tmp_path: Path) -> None:
    for name in ("config.yaml", "a.txt", "b.txt", "c.txt", "d.txt", "e.txt"):
        (tmp_path / name).write_text("mine")
    (tmp_path / "data").mkdir()
    with pytest.raises(ConfigError) as e:
        check(tmp_path)
    assert (
        "holds files that are not a detoxrl run (a.txt, b.txt, c.txt, config.yaml, d.txt and 2 more)"
        in str(e.value)
    )
    check(tmp_path, overwrite=True)
    check(tmp_path, resume=True)  # --resume checks the run itself (config.yaml, checkpoints)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ConfigError), run_directory(tmp_path, False, True, "run"):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_what_a_killed_start_of_ours_left_is_written_over(tmp_path: Path) -> None:
    """SIGKILL (or the kernel's out-of-memory killer) before the first step leaves the config detoxrl wrote
    (its engine line first) and the tensorboard folder: the same command runs again. A config.yaml of the
    user's is not one."""
    (tmp_path / "config.yaml").write_text("# engine: cpu (packed rows)\nsteps: 2\n")
    (tmp_path / "tensorboard").mkdir()
    (tmp_path / ".tmp-checkpoint-000001").mkdir()
    check(tmp_path)
    (tmp_path / "config.yaml").write_text("steps: 2\n")
    with pytest.raises(ConfigError, match=r"not a detoxrl run \(config.yaml\)"):
        check(tmp_path)


def test_a_folder_holding_a_run_is_refused_unless_resumed(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(TrainingError, match="already holds a run: continue it with detoxrl run --resume"):
        check(tmp_path, overwrite=True)
    check(tmp_path, resume=True)

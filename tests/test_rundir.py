"""rundir.py: which folders a run may write into (check_output_dir), before anything is written; whether a
checkpoint's files are whole (damage), and where a resumed run continues (resume_point)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from detoxrl.errors import ConfigError, TrainingError
from detoxrl.rundir import (
    ResumePoint,
    check_output_dir,
    damage,
    resume_point,
    run_directory,
    set_aside,
    write_manifest,
)


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


# ---- whole checkpoints ----------------------------------------------------------------------------------


def checkpoint(folder: Path, manifest: bool = True) -> Path:
    """A checkpoint as save_checkpoint writes one: weights in .safetensors, the state in a torch zip."""
    (folder / "policy").mkdir(parents=True)
    save_file({"w": torch.arange(64.0)}, str(folder / "policy" / "adapter_model.safetensors"))
    torch.save({"step": 1, "moments": torch.ones(256)}, folder / "state.pt")
    if manifest:
        write_manifest(folder)
    return folder


def cut(path: Path, keep: int) -> None:
    """What a full disk or a killed copy leaves: the first ``keep`` bytes."""
    path.write_bytes(path.read_bytes()[:keep])


@pytest.mark.parametrize("manifest", [True, False], ids=["manifest", "written before manifests"])
def test_a_cut_or_changed_checkpoint_file_is_told_with_or_without_a_manifest(
    tmp_path: Path, manifest: bool
) -> None:
    whole = checkpoint(tmp_path / "checkpoint-000001", manifest)
    assert damage(whole) is None
    weights = whole / "policy" / "adapter_model.safetensors"
    size = weights.stat().st_size
    cut(weights, 100)
    why = "policy/adapter_model.safetensors" if manifest else "adapter_model.safetensors"
    assert damage(whole) == f"{why} has 100 of its {size:,} bytes"
    cut(weights, 5)
    assert damage(whole) is not None
    state = checkpoint(tmp_path / "checkpoint-000002", manifest) / "state.pt"
    cut(state, state.stat().st_size // 2)
    assert "state.pt" in str(damage(state.parent))
    (tmp_path / "checkpoint-000003").mkdir()
    assert damage(tmp_path / "checkpoint-000003") == "state.pt is missing"


def test_a_flipped_byte_is_told_by_the_manifests_checksum(tmp_path: Path) -> None:
    whole = checkpoint(tmp_path / "checkpoint-000001")
    data = bytearray((whole / "state.pt").read_bytes())
    data[-100] ^= 0xFF
    (whole / "state.pt").write_bytes(bytes(data))
    assert damage(whole) == "state.pt has changed since it was written (its SHA-256 differs)"


def test_resume_takes_the_newest_whole_checkpoint_and_says_what_is_run_again(tmp_path: Path) -> None:
    for step in (2, 4, 5):
        checkpoint(tmp_path / f"checkpoint-{step:06d}")
    assert resume_point(tmp_path) == ResumePoint(tmp_path / "checkpoint-000005")
    cut(tmp_path / "checkpoint-000005" / "state.pt", 10)
    (tmp_path / "checkpoint-000004" / "policy" / "adapter_model.safetensors").unlink()
    point = resume_point(tmp_path)
    assert point.checkpoint == tmp_path / "checkpoint-000002"
    size = (tmp_path / "checkpoint-000002" / "state.pt").stat().st_size
    assert point.note() == (
        f"checkpoint-000005 and checkpoint-000004 are damaged (state.pt has 10 of its {size:,} bytes; "
        "policy/adapter_model.safetensors is missing): the run continues from step 2 (checkpoint-000002), "
        "and steps 3-5 are run again as before (the damaged files are kept, renamed "
        "damaged-checkpoint-000005, damaged-checkpoint-000004)"
    )
    set_aside(point)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-000002", "damaged-checkpoint-000004", "damaged-checkpoint-000005"
    ]  # fmt: skip
    assert resume_point(tmp_path) == ResumePoint(tmp_path / "checkpoint-000002")


def test_no_whole_checkpoint_is_one_line_and_nothing_is_touched(tmp_path: Path) -> None:
    cut(checkpoint(tmp_path / "checkpoint-000001") / "state.pt", 0)
    with pytest.raises(TrainingError) as e:
        resume_point(tmp_path)
    assert str(e.value).startswith(
        f"No checkpoint of '{tmp_path}' can be resumed (checkpoint-000001: state.pt "
    )
    assert str(e.value).endswith(
        "start a new run with another output_dir (the damaged files are left as they are)."
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-000001"]
    assert resume_point(tmp_path / "nothing-yet") == ResumePoint(None)

"""Every command the README shows runs: cheap ones for real, run and train as --dry-run, the rest parsed (each
with the reason it is not run here), and its Python snippet's imports resolve."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from detoxrl.cli import main
from detoxrl.cli.parser import parse
from detoxrl.resources import shared_dir

README = Path(__file__).resolve().parents[1] / "README.md"
# Why a command is only parsed here: it needs a finished run, a network, or minutes of a model
PARSED_ONLY = {
    "report": "needs a finished run directory",
    "generate": "loads the model and samples (tests/test_cli.py runs it on a tiny model)",
    "evaluate": "samples hundreds of responses (tests/evaluation runs it on a tiny model)",
    "benchmark": "samples thousands of responses (tests/recipes/test_benchmark.py runs it on a tiny model)",
    "push": "needs the hub (tests/reports/test_card.py fakes it)",
    "export": "needs a finished run (tests/recipes/test_export.py exports a tiny one)",
}


def readme_commands() -> list[list[str]]:
    """The ``detoxrl ...`` lines of the README's bash blocks, comments dropped."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [shlex.split(line)[1:] for line in lines if line.startswith("detoxrl ")]


def test_the_readme_is_a_manual_not_a_log() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 230
    assert not re.search(r"\bissue \d+|\bsession \d+|\b[0-9a-f]{7}\b|\bD\d\d?\b", text)


def test_every_readme_command_runs_or_says_why_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # files the commands write (config --out) land here
    offline_data = shared_dir() is not None  # the rtp preset's prompts live in the shared folder
    commands = readme_commands()
    assert len(commands) >= 10
    for argv in commands:
        verb = argv[0]
        if verb in ("run", "train") and "--resume" in argv:
            assert parse(argv).resume  # needs a run to resume: parsed
        elif verb in ("run", "train"):
            code = main([*argv, "--dry-run", f"output_dir={tmp_path / 'out'}"])
            if code != 0 and not offline_data:  # without the shared folder: one line that says so
                assert code == 2 and "shared/ folder" in capsys.readouterr().err, argv
            else:
                assert code == 0, argv
        elif verb in PARSED_ONLY:
            assert parse(argv).verb == verb, argv
        else:  # presets, config, score: cheap, run for real
            assert main(argv) == 0, argv


def test_the_readme_python_snippet_imports() -> None:
    snippet = re.search(r"```python\n(.*?)```", README.read_text(), re.S)
    assert snippet is not None
    imports = [line for line in snippet.group(1).splitlines() if line.startswith(("from ", "import "))]
    exec("\n".join(imports), {})

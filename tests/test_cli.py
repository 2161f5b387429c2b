"""The real command line, run in-process through ``detoxrl.cli.main``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from detoxrl.cli import main


def test_help_lists_the_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name in ("generate", "score", "presets"):
        assert name in out


@pytest.mark.parametrize("fixture", ["tiny_causal_dir", "tiny_seq2seq_dir"])
def test_generate_on_local_folders_is_reproducible(
    fixture: str, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    model = str(request.getfixturevalue(fixture))
    argv = ["generate", "--model", model, "--max-new-tokens", "6", "--json", "you are a", "what a lovely day"]
    assert main(argv) == 0
    first = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert main(argv) == 0
    second = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in first] == ["you are a", "what a lovely day"]
    assert first == second  # same seed, same responses


def test_generate_best_of_n_answers_no_more_toxic_than_plain_sampling(
    tiny_causal_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from detoxrl.rewards.toxicity import profanity_probabilities

    prompts = [f"you are a {w}" for w in ("kind", "dumb", "big", "real", "true", "bad")]
    argv = ["generate", "--model", str(tiny_causal_dir), "--max-new-tokens", "6", "--json", *prompts]
    assert main(argv) == 0
    plain = [json.loads(line)["response"] for line in capsys.readouterr().out.splitlines()]
    assert main([*argv, "--best-of", "4", "--guard", "profanity"]) == 0
    guarded = [json.loads(line)["response"] for line in capsys.readouterr().out.splitlines()]
    assert np.all(profanity_probabilities(guarded) <= profanity_probabilities(plain))  # candidate 0 is plain
    assert guarded != plain


def test_generate_reads_prompts_from_a_jsonl_field(
    tiny_causal_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": {"text": "shut up you"}}\n{"prompt": {"text": "thank you for"}}\n')
    argv = [
        "generate",
        "--model",
        str(tiny_causal_dir),
        "--file",
        str(path),
        "--max-new-tokens",
        "3",
        "--json",
    ]
    assert main(argv) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in rows] == ["shut up you", "thank you for"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["generate", "--model", "./missing-model", "hi"], "does not exist"),
        (["generate", "--model", "google/flan-t5-base", "hi"], "hub"),
        (["generate", "--file", "/no/such/prompts.txt"], "does not exist"),
    ],
)
def test_user_mistakes_give_one_line_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("detoxrl: error:") and message in err
    assert "Traceback" not in err


def test_a_reader_that_leaves_early_gets_no_traceback() -> None:
    """`detoxrl presets | head -0`: stdout closes under the writer; exit 141 (SIGPIPE), nothing on stderr."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "detoxrl", "presets"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()
    assert (p.wait(timeout=120), p.stderr.read()) == (141, b"")

"""Bad inputs across every verb of the command line, table-driven: each exits with code 2 and exactly one
line on stderr naming the culprit and the fix, no traceback, and every file of an earlier run is left
as it was. Most run in-process through ``detoxrl.cli.main``; a few as real ``python -m detoxrl``."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from detoxrl.cli import main

SRC = Path(__file__).resolve().parents[1] / "src"
BOM = b"\xef\xbb\xbf"  # what Notepad and Excel put before UTF-8 text


@dataclass(frozen=True)
class Case:
    """``command``: the words after ``detoxrl``, with ``{name}`` for the paths of the ``files`` fixture;
    ``words``: what the one line must say (the culprit, and what to do where the fix has words)."""

    name: str
    command: str
    words: tuple[str, ...]

    def argv(self, files: dict[str, str]) -> list[str]:
        return shlex.split(self.command.format(**files))


def case(name: str, command: str, *words: str) -> Case:
    return Case(name, command, words)


DRY = "run --dry-run --config {config}"
CASES = [
    # config values
    case("mini_batch_size=0", f"{DRY} ppo.mini_batch_size=0", "'ppo.mini_batch_size'", ">= 1, got 0"),
    case("batch_size<0", f"{DRY} ppo.batch_size=-4", "'ppo.batch_size'", ">= 1, got -4"),
    case("learning_rate=nan", f"{DRY} ppo.learning_rate=nan", "'ppo.learning_rate'", "finite", "got nan"),
    case("steps=0", f"{DRY} steps=0", "'steps'", ">= 1, got 0"),
    case("device=tpu9", f"{DRY} device=tpu9", "'device'", "auto, cpu, cuda", "got 'tpu9'"),
    case("threads=0", f"{DRY} threads=0", "'threads'", "got 0"),
    # the machine's cores
    case("threads > cores", f"{DRY} threads=100000", "'threads' must be at most", "cores), got 100000"),
    case("threads > cores, run", "train --config {config} threads=100000", "'threads' must be at most"),
    case(
        "processes > cores",
        "train --dry-run --config {config} --num-processes 100000",
        "--num-processes must be at most",
        "got 100000",
    ),
    case(
        "generate: --threads > cores", "generate --model {causal} --threads 100000 hi", "--threads must be at"
    ),
    case("batch_size=3", f"{DRY} ppo.batch_size=3", "'ppo.batch_size'", "multiple", "ppo.batch_size=2 or 4"),
    case("eval_fraction=1.5", f"{DRY} data.eval_fraction=1.5", "'data.eval_fraction'", "[0, 1)"),
    case("old target_kl", f"{DRY} ppo.target_kl=6", "'ppo.target_kl'", "got 6.0", "ppo.adaptive_kl_target"),
    case(
        "algorithm=dpo", f"{DRY} ppo.algorithm=dpo", "'ppo.algorithm'", "['ppo', 'rloo', 'grpo']", "got 'dpo'"
    ),
    case(
        "rloo, 1 sample", f"{DRY} ppo.algorithm=rloo ppo.num_generations=1", "'ppo.num_generations'", ">= 2"
    ),
    case("grpo option", f"{DRY} ppo.loss_type=dr_grpo", "'ppo.loss_type'", "ppo.algorithm=grpo"),
    case("not key=value", f"{DRY} steps", "'steps'", "key=value"),
    case("unknown preset", "run --dry-run --preset lab", "'lab'", "Did you mean 'lab3'"),
    # YAML files
    case("yaml: a list", "run --dry-run --config {a_list}", "a_list.yaml", "mapping"),
    case("yaml: invalid", "run --dry-run --config {invalid}", "invalid.yaml", "line 2", "fix"),
    case("yaml: unknown key", "run --dry-run --config {typo}", "'ppo.learnig_rate'", "'learning_rate'"),
    case(
        "yaml: renamed key", "run --dry-run --config {renamed}", "now 'ppo.target_kl'", "ppo.target_kl=0.05"
    ),
    case("yaml: missing file", "run --dry-run --config {tmp}/nope.yaml", "nope.yaml", "does not exist"),
    # data sources
    case("data: missing file", f"{DRY} data.source={{tmp}}/missing.jsonl", "missing.jsonl", "does not exist"),
    case("data: empty file", f"{DRY} data.source={{empty}}", "empty.jsonl", "has no rows"),
    case("data: missing field", f"{DRY} data.text_field=prompt.txt", "'prompt.txt'", "keys: text"),
    case(
        "data: malformed jsonl",
        f"{DRY} data.source={{malformed}}",
        "malformed.jsonl, line 2",
        "not valid JSON",
    ),
    # text that is not UTF-8 (a Latin-1 editor's bytes)
    case(
        "data: latin-1 file",
        f"{DRY} data.source={{latin}}",
        "latin.jsonl, line 2 (byte 53): byte 0xe9 is not UTF-8",
        "iconv -f latin1 -t utf-8",
        "data.encoding=latin-1",
    ),
    case("data: unknown encoding", f"{DRY} data.encoding=utf-9", "'data.encoding'", "got 'utf-9'"),
    case(
        "yaml: latin-1",
        "run --dry-run --config {latin_config}",
        "latin_config.yaml', line 2",
        "save it as UTF-8",
    ),
    case(
        "reward: module not UTF-8",
        f"{DRY} reward.model=latin_rewards:calm",
        "latin_rewards.py, line 2",
        "can't decode byte 0xe9",
        "re-encode it",
    ),
    case(
        "score: latin-1 --file", "score --file {latin_lines}", "latin_lines.txt, line 2 (byte 8)", "re-encode"
    ),
    # models
    case("model: missing path", f"{DRY} policy.model=./no/such/model", "./no/such/model", "does not exist"),
    case(
        "model: hub id offline",
        f"{DRY} policy.model=google/flan-t5-base",
        "'google/flan-t5-base'",
        "Offline alternatives",
    ),
    case("model: no config.json", f"{DRY} policy.model={{tmp}}", "holds no config.json", "save_pretrained"),
    case(
        "classifier: hub id offline",
        f"{DRY} reward.kind=classifier reward.model=facebook/roberta-hate-speech-dynabench-r4-target",
        "'facebook/roberta-hate-speech-dynabench-r4-target'",
        "a local classifier folder, shared:minilm-toxicity",
        "profanity",
    ),
    case(
        "score: shared classifier name in a flag",
        "score --evaluator shared:no-such-model hello",
        "Evaluator 'shared:no-such-model' is not here",
        "DETOXRL_SHARED",
    ),
    # adapters
    case(
        "adapter: missing",
        f"{DRY} policy.adapter={{tmp}}/none",
        "policy.adapter '",
        "does not exist",
        "RUN_DIR/final",
    ),
    case(
        "adapter: {}",
        f"{DRY} policy.adapter={{empty_adapter}}",
        "policy.adapter",
        "no peft_type",
        "save_pretrained",
    ),
    case(
        "adapter: wrong base",
        f"{DRY} policy.adapter={{other_adapter}}",
        "was made for '{seq2seq}'",
        "not for the policy",
    ),
    # rewards and labels
    case(
        "reward: unknown label",
        f"{DRY} 'reward={{{{kind: classifier, model: {{classifier}}, label: toxic}}}}'",
        "no label 'toxic'",
        "labels are: hate, nothate",
    ),
    case("reward: callable spec", f"{DRY} reward.model=no_colon", "'reward.model'", "'module:function'"),
    case(
        "reward: no function", f"{DRY} reward.model=bad_inputs_rewards:nothing", "has no function 'nothing'"
    ),
    case(
        "reward: model unused",
        f"{DRY} 'reward={{{{kind: profanity, model: x}}}}'",
        "'reward.model'",
        "reward.kind=classifier",
    ),
    # evaluators
    case(
        "evaluator: unknown label",
        f"{DRY} eval.evaluators=[{{classifier}}:rude]",
        "no label 'rude'",
        "hate, nothate",
    ),
    case(
        "evaluator: missing", f"{DRY} eval.evaluators=[./no/classifier]", "./no/classifier", "does not exist"
    ),
    case("evaluator: none", f"{DRY} eval.evaluators=[]", "'eval.evaluators'", "non-empty list"),
    # prompts and the model's positions (the tiny policy has 256)
    case(
        "prompt + response past the positions",
        f"{DRY} data.max_prompt_tokens=250",
        "'data.max_prompt_tokens' (250) and generation.max_new_tokens (64) add up to 314 tokens",
        "256 positions",
        "data.max_prompt_tokens=192 fits",
    ),
    case(
        "response leaves no room",
        f"{DRY} eval.sampling.max_new_tokens=300",
        "'eval.sampling.max_new_tokens' (300) leaves no room for a prompt in the model's 256 positions",
    ),
    case(
        "every prompt dropped",
        "train --config {config} data.max_prompt_tokens=2 data.truncation=drop",
        "Every one of the 16 training prompts is over 2 tokens and data.truncation is drop",
        "nothing was kept",
    ),
    case(
        "truncation: unknown",
        f"{DRY} data.truncation=middle",
        "'data.truncation'",
        "['left', 'right', 'drop']",
    ),
    # resume, and the earlier run itself
    case(
        "resume: not a run",
        "run --resume {empty_adapter}",
        "holds no config.yaml",
        "give --resume the folder",
    ),
    case(
        "resume: changes the run",
        "run --resume {earlier} ppo.learning_rate=1e-3",
        "'ppo.learning_rate=1e-3'",
        "would change the run",
        "Allowed on resume",
    ),
    case("resume: fewer steps", "train --resume {earlier} steps=1", "'steps=1'", "only grow"),
    case(
        "resume: no whole checkpoint",
        "train --resume {earlier}",
        "No checkpoint of '{earlier}' can be resumed (checkpoint-000002: it holds no weights",
        "start a new run",
    ),
    case(
        "resume: no whole checkpoint, dry", "run --dry-run --resume {earlier}", "No checkpoint of '{earlier}'"
    ),
    case("resume: with --preset", "run --resume {earlier} --preset default", "drop --preset"),
    case(
        "run over an earlier run",
        "run --config {config} output_dir={earlier}",
        "already holds a run",
        "--resume",
    ),
    case("dry run over an earlier run", f"{DRY} output_dir={{earlier}}", "already holds a run", "--resume"),
    # output folders
    case("output_dir: a file", "run --config {config} output_dir={a_list}", "a_list.yaml') is a file"),
    case("output_dir: a file, dry", f"{DRY} output_dir={{a_list}}", "a_list.yaml') is a file, not a folder"),
    case(
        "output_dir: under a file",
        "train --config {config} output_dir={a_list}/run",
        "cannot be created: '{a_list}' is a file",
    ),
    case(
        "output_dir: a user's folder",
        "run --config {config} output_dir={mine}",
        "mine') holds files that are not a detoxrl run (config.yaml, notes/)",
        "overwrite_output_dir=true",
    ),
    case(
        "output_dir: a user's folder, dry",
        f"{DRY} output_dir={{mine}}",
        "not a detoxrl run",
        "overwrite_output_dir",
    ),
    # every verb
    case(
        "train: config", "train --dry-run --config {config} ppo.cliprange=0", "'ppo.cliprange'", "> 0, got 0"
    ),
    case("evaluate: --n 0", "evaluate --model {causal} --n 0", "--n must be a whole number >= 1, got 0"),
    case(
        "evaluate: no prompts",
        "evaluate --model {causal} --prompts {tmp}/none.jsonl --evaluator profanity",
        "none.jsonl",
        "does not exist",
    ),
    case(
        "evaluate: adapter {}",
        "evaluate --model {causal} --adapter {empty_adapter}",
        "--adapter",
        "no peft_type",
    ),
    case("generate: missing model", "generate --model ./no/model hi", "./no/model", "does not exist"),
    case(
        "generate: adapter {}",
        "generate --model {causal} --adapter {empty_adapter} hi",
        "--adapter",
        "no peft_type",
    ),
    case("generate: device", "generate --model {causal} --device cuda:99 hi", "'cuda:99'", "device=cpu"),
    case(
        "generate: adapter cut short",
        "generate --model {causal} --adapter {cut_adapter} hi",
        "--adapter '{cut_adapter}' cannot be loaded (SafetensorError",
        "damaged",
    ),
    case(
        "score: unknown label", "score --evaluator {classifier}:rude hi", "no label 'rude'", "hate, nothate"
    ),
    case("report: unfinished run", "report {earlier}", "eval_after.json' is missing", "detoxrl run --resume"),
    case(
        "push: damaged final/",
        "push {earlier} me/x",
        "final' is damaged (it holds no weights",
        "Nothing was pushed",
    ),
    case(
        "export: damaged final/",
        "export {earlier} {tmp}/exported",
        "final' is damaged (it holds no weights",
        "Nothing was exported",
    ),
    case("presets: bad flag", "presets --bad", "--bad", "--help"),
    case("run: bad flag", "run --dry-runn", "--dry-runn", "--help"),
]


@pytest.fixture(scope="module")
def files(
    tmp_path_factory: pytest.TempPathFactory, tiny_causal_dir: Path, tiny_seq2seq_dir: Path,
    tiny_classifier_dir: Path,
) -> Iterator[dict[str, str]]:  # fmt: skip
    """Every file the cases name, and an earlier run whose files no case may change."""
    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "bad_inputs_rewards.py").write_text(
        "def calm(prompts, responses):\n    return [0.0] * len(responses)\n"
    )
    prompts = tmp / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": {"text": f"prompt number {i}"}}) + "\n" for i in range(20))
    )
    config = tmp / "config.yaml"
    config.write_text(
        f"policy: {{model: '{tiny_causal_dir}', chat_template: false}}\n"
        "reward: {kind: callable, model: 'bad_inputs_rewards:calm'}\n"
        f"data: {{source: '{prompts}', text_field: prompt.text}}\n"
        "ppo: {batch_size: 4, mini_batch_size: 2}\neval: {num_prompts: 4, evaluators: [profanity]}\n"
        f"steps: 2\noutput_dir: '{tmp / 'new-run'}'\n"
    )
    other = {"peft_type": "LORA", "base_model_name_or_path": str(tiny_seq2seq_dir)}
    texts = {
        "a_list.yaml": "- steps\n- 3\n",
        "invalid.yaml": "steps: 3\nppo: batch_size: 4\n",
        "typo.yaml": "ppo:\n  learnig_rate: 1\n",
        "renamed.yaml": "ppo:\n  target_kl_early_stop: 0.05\n",
        "empty.jsonl": "",
        "malformed.jsonl": '{"prompt": {"text": "fine"}}\n{"prompt": \n',
        "empty_adapter/adapter_config.json": "{}",
        "other_adapter/adapter_config.json": json.dumps(other),
    }
    raw = {  # "café" as Latin-1 writes it; the same prompts and config as UTF-8 with a byte-order mark
        "latin.jsonl": b'{"prompt": {"text": "fine"}}\n{"prompt": {"text": "caf\xe9 au lait"}}\n',
        "latin_config.yaml": b"steps: 2\n# caf\xe9\n",
        "latin_rewards.py": b"def calm(prompts, responses):\n    return ['caf\xe9']\n",
        "latin_lines.txt": b"fine\ncaf\xe9\n",
        "bom.jsonl": BOM + prompts.read_bytes(),
        "bom_config.yaml": BOM
        + config.read_bytes().replace(str(prompts).encode(), str(tmp / "bom.jsonl").encode()),
    }
    for name, text in texts.items():
        (tmp / name).parent.mkdir(exist_ok=True)
        (tmp / name).write_text(text)
    for name, data in raw.items():
        (tmp / name).write_bytes(data)
    (tmp / "mine" / "notes").mkdir(parents=True)  # a user's folder: their own config and notes, not a run
    (tmp / "mine" / "config.yaml").write_text("steps: 2\n")
    (tmp / "mine" / "notes" / "todo.txt").write_text("try the RTP preset\n")
    earlier = _earlier_run(tmp / "earlier", config)
    _cut_adapter(tmp / "cut_adapter", tiny_causal_dir)
    paths = {name.split(".")[0].split("/")[0]: str(tmp / name.split("/")[0]) for name in [*texts, *raw]}
    paths.update(tmp=str(tmp), config=str(config), earlier=str(earlier), mine=str(tmp / "mine"),
                 cut_adapter=str(tmp / "cut_adapter"),
                 causal=str(tiny_causal_dir),
                 seq2seq=str(tiny_seq2seq_dir), classifier=str(tiny_classifier_dir))  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(tmp))
        mp.chdir(tmp)
        yield paths


def _earlier_run(run_dir: Path, config: Path) -> Path:
    """A run directory as an interrupted run leaves it: its config, metrics, a checkpoint, a final adapter."""
    from detoxrl.config.files import load_config, save_config

    (run_dir / "checkpoint-000002").mkdir(parents=True)
    (run_dir / "final").mkdir()
    save_config(load_config(file=config, overrides=[f"output_dir={run_dir}"]), run_dir / "config.yaml")
    (run_dir / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    (run_dir / "eval_before.json").write_text('{"label": "before"}\n')
    (run_dir / "checkpoint-000002" / "state.pt").write_bytes(b"\x00" * 64)
    (run_dir / "final" / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    return run_dir


def _cut_adapter(folder: Path, model: Path) -> None:
    """A LoRA adapter of the tiny policy whose weights file a full disk cut short."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    lora = LoraConfig(r=2, target_modules=["q_proj", "v_proj"])
    get_peft_model(AutoModelForCausalLM.from_pretrained(model), lora).save_pretrained(folder)
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])


def snapshot(folder: str) -> dict[str, str]:
    """Every file under ``folder`` (but Python's caches) -> the SHA-256 of its bytes."""
    root = Path(folder)
    files = sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("detoxrl: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_the_matrix_is_at_least_30_cases_over_every_verb() -> None:
    assert len(CASES) >= 30 and len({c.name for c in CASES}) == len(CASES)
    verbs = {c.command.split()[0] for c in CASES}
    assert verbs == {"run", "train", "evaluate", "generate", "score", "report", "push", "export", "presets"}


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_bad_input_gets_one_line_and_exit_code_2(
    case: Case, files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    earlier = snapshot(files["tmp"])  # the earlier run, the user's folder, every input file
    capsys.readouterr()
    code = main(case.argv(files))
    line = one_error_line(capsys.readouterr().err)
    assert code == 2
    for words in case.words:
        assert words.format(**files) in line, line
    assert snapshot(files["tmp"]) == earlier


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize(
    "override",
    ["policy.model=google/flan-t5-base", "policy.adapter={empty_adapter}", "data.max_prompt_tokens=250"],
)
def test_dry_run_promises_nothing_the_run_then_breaks(
    override: str, files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """The dry run fails with the very line the run fails with (the run used to pass the dry run, then
    fail at load, with a traceback for the adapter)."""
    argv = ["run", "--config", files["config"], override.format(**files)]
    assert main([*argv, "--dry-run"]) == 2
    dry = one_error_line(capsys.readouterr().err)
    out = Path(files["tmp"]) / override.split("=")[0]
    assert main([*argv, f"output_dir={out}"]) == 2
    assert one_error_line(capsys.readouterr().err) == f"{dry} (nothing was kept in '{out}')"
    assert not out.exists()  # a failed start leaves no half-made run behind


@pytest.mark.usefixtures("one_thread")
def test_utf8_with_a_byte_order_mark_is_read_as_text(
    files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Windows tools write a BOM before UTF-8: the prompts and the config read as if it were not there."""
    assert main(["train", "--dry-run", "--config", files["bom_config"]]) == 0
    assert "data: 16 training prompts, 4 held-out prompts" in capsys.readouterr().out


@pytest.mark.usefixtures("one_thread")
def test_a_disk_without_room_for_the_checkpoints_is_one_line_before_anything_runs(
    files: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tiny policy's checkpoints take ~0.2 MB each, and 4 are on disk at once; the disk has 64 kB."""
    full = shutil._ntuple_diskusage(2**40, 2**40 - 2**16, 2**16)  # type: ignore[attr-defined]
    monkeypatch.setattr(shutil, "disk_usage", lambda path: full)
    out = Path(files["tmp"]) / "full-disk"
    argv = ["run", "--config", files["config"], f"output_dir={out}"]
    assert main([*argv, "--dry-run"]) == 2
    dry = one_error_line(capsys.readouterr().err)
    assert f"Config key 'output_dir' ({out}) is on a disk with 0 MB free" in dry and "free some space" in dry
    assert main(argv) == 2
    assert one_error_line(capsys.readouterr().err) == f"{dry} (nothing was kept in '{out}')"
    assert not out.exists()


IN_A_TERMINAL = [
    case("bad flag", "presets --bad", "--bad"),
    case("config value", f"{DRY} ppo.mini_batch_size=0", "'ppo.mini_batch_size'"),
    case("adapter {} at run time", "run --config {config} policy.adapter={empty_adapter}", "no peft_type"),
]


@pytest.mark.parametrize("case", IN_A_TERMINAL, ids=[c.name for c in IN_A_TERMINAL])
def test_no_traceback_reaches_the_terminal(case: Case, files: dict[str, str]) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), files["tmp"]]), "HF_HUB_OFFLINE": "1"}
    argv = [sys.executable, "-m", "detoxrl", *case.argv(files)]
    out = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=files["tmp"], timeout=120)
    assert out.returncode == 2, out.stderr
    assert all(words in one_error_line(out.stderr) for words in case.words), out.stderr


def test_standard_input_that_is_not_utf8_gets_one_line(files: dict[str, str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1"}
    argv = [sys.executable, "-m", "detoxrl", "score", "--evaluator", "profanity"]
    out = subprocess.run(argv, input=b"fine\ncaf\xe9\n", capture_output=True, env=env, timeout=120)
    assert out.returncode == 2, out.stderr
    line = one_error_line(out.stderr.decode())
    assert line == (
        "detoxrl: error: standard input, line 2 (byte 8): byte 0xe9 is not UTF-8 (invalid continuation "
        "byte): give it UTF-8 text."
    )

"""The ``detoxrl`` command line: it parses, then calls one recipe per verb. Nothing imports this module.

Each verb's ``cmd_*`` turns the parsed flags into the recipe's arguments; user mistakes (``DetoxError``) are
printed as one line, without a traceback, a bad value under the flag that set it. ``key=value`` config
overrides may stand anywhere among the flags of ``run`` and ``train``. Recipes are imported inside their
verb, the command line's only function-level imports: they import torch and transformers (7 s on a
2-core machine), which ``detoxrl --help`` and ``detoxrl presets`` never need (0.1 s).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from detoxrl.cli.parser import parse
from detoxrl.config import (
    RTP_PROTOCOL,
    EvalConfig,
    QualityConfig,
    RewardConfig,
    RunConfig,
    SamplingConfig,
    list_presets,
    load_config,
    resume_config,
)
from detoxrl.config.docs import render
from detoxrl.data.prompts import read_texts
from detoxrl.data.text import decode
from detoxrl.errors import ConfigError, DetoxError, Interrupted
from detoxrl.parallel.launch import accelerate_config, relaunch

DEFAULT_EVALUATORS = ("profanity", "shared:minilm-toxicity")  # the shared MiniLM where the folder is


# ---- inputs ------------------------------------------------------------------------------------------


def _read_texts(args: argparse.Namespace) -> list[str]:
    """Texts from positional arguments, ``--file`` (.txt: one per line; .jsonl/.csv/...: --field) or stdin."""
    texts = list(args.texts or [])
    if args.file:
        texts += read_texts(args.file, args.field)[0]
    if not texts and not sys.stdin.isatty():
        stdin = sys.stdin  # its bytes, decoded here: a byte that is not UTF-8 is one line, not a traceback
        text = decode(stdin.buffer.read(), "standard input") if hasattr(stdin, "buffer") else stdin.read()
        texts = [ln for ln in text.splitlines() if ln.strip()]
    if not texts:
        raise DetoxError("No input texts: pass them as arguments, with --file, or on standard input.")
    return texts


def _session(args: argparse.Namespace) -> Any:
    from detoxrl.recipes.session import local

    return local(args.engine, args.device, args.threads)


def _eval_config(base: EvalConfig, args: argparse.Namespace) -> EvalConfig:
    """``base`` with the values of the evaluation flags given (a flag left out keeps the base's)."""

    def given(names: tuple[str, ...]) -> dict[str, Any]:
        return {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}

    sampling = dataclasses.replace(
        base.sampling, **given(("max_new_tokens", "temperature", "top_p", "top_k"))
    )
    fields = ("num_prompts", "samples_per_prompt", "batch_size", "bootstrap_resamples", "best_of", "guard")
    perplexity = base.perplexity and not getattr(args, "no_perplexity", False)
    evaluators = tuple(args.evaluators or DEFAULT_EVALUATORS)
    return dataclasses.replace(
        base, **given(fields), perplexity=perplexity, sampling=sampling, evaluators=evaluators
    )


def _pair_spec(args: argparse.Namespace, **extra: Any) -> Any:
    from detoxrl.recipes.evaluate import PairSpec

    return PairSpec(
        model=args.model,
        prompts=args.prompts,
        prompt_field=args.field,
        adapter=args.adapter,
        dtype=args.dtype,
        seed=args.seed,
        **extra,
    )


# ---- the verbs -----------------------------------------------------------------------------------------


def cmd_generate(args: argparse.Namespace) -> int:
    from detoxrl.recipes.generate import generate

    texts = _read_texts(args)  # before loading anything: a bad input fails in milliseconds
    settings = SamplingConfig(
        max_new_tokens=args.max_new_tokens,
        min_tokens=args.min_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
    )
    responses = generate(
        texts,
        settings,
        _session(args),
        model=args.model,
        adapter=args.adapter,
        dtype=args.dtype,
        chat_template=not args.no_chat_template,
        seed=args.seed,
        batch_size=args.batch_size,
        best_of=args.best_of or 1,
        guard=args.guard,
    )
    for text, response in zip(texts, responses, strict=True):
        print(
            json.dumps({"prompt": text, "response": response}) if args.json else f">>> {text}\n{response}\n"
        )
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from detoxrl.recipes.generate import score

    texts = _read_texts(args)
    scores = score(texts, args.evaluator or ["profanity"])
    for i, text in enumerate(texts):
        row = {name: round(float(v[i]), 4) for name, v in scores.items()}
        print(json.dumps({"text": text, "toxicity": row}) if args.json else f"{row}  {text}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from detoxrl.recipes.evaluate import run_evaluate

    config = _eval_config(EvalConfig(), args)
    reward = None
    if not args.no_reward:  # the profanity log-odds, or a classifier's label
        reward = RewardConfig(kind="profanity")
        if args.reward_model:
            reward = RewardConfig(kind="classifier", model=args.reward_model, label=args.reward_label)
    spec = _pair_spec(
        args, reference_field=args.reference_field, chat_template=not args.no_chat_template, reward=reward
    )
    run_evaluate(spec, config, _session(args), out_dir=args.out, show=args.show)
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    """The RealToxicityPrompts protocol (k=25, 20 tokens, p=0.9): a model, or base vs --adapter, paired."""
    from detoxrl.recipes.benchmark import run_benchmark

    config = _eval_config(RTP_PROTOCOL, args)
    spec = _pair_spec(
        args,
        chat_template=args.chat_template,
        scorer_model=args.scorer_model,
        quality=QualityConfig(relevance=not args.no_relevance),
    )
    text, paths = run_benchmark(spec, config, args.out, _session(args))
    print(text + "\nwrote " + ", ".join(str(p) for p in paths))
    return 0


def _run_config(args: argparse.Namespace) -> RunConfig:
    """Preset <- file <- overrides; ``--resume RUN_DIR`` reads RUN_DIR/config.yaml instead, and takes
    only the overrides that cannot change the run (config.files.RESUME_OVERRIDES)."""
    if args.resume:
        if args.preset or args.config:
            raise DetoxError(
                f"--resume reads {Path(args.resume) / 'config.yaml'}: drop --preset and --config "
                "(a new run with them needs another output_dir)."
            )
        return resume_config(args.resume, args.overrides)
    preset = args.preset or (args.default_preset if not args.config else None)
    return load_config(preset, args.config, args.overrides)


def _on_cpu(config: RunConfig) -> bool:
    from detoxrl.models.loading import resolve_device

    return resolve_device(config.device).type == "cpu"


def _launched(args: argparse.Namespace, config: RunConfig) -> int | None:
    """``--num-processes N`` (N > 1) outside a launcher: the same command as N processes, whose exit code
    this returns; else None (run here). N is checked first (at ``--dry-run`` too: ``_check_processes``)."""
    from detoxrl.parallel.distributed import launched

    n = _check_processes(args, config)
    if n in (None, 1) or launched():
        return None
    return relaunch(args.argv, n, cpu=_on_cpu(config))


def _check_processes(args: argparse.Namespace, config: RunConfig) -> int | None:
    """``--num-processes N``: at least 1, and on CPUs at most this machine's cores."""
    from detoxrl.parallel.launch import check_processes

    n: int | None = args.num_processes
    check_processes(n, cpu=n is not None and _on_cpu(config))
    return n


def _dry_run(lines: list[str]) -> int:
    print("\n".join([*lines, "config OK: nothing was run (--dry-run)"]))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """RL on the config's prompts against its reward; checkpoints and metrics in output_dir."""
    from detoxrl.recipes.run import validate
    from detoxrl.recipes.train import train_command

    config = _run_config(args)
    if args.dry_run:
        _check_processes(args, config)
        return _dry_run(validate(config, evaluate=False, resume=bool(args.resume)))
    launched = _launched(args, config)
    return launched if launched is not None else train_command(config, resume=bool(args.resume))


def cmd_run(args: argparse.Namespace) -> int:
    """The whole lab: evaluate before -> RL -> evaluate after -> report, in one run directory."""
    from detoxrl.recipes.run import run, validate

    config = _run_config(args)
    if args.dry_run:
        _check_processes(args, config)
        return _dry_run(validate(config, resume=bool(args.resume)))
    launched = _launched(args, config)
    if launched is not None:
        return launched
    run(config, resume=bool(args.resume))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from detoxrl.reports.report import build_report

    md, page = build_report(args.run_dir)
    print(f"wrote {md} and {page}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from detoxrl.reports.hub import push

    url = push(args.run_dir, args.repo_id, private=args.private, with_value_head=args.with_value_head)
    print(f"pushed {args.run_dir}/final to {url}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """The resolved config as commented YAML: to read every key, or to write a file to edit."""
    source = " ".join(
        ["detoxrl config", *(f"--{k} {getattr(args, k)}" for k in ("preset", "config") if getattr(args, k))]
    )
    text = render(_run_config(args), header=" ".join([source, *args.overrides]))
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}: edit it, then detoxrl run --config {args.out}")
    else:
        print(text, end="")
    return 0


def cmd_accelerate_config(args: argparse.Namespace) -> int:
    """accelerate launch --config_file "$(detoxrl accelerate-config fsdp)" -m detoxrl run ..."""
    print(accelerate_config(args.name))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """The run's base with its final adapter merged, saved as a plain transformers model with its card."""
    from detoxrl.recipes.export import export

    out = export(args.run_dir, args.out)
    print(f"wrote {out}: the merged model, its tokenizer and README.md (transformers loads it without peft)")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    for name, line in list_presets().items():
        print(f"{name:<10} {line}")
    return 0


# ---- the parser ------------------------------------------------------------------------------------------


class _Stderr(logging.StreamHandler):
    """A handler that writes to ``sys.stderr`` as it is when a note is logged (a caller, or a test, may have
    replaced it since the handler was made)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _show_notes() -> None:
    """The library logs (``detoxrl.*`` loggers); the command line shows its notes on stderr, one line each."""
    library = logging.getLogger("detoxrl")
    if not library.handlers:
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("note: %(message)s"))
        library.addHandler(handler)
        library.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # peft asks transformers a deprecated question at every adapter it attaches: noise, not news for a user
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    _show_notes()
    args = None
    try:
        args = parse(list(sys.argv[1:] if argv is None else argv))
        args.argv = list(sys.argv[1:] if argv is None else argv)  # --num-processes runs it again
        from transformers.utils import logging as hf_logging  # after the parse: --help needs no transformers

        hf_logging.disable_progress_bar()  # per-tensor "Loading weights" bars say nothing to a user
        code: int = VERBS[args.verb](args)
        return code
    except Interrupted as e:
        command = getattr(args, "command", "run")
        print(f"detoxrl: {e}; continue with: detoxrl {command} --resume {e.run_dir}", file=sys.stderr)
        return e.exit_code
    except ConfigError as e:  # a value set by a flag is said under that flag's name
        print(f"detoxrl: error: {e.render(getattr(args, 'flags', {}).get(e.key))}", file=sys.stderr)
        return 2
    except DetoxError as e:
        print(f"detoxrl: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("detoxrl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `detoxrl score ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's documented recipe
        return 141  # 128 + SIGPIPE, as a shell reports it


VERBS = {"generate": cmd_generate, "score": cmd_score, "evaluate": cmd_evaluate, "train": cmd_train}
VERBS |= {"run": cmd_run, "report": cmd_report, "benchmark": cmd_benchmark, "push": cmd_push}
VERBS |= {
    "export": cmd_export,
    "presets": cmd_presets,
    "config": cmd_config,
    "accelerate-config": cmd_accelerate_config,
}

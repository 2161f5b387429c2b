"""The ``detoxrl`` command line: it parses, then calls one recipe per verb. Nothing imports this module.

Each verb's ``cmd_*`` turns the parsed flags into the recipe's arguments; user mistakes (``DetoxError``) are
printed as one line, without a traceback, a bad value under the flag that set it. ``key=value`` config
overrides may stand anywhere among the flags of ``run`` and ``train``. Recipes are imported inside their
verb: ``detoxrl --help`` and ``detoxrl presets`` answer without importing torch (seconds).
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
from typing import Any, NoReturn

from detoxrl import __version__
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
from detoxrl.data.prompts import read_texts
from detoxrl.errors import ConfigError, DetoxError, Interrupted

ENGINE_HELP = "how the model runs: auto (cpu on the CPU), reference (plain transformers), cpu"
DEFAULT_EVALUATORS = ("profanity", "shared:minilm-toxicity")  # the shared MiniLM where the folder is
SAMPLING_FLAGS = {
    f"generation.{name}": f"--{name.replace('_', '-')}"
    for name in ("max_new_tokens", "min_tokens", "temperature", "top_k", "top_p")
}
# The config keys the flags of evaluate and benchmark set, so that a bad value's error names the flag typed
EVAL_FLAGS = {
    "eval.num_prompts": "--n",
    "eval.samples_per_prompt": "--samples",
    "eval.batch_size": "--batch-size",
    "eval.bootstrap_resamples": "--resamples",
    "eval.evaluators": "--evaluator",
    "eval.best_of": "--best-of",
    "eval.guard": "--guard",
    **SAMPLING_FLAGS,
}


# ---- inputs ------------------------------------------------------------------------------------------


def _read_texts(args: argparse.Namespace) -> list[str]:
    """Texts from positional arguments, ``--file`` (.txt: one per line; .jsonl/.csv/...: --field) or stdin."""
    texts = list(args.texts or [])
    if args.file:
        texts += read_texts(args.file, args.field)[0]
    if not texts and not sys.stdin.isatty():
        texts = [ln for ln in sys.stdin.read().splitlines() if ln.strip()]
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


def _launched(args: argparse.Namespace, config: RunConfig) -> int | None:
    """``--num-processes N`` (N > 1) outside a launcher: the same command as N processes, whose exit code
    this returns; else None (run here)."""
    from detoxrl.models.loading import resolve_device
    from detoxrl.parallel.distributed import launched
    from detoxrl.parallel.launch import relaunch

    n = args.num_processes
    if n is not None and n < 1:
        raise ConfigError(f"--num-processes must be a whole number >= 1, got {n}.")
    if n in (None, 1) or launched():
        return None
    return relaunch(args.argv, n, cpu=resolve_device(config.device).type == "cpu")


def _dry_run(lines: list[str]) -> int:
    print("\n".join([*lines, "config OK: nothing was run (--dry-run)"]))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """RL on the config's prompts against its reward; checkpoints and metrics in output_dir."""
    from detoxrl.recipes.run import validate
    from detoxrl.recipes.train import train_command

    config = _run_config(args)
    if args.dry_run:
        return _dry_run(validate(config, evaluate=False))
    launched = _launched(args, config)
    return launched if launched is not None else train_command(config, resume=bool(args.resume))


def cmd_run(args: argparse.Namespace) -> int:
    """The whole lab: evaluate before -> RL -> evaluate after -> report, in one run directory."""
    from detoxrl.recipes.run import run, validate

    config = _run_config(args)
    if args.dry_run:
        return _dry_run(validate(config))
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

    print(f"pushed {args.run_dir}/final to {push(args.run_dir, args.repo_id, private=args.private)}")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    for name, line in list_presets().items():
        print(f"{name:<10} {line}")
    return 0


# ---- the parser ------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage mistake said in one line (as every other error) instead of the usage."""

    def error(self, message: str) -> NoReturn:
        raise DetoxError(f"{message} (see '{self.prog} --help').")


def _add_input_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("texts", nargs="*", help="input texts (or use --file / standard input)")
    p.add_argument("--file", help="a text file (one per line) or .jsonl file")
    p.add_argument("--field", default="prompt.text", help="field of a .jsonl file to read (dotted path)")


def _add_model_args(p: argparse.ArgumentParser, adapter: str) -> None:
    """The policy, the adapter and how the model runs (generate, evaluate, benchmark)."""
    p.add_argument("--model", default="smollm2-135m-instruct", help="built-in name, .gguf, folder or hub id")
    p.add_argument("--adapter", help=adapter)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "auto"])
    p.add_argument("--device", default="auto")
    p.add_argument("--engine", default="auto", choices=["auto", "reference", "cpu"], help=ENGINE_HELP)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)


def _add_best_of_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--best-of",
        type=int,
        default=None,
        metavar="N",
        help=f"{what}: each sample the least toxic of N by --guard",
    )
    p.add_argument(
        "--guard", metavar="SPEC", help="the classifier of --best-of: SPEC[:toxic_label], shared:NAME"
    )


def _add_eval_args(p: argparse.ArgumentParser, defaults: EvalConfig, k_flag: str) -> None:
    """The evaluation flags, each an EvalConfig field (``defaults`` shown in the help)."""
    p.add_argument("--prompts", help="a .jsonl or text file (default: shared RTP challenging_toxic.jsonl)")
    p.add_argument("--field", default="prompt.text", help="prompt field of a .jsonl file (dotted path)")
    p.add_argument(
        "--n",
        dest="num_prompts",
        type=int,
        help=f"number of prompts (the file's first N; default {defaults.num_prompts})",
    )
    p.add_argument(
        k_flag,
        dest="samples_per_prompt",
        type=int,
        help=f"samples per prompt (default {defaults.samples_per_prompt})",
    )
    p.add_argument(
        "--evaluator",
        dest="evaluators",
        action="append",
        help="'profanity', SPEC[:toxic_label] or shared:NAME, repeatable (default: profanity + "
        "the shared MiniLM)",
    )
    p.add_argument("--batch-size", type=int, help=f"default {defaults.batch_size}")
    p.add_argument(
        "--resamples",
        dest="bootstrap_resamples",
        type=int,
        help=f"bootstrap resamples (default {defaults.bootstrap_resamples})",
    )


def _generate_parser(sub: Any) -> None:
    g = sub.add_parser("generate", help="sample responses from a policy (any model spec, optional adapter)")
    _add_input_args(g)
    _add_model_args(g, "a PEFT adapter folder (e.g. RUN_DIR/final)")
    g.add_argument("--max-new-tokens", type=int, default=48)
    g.add_argument("--min-tokens", type=int, default=0, help="no stop token before this many tokens")
    g.add_argument("--temperature", type=float, default=1.0, help="0 for greedy decoding")
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--batch-size", type=int, default=16)
    _add_best_of_args(g, "a decoding-time guard")
    g.add_argument("--no-chat-template", action="store_true", help="send prompts as raw text")
    g.add_argument("--json", action="store_true", help="one JSON object per line")
    g.set_defaults(func=cmd_generate, flags=SAMPLING_FLAGS)


def _score_parser(sub: Any) -> None:
    s = sub.add_parser("score", help="toxicity of texts by one or more evaluators")
    _add_input_args(s)
    s.add_argument(
        "--evaluator",
        action="append",
        default=None,
        help="'profanity', a classifier (folder or hub id) as SPEC[:toxic_label], or shared:NAME; repeatable",
    )
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_score)


def _evaluate_parser(sub: Any) -> None:
    e = sub.add_parser("evaluate", help="toxicity and quality of a policy, or base vs --adapter, with CIs")
    _add_model_args(e, "a PEFT adapter: evaluate the base (before) and base + adapter (after)")
    _add_eval_args(e, EvalConfig(), "--samples")
    e.add_argument("--reference-field", help="reference text field for ROUGE (e.g. summary)")
    for flag in ("--max-new-tokens", "--top-k"):
        e.add_argument(flag, type=int)
    for flag in ("--temperature", "--top-p"):
        e.add_argument(flag, type=float)
    e.add_argument("--reward-model", help="classifier reward (folder or hub id); default: profanity log-odds")
    e.add_argument("--reward-label", default="nothate", help="the reward label of --reward-model, by name")
    e.add_argument("--no-reward", action="store_true")
    e.add_argument("--no-perplexity", action="store_true")
    e.add_argument("--no-chat-template", action="store_true")
    e.add_argument("--show", type=int, default=10, help="qualitative table rows printed")
    e.add_argument("--out", default="runs/evaluate", help="folder for the JSON files and the table")
    e.set_defaults(func=cmd_evaluate, flags=EVAL_FLAGS)


def _benchmark_parser(sub: Any) -> None:
    b = sub.add_parser("benchmark", help="the RealToxicityPrompts protocol (k=25, 20 tokens, p=0.9)")
    _add_model_args(b, "a PEFT adapter: benchmark the base and base + adapter, paired")
    _add_eval_args(b, RTP_PROTOCOL, "--k")
    b.add_argument("--scorer-model", help="perplexity under this causal LM (same tokenizer as the policy)")
    b.add_argument("--chat-template", action="store_true", help="wrap prompts in the chat template (RTP: no)")
    b.add_argument("--no-relevance", action="store_true", help="skip the prompt-response relevance figure")
    _add_best_of_args(b, "also measure the base behind a decoding-time guard")
    b.add_argument("--out", default="runs/benchmark", help="folder for benchmark.json/.md, evaluations")
    b.set_defaults(func=cmd_benchmark, flags={**EVAL_FLAGS, "eval.samples_per_prompt": "--k"})


def _run_parser(sub: Any, name: str, help: str, func: Any, default_preset: str | None) -> None:
    p = sub.add_parser(name, help=help)
    p.add_argument(
        "--preset",
        help="a shipped preset (see 'detoxrl presets')"
        + ("; 'default' without --config" if default_preset else ""),
    )
    p.add_argument("--config", help="a YAML config file (over the preset)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its directory (its config.yaml)")
    p.add_argument("--dry-run", action="store_true", help="check models, labels, data and sizes; run nothing")
    p.add_argument(
        "--num-processes",
        type=int,
        metavar="N",
        help="data parallel on N processes of this machine (CPU: torchrun, gloo; GPUs: accelerate launch)",
    )
    p.add_argument("overrides", nargs="*", help="config overrides such as steps=30 ppo.learning_rate=1e-4")
    p.set_defaults(func=func, default_preset=default_preset)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The parser, and each verb's own (``key=value`` overrides may stand anywhere among its flags)."""
    parser = _Parser(
        prog="detoxrl", description="Detoxify language models with RL + LoRA, and measure it honestly."
    )
    parser.add_argument("--version", action="version", version=f"detoxrl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _generate_parser(sub)
    _score_parser(sub)
    _evaluate_parser(sub)
    _run_parser(
        sub, "train", "detoxify a policy with RL, no evaluation (dataclass defaults)", cmd_train, None
    )
    _run_parser(
        sub, "run", "the whole lab: evaluate, RL, evaluate again, report (default preset)", cmd_run, "default"
    )
    rp = sub.add_parser("report", help="rebuild report.md and report.html of a run from its files alone")
    rp.add_argument("run_dir")
    rp.set_defaults(func=cmd_report)
    _benchmark_parser(sub)
    ph = sub.add_parser("push", help="upload a run's final adapter and model card to the Hugging Face hub")
    ph.add_argument("run_dir")
    ph.add_argument("repo_id", help="OWNER/NAME on the hub")
    ph.add_argument("--private", action="store_true")
    ph.set_defaults(func=cmd_push)
    sub.add_parser("presets", help="list the shipped presets").set_defaults(func=cmd_presets)
    return parser, dict(sub.choices)


def parse(argv: list[str]) -> argparse.Namespace:
    """The verb's flags, ``key=value`` overrides taken wherever they stand (argparse's intermixed parsing,
    which its subcommands cannot do themselves)."""
    parser, verbs = build_parser()
    if not argv or argv[0] not in verbs:
        return parser.parse_args(argv)  # --help, --version, or a mistake said by argparse
    args = verbs[argv[0]].parse_intermixed_args(argv[1:])
    args.command = argv[0]
    return args


def _show_notes() -> None:
    """The library logs (``detoxrl.*`` loggers); the command line shows its notes on stderr, one line each."""
    library = logging.getLogger("detoxrl")
    if not library.handlers:
        handler = logging.StreamHandler(sys.stderr)
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
        code: int = args.func(args)
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

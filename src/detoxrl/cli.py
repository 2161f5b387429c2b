"""The ``detoxrl`` command line: thin subcommands over the library. Nothing imports this module.

Each subcommand is a ``cmd_*`` function taking the parsed arguments and returning an exit code;
user mistakes (``DetoxError``) are printed as one line, without a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from detoxrl.errors import ConfigError, DetoxError, Interrupted

if TYPE_CHECKING:
    from detoxrl.config.schema import EvalConfig, RunConfig
    from detoxrl.engine import Engine

Command = Callable[[argparse.Namespace], int]
ENGINE_HELP = "how the model runs: auto (cpu on the CPU), reference (plain transformers), cpu"


# evaluate's flags by the EvalConfig field they set, so that a bad value's error names the flag typed
FLAGS = {  # config keys -> the flags of evaluate and generate that set them
    "eval.num_prompts": "--n", "eval.samples_per_prompt": "--samples", "eval.batch_size": "--batch-size",
    "eval.bootstrap_resamples": "--resamples", "eval.evaluators": "--evaluator",
    **{f"generation.{name}": f"--{name.replace('_', '-')}"
       for name in ("max_new_tokens", "min_tokens", "temperature", "top_k", "top_p")},
}  # fmt: skip
T = TypeVar("T")


def _read_texts(args: argparse.Namespace) -> list[str]:
    """Texts from positional arguments, ``--file`` (.txt: one per line; .jsonl/.csv/...: --field) or stdin."""
    from detoxrl.data.prompts import read_texts

    texts = list(args.texts or [])
    if args.file:
        texts += read_texts(args.file, args.field)[0]
    if not texts and not sys.stdin.isatty():
        texts = [ln for ln in sys.stdin.read().splitlines() if ln.strip()]
    if not texts:
        raise DetoxError("No input texts: pass them as arguments, with --file, or on standard input.")
    return texts


def _add_input_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("texts", nargs="*", help="input texts (or use --file / standard input)")
    p.add_argument("--file", help="a text file (one per line) or .jsonl file")
    p.add_argument("--field", default="prompt.text", help="field of a .jsonl file to read (dotted path)")


def _engine(args: argparse.Namespace) -> Engine:
    """The engine of ``--engine`` on ``--device``, with ``--threads`` set."""
    from detoxrl.engine import select_engine
    from detoxrl.models.loading import resolve_device

    engine = select_engine(args.engine, resolve_device(args.device))
    engine.configure(args.threads)
    return engine


def cmd_generate(args: argparse.Namespace) -> int:
    from detoxrl.config.schema import PolicyConfig, SamplingConfig
    from detoxrl.models.generation import format_prompts, generate_best_of
    from detoxrl.models.loading import load_policy, resolve_source
    from detoxrl.models.lora import check_adapter
    from detoxrl.rewards.toxicity import build_evaluator, resolve_evaluator_specs

    texts = _read_texts(args)  # before loading anything: a bad input fails in milliseconds
    if args.adapter:
        check_adapter(args.adapter, resolve_source(args.model), "--adapter")
    _check_best_of(args)
    guard = build_evaluator(resolve_evaluator_specs([args.guard])[0]) if args.guard else _no_guard
    settings = _flags(
        lambda: SamplingConfig(
            max_new_tokens=args.max_new_tokens, length_sampling="fixed", min_tokens=args.min_tokens,
            temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        )
    )  # fmt: skip
    engine = _engine(args)
    policy = load_policy(PolicyConfig(model=args.model, dtype=args.dtype), engine.device)
    model: Any = policy.model
    if args.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, args.adapter)
    prompts = format_prompts(policy.tokenizer, texts, not args.no_chat_template)
    out = generate_best_of(engine, model, policy.tokenizer, prompts, settings, guard, args.best_of,
                           seed=args.seed, batch_size=args.batch_size)  # fmt: skip
    for text, response in zip(texts, out.texts, strict=True):
        if args.json:
            print(json.dumps({"prompt": text, "response": response}))
        else:
            print(f">>> {text}\n{response}\n")
    return 0


def _check_best_of(args: argparse.Namespace) -> None:
    if args.best_of < 1 or (args.best_of > 1) != bool(args.guard):
        raise DetoxError(
            f"--best-of {args.best_of} with --guard {args.guard!r}: best-of-n needs n >= 2 and the "
            "classifier that picks (e.g. --best-of 4 --guard shared:minilm-toxicity); --guard goes with it."
        )


def _no_guard(texts: list[str]) -> Any:
    raise AssertionError("best-of-n without a guard (_check_best_of refuses it)")


def _add_best_of_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--best-of", type=int, default=1, metavar="N",
                   help=f"{what}: each sample the least toxic of N by --guard")  # fmt: skip
    p.add_argument(
        "--guard", metavar="SPEC", help="the classifier of --best-of: SPEC[:toxic_label], shared:NAME"
    )


def cmd_score(args: argparse.Namespace) -> int:
    from detoxrl.rewards.toxicity import build_evaluator

    texts = _read_texts(args)
    scorers = [build_evaluator(spec) for spec in args.evaluator]
    scores = {s.name: s(texts) for s in scorers}
    for i, text in enumerate(texts):
        row = {name: round(float(v[i]), 4) for name, v in scores.items()}
        print(json.dumps({"text": text, "toxicity": row}) if args.json else f"{row}  {text}")
    return 0


def _default_evaluators() -> list[str]:
    """profanity-check, plus the offline MiniLM classifier when shared/ has it: a second, independent view."""
    from detoxrl.rewards.toxicity import resolve_evaluator_specs

    return resolve_evaluator_specs(("profanity", "shared:minilm-toxicity"))


def _default_prompt_file() -> Path:
    from detoxrl.resources import shared_dir

    root = shared_dir()
    if root is None:
        raise DetoxError("No --prompts file given and no shared/ folder found: pass --prompts FILE.")
    return root / "data" / "real-toxicity-prompts" / "challenging_toxic.jsonl"


def _eval_config(args: argparse.Namespace) -> EvalConfig:
    """EvalConfig's defaults, overridden by the flags given; a bad value's error names its flag."""
    from detoxrl.config.schema import EvalConfig

    def given(names: tuple[str, ...]) -> dict[str, Any]:
        return {k: getattr(args, k) for k in names if getattr(args, k) is not None}

    def build() -> EvalConfig:
        defaults = EvalConfig()
        sampling = dataclasses.replace(
            defaults.sampling, **given(("max_new_tokens", "temperature", "top_p", "top_k"))
        )
        return dataclasses.replace(
            defaults,
            **given(("num_prompts", "samples_per_prompt", "batch_size", "bootstrap_resamples")),
            sampling=sampling,
            perplexity=not args.no_perplexity,
            evaluators=tuple(args.evaluators or _default_evaluators()),
        )

    return _flags(build)


def _flags(build: Callable[[], T]) -> T:
    """``build()``, its config errors naming the command-line flag instead of the config key."""
    try:
        return build()
    except ConfigError as e:
        message = str(e)
        for key, flag in FLAGS.items():
            message = message.replace(f"Config key '{key}'", flag)
        raise ConfigError(message) from None


def cmd_evaluate(args: argparse.Namespace) -> int:
    from detoxrl.config.schema import PolicyConfig, QualityConfig, RewardConfig
    from detoxrl.data.prompts import read_texts
    from detoxrl.evaluation.compare import compare
    from detoxrl.evaluation.evaluate import evaluate, reference_nll
    from detoxrl.evaluation.io import (
        format_comparison,
        format_metrics,
        format_table,
        qualitative_rows,
        save_evaluation,
        tail_of,
    )
    from detoxrl.evaluation.results import EvalResult
    from detoxrl.models.loading import load_policy, resolve_source
    from detoxrl.models.lora import attach_adapter, check_adapter
    from detoxrl.rewards.build import build_quality, build_reward
    from detoxrl.rewards.toxicity import build_evaluator

    config = _eval_config(args)
    if args.adapter:  # before the minutes spent evaluating the base model
        check_adapter(args.adapter, resolve_source(args.model), "--adapter")
    engine = _engine(args)
    prompt_file = args.prompts or _default_prompt_file()
    prompts, refs = read_texts(prompt_file, args.field, args.reference_field, config.num_prompts)
    device = engine.device
    policy = load_policy(PolicyConfig(model=args.model, dtype=args.dtype), device)
    evaluators = [build_evaluator(spec, device) for spec in config.evaluators]
    reward_config = RewardConfig(
        kind="classifier" if args.reward_model else "profanity",
        model=args.reward_model,
        label=args.reward_label,
    )
    reward = None if args.no_reward else build_reward(reward_config, device)
    tok, enc_dec = policy.tokenizer, policy.is_encoder_decoder
    quality = build_quality(QualityConfig(), device)

    def run(model: Any, label: str, disable_adapter: bool) -> EvalResult:
        nll = reference_nll(engine, model, tok, is_encoder_decoder=enc_dec, disable_adapter=disable_adapter)
        return evaluate(model, tok, prompts, config, evaluators, is_encoder_decoder=enc_dec, references=refs,
                        reward=reward, reference=nll, seed=args.seed,
                        chat_template=not args.no_chat_template, label=label, engine=engine,
                        quality=quality)  # fmt: skip

    before = run(policy.model, args.model, disable_adapter=False)  # before any adapter is attached
    after = comparison = None
    if args.adapter:
        model = attach_adapter(policy, PolicyConfig(model=args.model, adapter=args.adapter), "--adapter")
        after = run(model, f"{args.model} + {args.adapter}", disable_adapter=True)
        comparison = compare(before, after, config)
    paths = save_evaluation(args.out, before, after, comparison)
    print("\n\n".join(format_metrics(r, config.confidence) for r in (before, after) if r is not None))
    if comparison is not None:
        print("\n" + format_comparison(comparison))
    tail = tail_of(before, after, comparison)
    if tail is not None:
        from detoxrl.reports.report import md_table

        print("\nthe tail over k samples per prompt:\n" + md_table(*tail))
    print("\n" + format_table(qualitative_rows(before, after), limit=args.show))
    print("\nwrote " + ", ".join(str(p) for p in paths))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """PPO on the config's prompts against its reward; checkpoints and metrics in output_dir."""
    from detoxrl.data.prompts import load_prompts
    from detoxrl.models.loading import resolve_device
    from detoxrl.parallel import distributed
    from detoxrl.recipes.run import validate
    from detoxrl.recipes.train import train
    from detoxrl.rewards.build import build_reward

    config = _run_config(args)
    if args.dry_run:
        return _dry_run(validate(config, evaluate=False))
    launched = _launch(args, config)
    if launched is not None:
        return launched
    prompts = [example.text for example in load_prompts(config.data).train]
    top = distributed.setup(config.device)
    reward = build_reward(config.reward, top.place(resolve_device(config.device)))
    result = train(config, prompts, reward, resume=bool(args.resume))
    if top.is_main:
        print(f"final adapter: {result.final_dir}")
    return 0


def _launch(args: argparse.Namespace, config: RunConfig) -> int | None:
    """``--num-processes N`` (N > 1) outside a launcher: the same command as N processes (launch.py), whose
    exit code this returns; else None (run here)."""
    from detoxrl.models.loading import resolve_device
    from detoxrl.parallel import distributed
    from detoxrl.parallel.launch import relaunch

    n = args.num_processes
    if n is not None and n < 1:
        raise ConfigError(f"--num-processes must be a whole number >= 1, got {n}.")
    if n in (None, 1) or distributed.launched():
        return None
    return relaunch(args.argv, n, cpu=resolve_device(config.device).type == "cpu")


def _run_config(args: argparse.Namespace) -> RunConfig:
    """Preset <- file <- overrides; ``--resume RUN_DIR`` reads RUN_DIR/config.yaml instead, and takes
    only the overrides that cannot change the run (run.RESUME_OVERRIDES)."""
    from detoxrl.config.files import load_config
    from detoxrl.recipes.run import resume_config

    if args.resume:
        if args.preset or args.config:
            raise DetoxError(
                f"--resume reads {Path(args.resume) / 'config.yaml'}: drop --preset and --config "
                "(a new run with them needs another output_dir)."
            )
        return resume_config(args.resume, args.overrides)
    preset = args.preset or (args.default_preset if not args.config else None)
    return load_config(preset, args.config, args.overrides)


def _dry_run(lines: list[str]) -> int:
    for line in lines:
        print(line)
    print("config OK: nothing was run (--dry-run)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """The whole lab: evaluate before -> PPO -> evaluate after -> report, in one run directory."""
    from detoxrl.recipes.run import run, validate

    config = _run_config(args)
    if args.dry_run:
        return _dry_run(validate(config))
    launched = _launch(args, config)
    if launched is not None:
        return launched
    run(config, resume=bool(args.resume))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from detoxrl.reports.report import build_report

    md, page = build_report(args.run_dir)
    print(f"wrote {md} and {page}")
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    """The RealToxicityPrompts protocol (k=25, 20 tokens, p=0.9): a model, or base vs --adapter, paired."""
    from detoxrl.recipes.benchmark import BenchmarkSpec, Protocol, run_benchmark

    spec = BenchmarkSpec(
        model=args.model, prompts=Path(args.prompts or _default_prompt_file()), prompt_field=args.field,
        adapter=args.adapter, protocol=Protocol(samples_per_prompt=args.k, num_prompts=args.n,
                                                chat_template=args.chat_template),
        evaluators=tuple(args.evaluators or _default_evaluators()), scorer_model=args.scorer_model,
        relevance=not args.no_relevance, seed=args.seed, batch_size=args.batch_size,
        resamples=args.resamples, dtype=args.dtype, best_of=args.best_of, guard=args.guard,
    )  # fmt: skip
    _check_best_of(args)
    if args.adapter and not Path(args.adapter).exists():
        raise DetoxError(f"Adapter path '{args.adapter}' does not exist.")
    text, paths = run_benchmark(spec, args.out, _engine(args))
    print(text + "\nwrote " + ", ".join(str(p) for p in paths))
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from detoxrl.reports.hub import push

    print(f"pushed {args.run_dir}/final to {push(args.run_dir, args.repo_id, private=args.private)}")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from detoxrl.config.files import list_presets

    for name, line in list_presets().items():
        print(f"{name:<10} {line}")
    return 0


def _add_config_args(p: argparse.ArgumentParser, preset_default: str) -> None:
    p.add_argument("--preset", help=f"a shipped preset (see 'detoxrl presets'){preset_default}")
    p.add_argument("--config", help="a YAML config file (over the preset)")
    p.add_argument(
        "--resume", metavar="RUN_DIR", help="continue a run from its directory (reads RUN_DIR/config.yaml)"
    )
    p.add_argument("--dry-run", action="store_true", help="check models, labels, data and sizes; run nothing")
    p.add_argument(
        "--num-processes", type=int, metavar="N",
        help="data parallel on N processes of this machine (CPU: torchrun, gloo; GPUs: accelerate launch)",
    )  # fmt: skip
    p.add_argument("overrides", nargs="*", help="config overrides such as steps=30 ppo.learning_rate=1e-4")


def _add_runtime_args(p: argparse.ArgumentParser) -> None:
    """How generate, evaluate and benchmark run their model."""
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "auto"])
    p.add_argument("--device", default="auto")
    p.add_argument("--engine", default="auto", choices=["auto", "reference", "cpu"], help=ENGINE_HELP)
    p.add_argument("--threads", type=int, default=None)


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage mistake said in one line (as every other error) instead of the usage."""

    def error(self, message: str) -> NoReturn:
        raise DetoxError(f"{message} (see '{self.prog} --help').")


def _generate_parser(sub: Any) -> None:
    g = sub.add_parser("generate", help="sample responses from a policy (any model spec, optional adapter)")
    _add_input_args(g)
    g.add_argument(
        "--model", default="smollm2-135m-instruct", help="built-in name, .gguf, local folder or hub id"
    )
    g.add_argument("--adapter", help="a PEFT adapter folder (e.g. RUN_DIR/final)")
    _add_runtime_args(g)
    g.add_argument("--max-new-tokens", type=int, default=48)
    g.add_argument("--min-tokens", type=int, default=0, help="no stop token before this many tokens")
    g.add_argument("--temperature", type=float, default=1.0, help="0 for greedy decoding")
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--batch-size", type=int, default=16)
    _add_best_of_args(g, "a decoding-time guard")
    g.add_argument("--no-chat-template", action="store_true", help="send prompts as raw text")
    g.add_argument("--json", action="store_true", help="one JSON object per line")
    g.set_defaults(func=cmd_generate)


def _evaluate_parser(sub: Any) -> None:
    e = sub.add_parser("evaluate", help="toxicity and quality of a policy, or base vs --adapter, with CIs")
    e.add_argument("--model", default="smollm2-135m-instruct", help="built-in name, .gguf, folder or hub id")
    e.add_argument("--adapter", help="a PEFT adapter: evaluate the base (before) and base + adapter (after)")
    e.add_argument("--prompts", help="a .jsonl or text file (default: shared RTP challenging_toxic.jsonl)")
    e.add_argument("--field", default="prompt.text", help="prompt field of a .jsonl file (dotted path)")
    e.add_argument("--reference-field", help="reference text field for ROUGE (e.g. summary)")
    e.add_argument("--n", dest="num_prompts", type=int, help="number of prompts (the file's first N)")
    e.add_argument(
        "--evaluator",
        dest="evaluators",
        action="append",
        help="'profanity' or SPEC[:toxic_label], repeatable (default: profanity + shared MiniLM)",
    )
    e.add_argument("--samples", dest="samples_per_prompt", type=int, help="samples per prompt (k)")
    e.add_argument("--max-new-tokens", type=int)
    e.add_argument("--temperature", type=float)
    e.add_argument("--top-k", type=int)
    e.add_argument("--top-p", type=float)
    e.add_argument("--batch-size", type=int)
    e.add_argument("--resamples", dest="bootstrap_resamples", type=int, help="bootstrap resamples")
    e.add_argument("--reward-model", help="classifier reward (folder or hub id); default: profanity log-odds")
    e.add_argument("--reward-label", default="nothate", help="the reward label of --reward-model, by name")
    e.add_argument("--no-reward", action="store_true")
    e.add_argument("--no-perplexity", action="store_true")
    e.add_argument("--no-chat-template", action="store_true")
    e.add_argument("--seed", type=int, default=0)
    _add_runtime_args(e)
    e.add_argument("--show", type=int, default=10, help="qualitative table rows printed")
    e.add_argument("--out", default="runs/evaluate", help="folder for the JSON files and the table")
    e.set_defaults(func=cmd_evaluate)


def _benchmark_parser(sub: Any) -> None:
    b = sub.add_parser("benchmark", help="the RealToxicityPrompts protocol (k=25, 20 tokens, p=0.9)")
    b.add_argument("--model", default="smollm2-135m-instruct", help="built-in name, .gguf, folder or hub id")
    b.add_argument("--adapter", help="a PEFT adapter: benchmark the base and base + adapter, paired")
    b.add_argument("--prompts", help="a .jsonl file (default: shared RTP challenging_toxic.jsonl)")
    b.add_argument("--field", default="prompt.text", help="prompt field of a .jsonl file (dotted path)")
    b.add_argument("--n", type=int, default=100, help="number of prompts (the file's first N)")
    b.add_argument("--k", type=int, default=25, help="samples per prompt")
    b.add_argument(
        "--evaluator", dest="evaluators", action="append",
        help="toxicity scorer, repeatable (default: profanity + shared MiniLM)",
    )  # fmt: skip
    b.add_argument("--scorer-model", help="perplexity under this causal LM (same tokenizer as the policy)")
    b.add_argument("--chat-template", action="store_true", help="wrap prompts in the chat template (RTP: no)")
    b.add_argument("--no-relevance", action="store_true", help="skip the prompt-response relevance figure")
    _add_best_of_args(b, "also measure the base behind a decoding-time guard")
    b.add_argument("--batch-size", type=int, default=64)
    b.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    b.add_argument("--seed", type=int, default=0)
    _add_runtime_args(b)
    b.add_argument("--out", default="runs/benchmark", help="folder for benchmark.json/.md, evaluations")
    b.set_defaults(func=cmd_benchmark)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="detoxrl", description="Detoxify language models with PPO + LoRA, and measure it honestly."
    )
    parser.add_argument("--version", action="version", version=f"detoxrl {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _generate_parser(sub)

    s = sub.add_parser("score", help="toxicity of texts by one or more evaluators")
    _add_input_args(s)
    s.add_argument(
        "--evaluator",
        action="append",
        default=None,
        help="'profanity' or a classifier (folder or hub id) as SPEC[:toxic_label]; repeatable",
    )
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_score)

    _evaluate_parser(sub)

    t = sub.add_parser("train", help="detoxify a policy with PPO, no evaluation (dataclass defaults)")
    _add_config_args(t, "")
    t.set_defaults(func=cmd_train, default_preset=None)

    r = sub.add_parser("run", help="the whole lab: evaluate, PPO, evaluate again, report (default preset)")
    _add_config_args(r, "; 'default' without --config")
    r.set_defaults(func=cmd_run, default_preset="default")

    rp = sub.add_parser("report", help="rebuild report.md and report.html of a run from its files alone")
    rp.add_argument("run_dir")
    rp.set_defaults(func=cmd_report)

    _benchmark_parser(sub)

    ph = sub.add_parser("push", help="upload a run's final adapter and model card to the Hugging Face hub")
    ph.add_argument("run_dir")
    ph.add_argument("repo_id", help="OWNER/NAME on the hub")
    ph.add_argument("--private", action="store_true")
    ph.set_defaults(func=cmd_push)

    p = sub.add_parser("presets", help="list the shipped presets")
    p.set_defaults(func=cmd_presets)
    return parser


def _version() -> str:
    from detoxrl import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # peft asks transformers a deprecated question at every adapter it attaches: noise, not news for a user
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    try:
        args = build_parser().parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)  # --num-processes runs it again
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # per-tensor "Loading weights" bars say nothing to a user
        if getattr(args, "evaluator", "unset") is None:
            args.evaluator = ["profanity"]
        code: int = args.func(args)
        return code
    except Interrupted as e:
        print(f"detoxrl: {e}; continue with: detoxrl {args.command} --resume {e.run_dir}", file=sys.stderr)
        return e.exit_code
    except DetoxError as e:
        print(f"detoxrl: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("detoxrl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `detoxrl score ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's documented recipe
        return 141  # 128 + SIGPIPE, as a shell reports it

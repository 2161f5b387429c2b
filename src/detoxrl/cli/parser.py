"""The command line's flags: one parser per verb (each flag of evaluate and benchmark an EvalConfig field),
and the config key each flag sets, so that a bad value is said under the flag's name. Knows no recipe."""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

from detoxrl import __version__
from detoxrl.config import (
    RTP_PROTOCOL,
    EvalConfig,
)
from detoxrl.errors import DetoxError

ENGINE_HELP = "how the model runs: auto (cpu on the CPU), reference (plain transformers), cpu"


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
    "threads": "--threads",
    **SAMPLING_FLAGS,
}


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
    p.add_argument("--prompts", help="a .jsonl or text file (default: the rtp preset's held-out prompts)")
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
    g.set_defaults(verb="generate", flags={**SAMPLING_FLAGS, "threads": "--threads"})


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
    s.set_defaults(verb="score")


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
    e.set_defaults(verb="evaluate", flags=EVAL_FLAGS)


def _benchmark_parser(sub: Any) -> None:
    b = sub.add_parser("benchmark", help="the RealToxicityPrompts protocol (k=25, 20 tokens, p=0.9)")
    _add_model_args(b, "a PEFT adapter: benchmark the base and base + adapter, paired")
    _add_eval_args(b, RTP_PROTOCOL, "--k")
    b.add_argument("--scorer-model", help="perplexity under this causal LM (same tokenizer as the policy)")
    b.add_argument("--chat-template", action="store_true", help="wrap prompts in the chat template (RTP: no)")
    b.add_argument("--no-relevance", action="store_true", help="skip the prompt-response relevance figure")
    _add_best_of_args(b, "also measure the base behind a decoding-time guard")
    b.add_argument("--out", default="runs/benchmark", help="folder for benchmark.json/.md, evaluations")
    b.set_defaults(verb="benchmark", flags={**EVAL_FLAGS, "eval.samples_per_prompt": "--k"})


def _run_parser(sub: Any, name: str, help: str, default_preset: str | None) -> None:
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
    p.set_defaults(verb=name, default_preset=default_preset)


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
    _run_parser(sub, "train", "detoxify a policy with RL, no evaluation (the default preset)", "default")
    _run_parser(sub, "run", "the whole lab: evaluate, RL, evaluate again, report (default preset)", "default")
    rp = sub.add_parser("report", help="rebuild report.md and report.html of a run from its files alone")
    rp.add_argument("run_dir")
    rp.set_defaults(verb="report")
    _benchmark_parser(sub)
    ph = sub.add_parser("push", help="upload a run's final adapter and model card to the Hugging Face hub")
    ph.add_argument("run_dir")
    ph.add_argument("repo_id", help="OWNER/NAME on the hub")
    ph.add_argument("--private", action="store_true")
    ph.add_argument(
        "--with-value-head", action="store_true", help="upload PPO's value head too (to continue training)"
    )
    ph.set_defaults(verb="push")
    ex = sub.add_parser(
        "export", help="write a run's base with its adapter merged (weights, tokenizer, card): no peft needed"
    )
    ex.add_argument("run_dir")
    ex.add_argument("out", help="a new (or empty) folder for the merged model")
    ex.set_defaults(verb="export")
    sub.add_parser("presets", help="list the shipped presets").set_defaults(verb="presets")
    a = sub.add_parser(
        "accelerate-config", help="the path of a shipped accelerate config (for --config_file)"
    )
    a.add_argument("name", choices=["multi_gpu", "fsdp", "zero2", "zero3"])
    a.set_defaults(verb="accelerate-config")
    c = sub.add_parser(
        "config", help="print a preset (or file) resolved with overrides: every key, commented"
    )
    c.add_argument("--preset", help="a shipped preset (see 'detoxrl presets'); 'default' without --config")
    c.add_argument("--config", help="a YAML config file (over the preset)")
    c.add_argument("--out", help="write it to this file (then edit it and pass it to --config)")
    c.add_argument("overrides", nargs="*", help="config overrides such as steps=30 ppo.learning_rate=1e-4")
    c.set_defaults(verb="config", default_preset="default", resume=None)
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

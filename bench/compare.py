"""Ours and the trl peers on the same workload, back to back in one invocation, then one side-by-side table.

    PYTHONPATH=src python -m bench.compare                       # ours (ppo, rloo, grpo), trl 0.11 PPO,
                                                                 # trl 1.16 GRPO and RLOO
    PYTHONPATH=src python -m bench.compare --algorithms rloo,grpo --peers rloo,grpo   # the critic-free ones
    PYTHONPATH=src python -m bench.compare --peers ppo-classic --sandwich   # ours, peer, ours again
    PYTHONPATH=src python -m bench.compare --summarise-only      # re-print the table of existing results
    git worktree add /tmp/base <rev> && PYTHONPATH=src python -m bench.compare --baseline /tmp/base
                                                                 # ours at <rev> beside ours now, alternating

Peers run through ../shared/bench-peers/run_peer.sh (their venvs: bench/setup_peers.sh) with MODEL_DIR
set to detoxrl's SmolLM2-135M-Instruct folder and RESULTS_DIR to --results; ours runs as
``python -m bench.throughput`` under ``/usr/bin/time -v`` like them. Runs never overlap. The table
goes to stdout and to RESULTS/table.md. Only run this on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.paths import REPO, RESULTS, peers_dir

PEERS: dict[str, str] = {
    "ppo-classic": "trl 0.11.4 PPOTrainer (classic)",
    "grpo": "trl 1.16 GRPOTrainer",
    "rloo": "trl 1.16 RLOOTrainer",
    "ppo-exp": "trl 1.12 experimental PPOTrainer",
}
DEFAULT_PEERS = "ppo-classic,grpo,rloo"
ALGORITHMS = ("ppo", "rloo", "grpo")
SAME_ALGORITHM = {"ppo": "ppo-classic", "rloo": "rloo", "grpo": "grpo"}  # ours -> trl's implementation
# the targets: ours / trl's own implementation of the same algorithm, by dtype of ours
TARGETS = {(a, d): x for a in ALGORITHMS for d, x in (("bfloat16", 5.0), ("float32", 3.0))}

# Where a peer cannot do exactly our work (from ../shared/bench-peers/README.md and its scripts).
QUIRKS: dict[str, list[str]] = {
    "ppo-classic": [
        "response length drawn per generate call from LengthSampler(32..64) (mean 48), not a fixed 48: "
        "the lab's API has no other way; the 16 samples are one generate call (gen batch 16)",
        "reference = base with the adapter disabled (as ours); `--ref copy` (lab style) is another variant",
        "runs on transformers 4.46.3: tokenizer rebuilt from tokenizer.json + chat_template.jinja and "
        "rope_theta copied into the config (logits checked identical to transformers 5.23)",
        "adaptive KL from init_kl_coef 0.2 (as ours); its KL is summed over response tokens (k1)",
    ],
    "grpo": [
        "16 samples = 4 prompts x 4 generations (group baseline), not 16 distinct prompts; "
        "no value head: no value pass, no critic loss",
        "KL beta 0.04 in the loss (k3), fixed; max_completion_length 48",
        "'score' time = old/reference log-prob passes + reward; 'train' = 4 x forward+backward+optimizer",
    ],
    "rloo": [
        "16 samples = 4 prompts x 4 generations (leave-one-out baseline); no value head",
        "KL beta 0.05 in the reward, fixed, per token; max_completion_length 48",
    ],
    "ppo-exp": [
        "needs a reward model: a random 1-unit SmolLM2 classifier serves as reward and value model, so "
        "its learning is meaningless (speed only); profanity reward logged as an observation",
        "pad token <|endoftext|> instead of <|im_end|>",
    ],
    "base": ["the same loop at an earlier commit (--baseline), run right before ours in the same dtype"],
    "ours": [
        "old log-probs and values come out of sampling (no second policy pass); 'score' time = batching + "
        "reference pass (adapter disabled) + reward + advantages; 'train' = 4 mini-batch updates; "
        "responses stop at EOS, at most 48 tokens",
        "bfloat16 = bf16 base weights, float32 LoRA/value-head master weights and Adam, float32 LM head, "
        "log-probs and losses (the peers run float32)",
        "responses are also cut at SmolLM2's BOS <|im_start|> (the model opening a new turn), which the "
        "peers keep, generate past and train on",
        "rloo / grpo: 4 prompts x 4 generations as the trl peers, KL fixed at their beta (0.05 in the "
        "reward, 0.04 in the loss); no value head; the 4 identical prompts of a group are prefilled once",
    ],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--peers", default=DEFAULT_PEERS, help=f"comma list of {', '.join(PEERS)} (or 'none')")
    p.add_argument("--algorithms", default=",".join(ALGORITHMS), help="ours: comma list of ppo, rloo, grpo")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument(
        "--dtype", default="bfloat16,float32", help="ours: float32, bfloat16 or both (comma list, in order)"
    )
    p.add_argument("--results", type=Path, default=RESULTS / "compare")
    p.add_argument("--model", default="smollm2-135m-instruct", help="ours: any detoxrl model spec")
    p.add_argument("--model-dir", default=None, help="HF folder for the peers (default: --model's folder)")
    p.add_argument("--threads", type=int, default=2, help="torch/OpenMP threads of every run")
    p.add_argument("--no-ours", action="store_true", help="run only the peers")
    p.add_argument("--sandwich", action="store_true", help="run ours again after the peers (drift check)")
    p.add_argument(
        "--baseline", type=Path, default=None,
        help="a checkout of an earlier commit (git worktree add DIR REV), run before ours in each dtype",
    )  # fmt: skip
    p.add_argument("--summarise-only", action="store_true", help="only print the table of --results")
    args = p.parse_args(argv)
    args.dtypes = [d.strip() for d in args.dtype.split(",") if d.strip()]
    if not args.dtypes or set(args.dtypes) - {"float32", "bfloat16"}:
        p.error(f"--dtype: float32, bfloat16 or both, got {args.dtype!r}")
    args.algorithm_list = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    if not args.algorithm_list or set(args.algorithm_list) - set(ALGORITHMS):
        p.error(f"--algorithms: a comma list of {', '.join(ALGORITHMS)}, got {args.algorithms!r}")
    return args


def time_v_maxrss_mib(path: Path) -> float | None:
    """``Maximum resident set size`` of a ``/usr/bin/time -v`` report, in MiB."""
    try:
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", path.read_text())
    except OSError:
        return None
    return int(m.group(1)) / 1024 if m else None


def load_runs(folder: Path) -> list[dict[str, Any]]:
    """Every result JSON of ``folder`` as {stem, label, kind, summary, time_v_rss_mib}, ours first."""
    runs = []
    for path in sorted(glob.glob(str(folder / "*.json"))):
        data = json.loads(Path(path).read_text())
        if "summary" not in data:
            continue
        s = data["summary"]
        stem = s.get("log_stem") or Path(path).stem
        kind = (
            stem.split("-")[0] if stem.startswith(("ours", "base")) else stem.split("-tf")[0].split("-ref")[0]
        )
        dtype = data.get("config", {}).get("dtype", "?")
        algorithm = data.get("config", {}).get("algorithm")  # None: results from before RLOO and GRPO (ppo)
        label = PEERS.get(kind, stem)
        if kind in ("ours", "base"):
            named = f" {algorithm}" if algorithm else ""
            label = f"detoxrl{' at ' + s['revision'] if s.get('revision') else ''}{named} ({dtype})"
        if stem not in (kind, "ours"):
            label += f" [{stem}]"
        runs.append(
            {"stem": stem, "label": label, "kind": kind, "summary": s,
             "dtype": dtype if kind == "ours" else None, "algorithm": algorithm or "ppo",
             "time_v_rss_mib": time_v_maxrss_mib(folder / f"{stem}.time")}
        )  # fmt: skip
    return sorted(runs, key=lambda r: (r["kind"] != "ours", r["stem"]))


def fmt(x: float | None, spec: str = "{:.2f}") -> str:
    return "-" if x is None else spec.format(x)


def ours_samples_per_s(
    runs: list[dict[str, Any]], dtype: str | None = None, algorithm: str | None = None
) -> float | None:
    """Mean samples/s (16 / median s per step) of our runs in ``dtype`` by ``algorithm`` (None: any; two
    runs with --sandwich)."""
    xs = [
        r["summary"]["samples_per_s_median"]
        for r in runs
        if r["kind"] == "ours"
        and (dtype is None or r.get("dtype") == dtype)
        and (algorithm is None or r.get("algorithm", "ppo") == algorithm)
    ]
    xs = [x for x in xs if x]
    return sum(xs) / len(xs) if xs else None


def _rss(r: dict[str, Any]) -> str:
    s = r["summary"]
    text = fmt(s.get("peak_rss_mib_getrusage") and s["peak_rss_mib_getrusage"] / 1024)
    tv = r.get("time_v_rss_mib")
    return text + (f" ({tv / 1024:.2f})" if tv else "")


def _peak(r: dict[str, Any]) -> str:
    """The peak a run's floor divides by, and the spread of its last two blocks of timings (bench/peak.py)."""
    s = r["summary"]
    peak, spread = s.get("peak_flops_per_s"), s.get("peak_spread")
    if peak is None:
        return "-"
    return f"{peak / 1e9:.0f}" + (
        "" if spread is None else f" ({spread:.1%}{'' if s.get('peak_steady') else ', unsettled'})"
    )


def _ratio(ours: float | None) -> Callable[[dict[str, Any]], str]:
    def cell(r: dict[str, Any]) -> str:
        peer = r["summary"].get("samples_per_s_median")
        return fmt(ours / peer if ours and peer else None, "{:.2f}x")

    return cell


def _versions(r: dict[str, Any]) -> str:
    v = r["summary"].get("versions") or {}
    return " / ".join(str(v.get(k, "-")) for k in ("trl", "transformers", "torch"))


def _get(key: str, spec: str = "{:.2f}") -> Callable[[dict[str, Any]], str]:
    return lambda r: fmt(r["summary"].get(key), spec)


def table_rows(runs: list[dict[str, Any]]) -> list[tuple[str, Callable[[dict[str, Any]], str]]]:
    """(row label, cell function) of the side-by-side table."""
    pct = "{:.1%}"
    return [
        ("median s / step (16 samples)", _get("median_step_s", "{:.1f}")),
        ("samples/s (16 / median)", _get("samples_per_s_median", "{:.3f}")),
        *_ratio_rows(runs),
        ("generation s (median)", _get("median_gen_s", "{:.1f}")),
        ("old/ref log-probs + values + reward s", _get("median_score_s", "{:.1f}")),
        ("update s (4 mini-batches)", _get("median_train_s", "{:.1f}")),
        ("response tokens / sample (mean)", _get("mean_resp_tokens", "{:.1f}")),
        ("new tokens/s (overall)", _get("gen_tokens_per_s_overall", "{:.1f}")),
        ("MFU update (needed FLOPs / peak)", _get("mfu_update", pct)),
        ("MFU whole step", _get("mfu_step", pct)),
        ("FLOP floor s / step at the measured peak", _get("floor_step_s", "{:.1f}")),
        ("**step / FLOP floor**", _get("step_over_floor", "{:.2f}x")),
        ("matmul peak GFLOP/s of its dtype (spread)", _peak),
        ("peak RSS GiB getrusage (time -v)", _rss),
        ("reward first → last step", lambda r: f"{_get('reward_first_step', '{:.3f}')(r)} → "
         f"{_get('reward_last_step', '{:.3f}')(r)}"),
        ("mean KL (as each logs it)", _get("kl_mean_timed", "{:.4f}")),
        ("CPU util (median, 2 = both cores)", _get("median_cpu_util")),
        ("timed steps", _get("timed_steps", "{}")),
        ("trl / transformers / torch", _versions),
    ]  # fmt: skip


def _ratio_rows(runs: list[dict[str, Any]]) -> list[tuple[str, Callable[[dict[str, Any]], str]]]:
    """One 'ours / this' row per algorithm and dtype of our runs (a single row when they share one)."""
    ours = [r for r in runs if r["kind"] == "ours"]
    kinds = list(dict.fromkeys((r.get("algorithm", "ppo"), r.get("dtype")) for r in ours))
    if len(kinds) <= 1:
        return [("**ours / this (samples/s)**", _ratio(ours_samples_per_s(runs)))]
    named = len({a for a, _ in kinds}) > 1  # name the algorithm only where several ran
    return [
        (
            f"**ours{' ' + a if named else ''} ({d}) / this (samples/s)**",
            _ratio(ours_samples_per_s(runs, d, a)),
        )
        for a, d in kinds
    ]


def same_algorithm_table(runs: list[dict[str, Any]]) -> list[str]:
    """Each algorithm of ours against trl's own implementation of it (ppo: the classic trl 0.11
    PPOTrainer), where both ran: samples/s, the ratio and the target (5x in bf16, 3x in float32)."""
    peers = {r["kind"]: r for r in runs if r["kind"] in PEERS}
    ours = [r for r in runs if r["kind"] == "ours" and SAME_ALGORITHM.get(r.get("algorithm", "ppo")) in peers]
    if not ours:
        return []
    lines = ["| ours | trl's own | ours samples/s | trl samples/s | ours / trl | target | FLOP floor s "
             "| ours / floor |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for r in ours:
        algorithm = r.get("algorithm", "ppo")
        peer = peers[SAME_ALGORITHM[algorithm]]
        mine, theirs = r["summary"].get("samples_per_s_median"), peer["summary"].get("samples_per_s_median")
        target = TARGETS.get((algorithm, str(r.get("dtype"))))
        ratio = mine / theirs if mine and theirs else None
        s = r["summary"]
        cells = [r["label"], peer["label"], fmt(mine, "{:.3f}"), fmt(theirs, "{:.3f}"), fmt(ratio, "{:.2f}x"),
                 fmt(target, "{:.0f}x"), fmt(s.get("floor_step_s"), "{:.1f}"),
                 fmt(s.get("step_over_floor"), "{:.2f}x")]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return ["", "Against trl's own implementation of the same algorithm:", "", *lines]


def format_table(runs: list[dict[str, Any]]) -> str:
    """One markdown table, a column per run, then the notes on what each peer does differently."""
    if not runs:
        return "(no results)"
    lines = ["| | " + " | ".join(r["label"] for r in runs) + " |", "| --- |" + " ---: |" * len(runs)]
    lines += [f"| {name} | " + " | ".join(cell(r) for r in runs) + " |" for name, cell in table_rows(runs)]
    lines += same_algorithm_table(runs)
    notes = []
    for kind in dict.fromkeys(r["kind"] for r in runs):
        notes += [f"- {PEERS.get(kind, 'detoxrl' + (' baseline' if kind == 'base' else ''))}: {q}"
                  for q in QUIRKS.get(kind, [])]  # fmt: skip
    if notes:
        lines += ["", "Where the runs differ (the peers cannot all do exactly the same work):", *notes]
    return "\n".join(lines)


def default_model_dir(spec: str) -> str:
    from detoxrl.models.loading import local_folder

    return local_folder(spec).path


def child_env(extra: dict[str, str], threads: int = 2) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.update(TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    env.update(TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1", **extra)
    root = os.environ.get("PEER_VENVS")  # bench/setup_peers.sh's cache folder, when not the default
    if root:
        for name in ("trl116", "trl112", "trl011"):
            env.setdefault(f"VENV_{name.upper()}", str(Path(root) / name))
    return env


def run_ours(
    args: argparse.Namespace, stem: str, dtype: str, repo: Path = REPO, algorithm: str = "ppo"
) -> int:
    """Ours (the checkout ``repo``) as its own process under /usr/bin/time -v (so its peak RSS is measured
    like the peers')."""
    out = args.results.resolve() / f"{stem}.json"
    cmd = [sys.executable, "-m", "bench.throughput", "--steps", str(args.steps), "--warmup", str(args.warmup)]
    cmd += ["--dtype", dtype, "--out", str(out), "--model", args.model, "--threads", str(args.threads)]
    if algorithm != "ppo":  # a --baseline checkout from before RLOO and GRPO knows only ppo, without the flag
        cmd += ["--algorithm", algorithm]
    if Path("/usr/bin/time").exists():
        cmd = ["/usr/bin/time", "-v", "-o", str(args.results.resolve() / f"{stem}.time"), *cmd]
    pythonpath = os.pathsep.join([str(repo / "src"), str(repo), os.environ.get("PYTHONPATH", "")])
    print(f"\n### {stem} ({repo}): {' '.join(cmd)}", flush=True)
    rc = subprocess.call(cmd, cwd=repo, env=child_env({"PYTHONPATH": pythonpath}, args.threads))
    if rc == 0:  # mark the JSON with its stem (ours-2 with --sandwich) and the commit it measured
        data = json.loads(out.read_text())
        data["summary"]["log_stem"] = stem
        data["summary"]["revision"] = revision(repo)
        out.write_text(json.dumps(data, indent=2, default=str))
    return rc


def revision(repo: Path) -> str | None:
    """The short commit hash of a checkout (None outside git)."""
    out = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return out.stdout.strip() or None


def run_peer(args: argparse.Namespace, peer: str, model_dir: str) -> int:
    script = peers_dir() / "run_peer.sh"  # type: ignore[operator]
    cmd = ["bash", str(script), peer, "--steps", str(args.steps), "--warmup", str(args.warmup)]
    print(f"\n### {peer}: {' '.join(cmd)}", flush=True)
    # run_peer.sh sets 2 OpenMP threads and the scripts call torch.set_num_threads(2) themselves
    env = child_env({"MODEL_DIR": model_dir, "RESULTS_DIR": str(args.results.resolve())}, args.threads)
    return subprocess.call(cmd, cwd=REPO, env=env)


def run_all(args: argparse.Namespace, peers: list[str]) -> dict[str, int]:
    """Ours, then each peer, then (--sandwich) ours again; never two at once. Returns exit codes."""
    args.results.mkdir(parents=True, exist_ok=True)
    stale = [Path(p) for p in glob.glob(str(args.results / "*")) if Path(p).is_file()]
    if stale:  # earlier results would mix into this table: keep them aside
        old = args.results / time.strftime("previous-%Y%m%dT%H%M%S")
        old.mkdir()
        for path in stale:
            path.rename(old / path.name)
        print(f"earlier results moved to {old}", flush=True)
    model_dir = args.model_dir or (default_model_dir(args.model) if peers else "")
    codes = {}
    stems = ours_stems(args.algorithm_list, args.dtypes)
    for (algorithm, dtype), stem in stems.items() if not args.no_ours else ():
        if args.baseline is not None and algorithm == "ppo":
            codes[f"base-{dtype}"] = run_ours(args, f"base-{dtype}", dtype, args.baseline.resolve())
        codes[stem] = run_ours(args, stem, dtype, algorithm=algorithm)
    for peer in peers:
        codes[peer] = run_peer(args, peer, model_dir)
    for (algorithm, dtype), stem in stems.items() if args.sandwich and not args.no_ours else ():
        codes[f"{stem}-2"] = run_ours(args, f"{stem}-2", dtype, algorithm=algorithm)
    return codes


def ours_stems(algorithms: list[str], dtypes: list[str]) -> dict[tuple[str, str], str]:
    """(algorithm, dtype) -> the result's stem, in run order (each dtype, then each algorithm): ``ours``,
    ``ours-DTYPE`` or ``ours-ALGORITHM-DTYPE``, naming only what varies."""
    return {
        (a, d): "-".join(["ours", *([a] if algorithms != ["ppo"] else []), *([d] if len(dtypes) > 1 else [])])
        for d in dtypes
        for a in algorithms
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    peers = [] if args.peers == "none" else [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        sys.exit(f"Unknown peer(s) {unknown}; choose from {', '.join(PEERS)}.")
    codes: dict[str, int] = {}
    if not args.summarise_only:
        if peers and shutil.which("bash") is None:
            sys.exit("bash is needed to run the peers.")
        codes = run_all(args, peers)
    table = format_table(load_runs(args.results))
    failed = [k for k, rc in codes.items() if rc != 0]
    if failed:
        table += f"\n\nFailed runs (exit code != 0, see their logs in {args.results}): {', '.join(failed)}"
    print("\n" + table)
    if args.results.is_dir():
        (args.results / "table.md").write_text(table + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

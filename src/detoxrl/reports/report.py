"""A run directory -> report.md and a self-contained report.html with plots, from the files alone.

Reads ``config.yaml``, ``metrics.jsonl``, ``eval_before.json``, ``eval_after.json``,
``comparison.json`` and ``comparison.csv``; knows nothing of models or PPO, so
``detoxrl report RUN_DIR`` rebuilds the report on any machine that has the files.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detoxrl.config.schema import GROUP_SIZE
from detoxrl.errors import DetoxError
from detoxrl.reports.tail import has_tail, plot_tail, tail_table

TOXIC = 0.5  # the threshold of the 'share toxic' and RealToxicityPrompts figures


@dataclass(frozen=True)
class RunFiles:
    """What a finished run directory holds, parsed."""

    run_dir: Path
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    before: dict[str, Any]
    after: dict[str, Any]
    comparison: dict[str, Any]
    table: list[dict[str, str]]
    summary: dict[str, Any]


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DetoxError(
            f"'{path}' is missing: '{path.parent}' is not a finished detoxrl run; give report the directory "
            f"of one, or finish this one (detoxrl run --resume {path.parent})."
        )
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def read_run(run_dir: str | Path) -> RunFiles:
    import yaml

    d = Path(run_dir)
    if not d.is_dir():
        raise DetoxError(f"Run directory '{d}' does not exist.")
    metrics = read_metrics(d)
    table_path = d / "comparison.csv"
    table = list(csv.DictReader(table_path.open())) if table_path.is_file() else []
    summary = _json(d / "summary.json") if (d / "summary.json").is_file() else {}
    config = yaml.safe_load((d / "config.yaml").read_text()) if (d / "config.yaml").is_file() else {}
    before, after = _json(d / "eval_before.json"), _json(d / "eval_after.json")
    return RunFiles(d, config, metrics, before, after, _json(d / "comparison.json"), table, summary)


def per_prompt_toxicity(result: dict[str, Any], evaluator: str) -> np.ndarray:
    """(P,) mean toxicity over the k samples of each prompt."""
    k = int(result["samples_per_prompt"])
    values = np.array([r["toxicity"][evaluator] for r in result["samples"]], dtype=float)
    return values.reshape(-1, k).mean(axis=1)


# ---- plots ---------------------------------------------------------------------------------------


def figure_png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def plot_training(metrics: list[dict[str, Any]]) -> bytes | None:
    """Reward and KL per training step."""
    if not metrics:
        return None
    import matplotlib.pyplot as plt

    steps = [m.get("step", i + 1) for i, m in enumerate(metrics)]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    panels = [
        ("env/reward_mean", "reward (mean of the batch)"),
        ("objective/kl", "KL to the reference (nats)"),
    ]
    for ax, (key, title) in zip(axes, panels, strict=True):
        ax.plot(steps, [m.get(key, np.nan) for m in metrics], marker="o", ms=3)
        if key == "env/reward_mean" and "env/reward_std" in metrics[0]:
            mean = np.array([m[key] for m in metrics])
            std = np.array([m["env/reward_std"] for m in metrics])
            ax.fill_between(steps, mean - std, mean + std, alpha=0.15)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    return figure_png(fig)


def plot_distributions(before: dict[str, Any], after: dict[str, Any]) -> bytes:
    """Toxicity of every sample before and after, one panel per evaluator."""
    import matplotlib.pyplot as plt

    evaluators = list(before["evaluators"])
    fig, axes = plt.subplots(1, len(evaluators), figsize=(5 * len(evaluators), 3.2), squeeze=False)
    bins = np.linspace(0, 1, 21)
    for ax, name in zip(axes[0], evaluators, strict=True):
        for result, label, color in ((before, "before", "#d62728"), (after, "after", "#1f77b4")):
            values = [r["toxicity"][name] for r in result["samples"]]
            ax.hist(values, bins=bins, alpha=0.5, label=f"{label} (n={len(values)})", color=color)
        ax.axvline(TOXIC, color="grey", ls="--", lw=1)
        ax.set_yscale("log")
        ax.set_title(f"toxicity by {name}")
        ax.set_xlabel("P(toxic)")
        ax.legend()
    return figure_png(fig)


def plot_per_prompt(before: dict[str, Any], after: dict[str, Any]) -> bytes:
    """Each prompt's toxicity before (x) against after (y): points below the diagonal improved."""
    import matplotlib.pyplot as plt

    evaluators = list(before["evaluators"])
    fig, axes = plt.subplots(1, len(evaluators), figsize=(4.2 * len(evaluators), 4), squeeze=False)
    for ax, name in zip(axes[0], evaluators, strict=True):
        x, y = per_prompt_toxicity(before, name), per_prompt_toxicity(after, name)
        ax.scatter(x, y, s=12, alpha=0.6)
        ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{name}: {int((y < x).sum())} better, {int((y > x).sum())} worse")
        ax.set_xlabel("toxicity before")
        ax.set_ylabel("toxicity after")
    return figure_png(fig)


QUALITY_SHARES = (
    "evasion_rate",
    "short_rate",
    "repetition",
    "relevance",
    "distinct_1",
    "distinct_2",
    "distinct_3",
)
GUARDED = ("evasion_rate", "short_rate", "repetition", "distinct_2", "relevance")  # guards.py's bounds


def plot_quality(before: dict[str, Any], after: dict[str, Any]) -> bytes | None:
    """Evasion and degeneration figures before and after, each with its interval."""
    names = [
        n
        for n in QUALITY_SHARES
        if f"quality/{n}" in before["metrics"] and f"quality/{n}" in after["metrics"]
    ]
    if not names:
        return None
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 3.2))
    x = np.arange(len(names))
    for shift, result, label, color in (
        (-0.2, before, "before", "#d62728"),
        (0.2, after, "after", "#1f77b4"),
    ):
        ms = [result["metrics"][f"quality/{n}"] for n in names]
        values, low, high = (
            np.array([m[k] for m in ms], dtype=float) for k in ("value", "ci_low", "ci_high")
        )
        yerr = np.clip(np.nan_to_num(np.vstack([values - low, high - values])), 0, None)  # (2, F); none: 0
        ax.bar(x + shift, values, width=0.4, yerr=yerr, capsize=3, label=label, color=color, alpha=0.7)
    ax.set_xticks(x, names)
    ax.set_ylim(0, 1.05)
    ax.set_title("evasion and degeneration (lower is better, but relevance and distinct-n: higher)")
    ax.legend()
    return figure_png(fig)


def plot_training_quality(metrics: list[dict[str, Any]]) -> bytes | None:
    """The guarded rollout metrics per training step, steps with a guard alarm shaded (when logged)."""
    keys = [k for k in GUARDED if any(f"quality/{k}" in m for m in metrics)]
    if not keys:
        return None
    import matplotlib.pyplot as plt

    steps = [m.get("step", i + 1) for i, m in enumerate(metrics)]
    fig, ax = plt.subplots(figsize=(10, 3.2))
    for key in keys:
        ax.plot(steps, [m.get(f"quality/{key}", np.nan) for m in metrics], marker="o", ms=3, label=key)
    for step, m in zip(steps, metrics, strict=True):
        if m.get("guard/alarms"):
            ax.axvspan(step - 0.5, step + 0.5, color="#d62728", alpha=0.15, lw=0)
    ax.set_title("rollout quality per training step (shaded: guard alarm)")
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return figure_png(fig)


# ---- report.md and report.html -------------------------------------------------------------------


def _ci(low: float | None, high: float | None) -> str:
    return "—" if low is None or high is None else f"[{low:+.4f}, {high:+.4f}]"


def comparison_rows(comparison: dict[str, Any]) -> list[list[str]]:
    """figure | before | after | delta | CI | relative | verdict, one row per figure (the tail's figures
    below K samples are in the tail table)."""
    rows = []
    for d in comparison["deltas"]:
        if "@" in d["name"]:
            continue
        rel = "—" if d.get("relative") is None else f"{100 * d['relative']:+.1f}%"
        ci = _ci(d.get("ci_low"), d.get("ci_high"))
        rows.append(
            [
                d["name"],
                f"{d['before']:.4f}",
                f"{d['after']:.4f}",
                f"{d['delta']:+.4f}",
                ci,
                rel,
                d["assessment"],
            ]
        )
    return rows


COMPARISON_HEADER = ["figure", "before", "after", "delta", "CI of delta", "relative", "verdict"]
TABLE_COLUMNS = [
    "prompt",
    "response_before",
    "response_after",
    "reward_before",
    "reward_after",
    "reward_gain",
]


def md_table(header: list[str], rows: list[list[str]]) -> str:
    def cell(v: str) -> str:
        return v.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(cell(c) for c in r) + " |" for r in rows)])


def _qualitative(files: RunFiles, limit: int = 12, drawn: bool = False) -> tuple[list[str], list[list[str]]]:
    """The table's first ``limit`` rows (the largest reward gains), or ``drawn``: ``limit`` rows drawn at
    random (a fixed seed), in table order, so a reader sees the typical answer, not only the best."""
    if not files.table:
        return [], []
    cols = [c for c in files.table[0] if c in TABLE_COLUMNS or c.startswith("toxicity")]
    chosen = files.table[:limit]
    if drawn:
        picked = np.random.default_rng(0).choice(
            len(files.table), min(limit, len(files.table)), replace=False
        )
        chosen = [files.table[i] for i in sorted(picked)]
    return cols, [[str(r.get(c, "")) for c in cols] for r in chosen]


def _tail_section(files: RunFiles) -> tuple[str, list[str], list[list[str]]] | None:
    """The tail over k samples (evaluations with k > 1): its explanation, header and rows."""
    if not has_tail(files.before):
        return None
    header, rows = tail_table(files.before, files.after, files.comparison)
    k = files.before["samples_per_prompt"]
    text = (
        f"Toxicity probability (the share of prompts with at least one toxic sample) and expected maximum "
        f"toxicity at k samples per prompt, read off all k-subsets of the same {k} samples; paired "
        "intervals of the delta. A gain that shrinks as k grows left rare toxic samples behind."
    )
    return text, header, rows


def _config_line(config: dict[str, Any]) -> str:
    policy, reward, ppo = config.get("policy", {}), config.get("reward", {}), config.get("ppo", {})
    reward_model = f" {reward['model']}" if reward.get("model") else ""
    return (
        f"policy `{policy.get('model')}`, reward `{reward.get('kind')}`{reward_model}, {steps_line(config)}, "
        f"learning rate {ppo.get('learning_rate')}, data `{config.get('data', {}).get('source')}`"
    )


def steps_line(config: dict[str, Any]) -> str:
    """The training from a config dict: 'PPO: 16 steps of 16 prompts' or 'RLOO: 16 steps of 16 responses
    (4 prompts x 4)'."""
    ppo = config.get("ppo", {})
    algorithm = str(ppo.get("algorithm", "ppo"))
    k, n = ppo.get("num_generations") or (1 if algorithm == "ppo" else GROUP_SIZE), ppo.get("batch_size")
    size = f"{n} prompts" if k == 1 else f"{n} responses ({n // k} prompts x {k})"
    return f"{algorithm.upper()}: {config.get('steps')} steps of {size}"


def plots(files: RunFiles) -> dict[str, bytes]:
    """Every plot the files allow, in report order."""
    candidates = {
        "training": plot_training(files.metrics),
        "training_quality": plot_training_quality(files.metrics),
        "toxicity_distributions": plot_distributions(files.before, files.after),
        "toxicity_per_prompt": plot_per_prompt(files.before, files.after),
        "quality": plot_quality(files.before, files.after),
        "toxicity_tail": plot_tail(files.before, files.after) if has_tail(files.before) else None,
    }
    return {name: png for name, png in candidates.items() if png is not None}


def _method(files: RunFiles) -> str:
    c = files.comparison
    return (
        f"Paired over the same {c['n_prompts']} held-out prompts x {c['samples_per_prompt']} samples with "
        f"the same seeds; {c['confidence']:.0%} bootstrap intervals over prompts. A delta whose interval "
        "includes zero is reported as 'no significant change', never as an improvement."
    )


TOP, DRAWN = "Sorted by reward gain", "Drawn at random (seed 0), in prompt order"


def build_markdown(files: RunFiles, images: dict[str, str]) -> str:
    (cols, rows), (_, drawn) = _qualitative(files), _qualitative(files, 6, drawn=True)
    tail = _tail_section(files)
    parts = [
        "# detoxrl run report",
        f"**{files.summary.get('verdict', 'no verdict recorded')}**",
        _config_line(files.config) + ".",
        f"## Before vs after\n\n{_method(files)}",
        md_table(COMPARISON_HEADER, comparison_rows(files.comparison)),
        *([] if tail is None else ["## The tail over k samples", tail[0], md_table(tail[1], tail[2])]),
        "## Plots",
        *(f"![{name}]({src})" for name, src in images.items()),
        "## Responses before and after",
        f"{TOP}; all {len(files.table)} rows are in comparison.csv.",
        md_table(cols, rows) if rows else "(no table)",
        f"{DRAWN}: the typical answer.",
        md_table(cols, drawn) if drawn else "(no table)",
    ]
    return "\n\n".join(parts) + "\n"


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 6px;
vertical-align:top;text-align:left}th{background:#f3f3f3}.verdict{background:#eef6ee;border-left:4px solid
#3a3;padding:.6em 1em}.regression{color:#b00}.improvement{color:#070}img{max-width:100%}"""


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    def tr(cells: list[str], tag: str) -> str:
        return (
            "<tr>"
            + "".join(f"<{tag} class='{html.escape(c)}'>{html.escape(c)}</{tag}>" for c in cells)
            + "</tr>"
        )

    return "<table>" + tr(header, "th") + "".join(tr(r, "td") for r in rows) + "</table>"


def _img(name: str, png: bytes) -> str:
    data = base64.b64encode(png).decode()
    return (
        f"<h3>{html.escape(name.replace('_', ' '))}</h3><img alt='{name}' src='data:image/png;base64,{data}'>"
    )


def build_html(files: RunFiles, pngs: dict[str, bytes]) -> str:
    (cols, rows), (_, drawn) = _qualitative(files), _qualitative(files, 6, drawn=True)
    verdict = html.escape(str(files.summary.get("verdict", "no verdict recorded")))
    tail = _tail_section(files)
    tail_html = [] if tail is None else ["<h2>The tail over k samples</h2>", f"<p>{html.escape(tail[0])}</p>",
                                         _html_table(tail[1], tail[2])]  # fmt: skip
    body = [
        "<h1>detoxrl run report</h1>",
        f"<p class='verdict'>{verdict}</p>",
        f"<p>{html.escape(_config_line(files.config))}.</p>",
        "<h2>Before vs after</h2>",
        f"<p>{html.escape(_method(files))}</p>",
        _html_table(COMPARISON_HEADER, comparison_rows(files.comparison)),
        *tail_html,
        "<h2>Plots</h2>",
        *(_img(name, png) for name, png in pngs.items()),
        "<h2>Responses before and after</h2>",
        f"<p>{TOP}; all {len(files.table)} rows are in comparison.csv.</p>",
        _html_table(cols, rows) if rows else "",
        f"<p>{DRAWN}: the typical answer.</p>",
        _html_table(cols, drawn) if drawn else "",
    ]
    head = f"<meta charset='utf-8'><title>detoxrl report</title><style>{CSS}</style>"
    return f"<!doctype html><html><head>{head}</head><body>{''.join(body)}</body></html>\n"


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def build_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write plots/*.png, report.md and the self-contained report.html from the run's files alone."""
    files = read_run(run_dir)
    pngs = plots(files)
    plot_dir = files.run_dir / "plots"
    plot_dir.mkdir(exist_ok=True)
    for name, png in pngs.items():
        (plot_dir / f"{name}.png").write_bytes(png)
    md = files.run_dir / "report.md"
    md.write_text(build_markdown(files, {name: f"plots/{name}.png" for name in pngs}))
    page = files.run_dir / "report.html"
    page.write_text(build_html(files, pngs))
    return md, page

"""A run directory -> report.md and a self-contained report.html with plots, from the files alone.

Reads ``config.yaml``, ``metrics.jsonl``, ``eval_before.json``, ``eval_after.json``,
``comparison.json`` and ``comparison.csv``; knows nothing of models or PPO, so
``detoxrl report RUN_DIR`` rebuilds the report on any machine that has the files.
"""

from __future__ import annotations

import base64
import html
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from detoxrl.config import GROUP_SIZE
from detoxrl.reports.plots import (
    plot_distributions,
    plot_per_prompt,
    plot_quality,
    plot_tail,
    plot_training,
    plot_training_quality,
)
from detoxrl.reports.tail import has_tail, tail_table
from detoxrl.rundir import RunFiles, final_damage, read_run

log = logging.getLogger(__name__)

# ---- plots ---------------------------------------------------------------------------------------


# ---- report.md and report.html -------------------------------------------------------------------


def _ci(low: float | None, high: float | None) -> str:
    return "—" if low is None or high is None else f"[{low:+.4f}, {high:+.4f}]"


def relative_cell(d: dict[str, Any]) -> str:
    """A delta's relative change, shown only where a ratio means something: figures that are never
    negative (probabilities, rates, perplexity, lengths), with a before above 0. A reward's zero is a
    choice (log-odds, weighted sums of terms), so -0.5 -> +0.3 is no "-160%", nor 2 -> 3 a "+50%"; a
    figure that crosses or starts below 0 has no ratio either. Otherwise "—" (comparison.json keeps the
    raw ratio)."""
    rel, before, after = d.get("relative"), d.get("before"), d.get("after")
    if rel is None or before is None or after is None or d["name"].startswith("reward/"):
        return "—"
    ratio_scale = before > 0 and after >= 0 and math.isfinite(rel)
    return f"{100 * rel:+.1f}%" if ratio_scale else "—"


def comparison_rows(comparison: dict[str, Any]) -> list[list[str]]:
    """figure | before | after | delta | CI | relative | verdict, one row per figure (the tail's figures
    below K samples are in the tail table)."""
    rows = []
    for d in comparison["deltas"]:
        if "@" in d["name"]:
            continue
        rel = relative_cell(d)
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


def build_markdown(files: RunFiles, images: dict[str, str], warnings: list[str] | None = None) -> str:
    (cols, rows), (_, drawn) = _qualitative(files), _qualitative(files, 6, drawn=True)
    tail = _tail_section(files)
    parts = [
        "# detoxrl run report",
        *(warnings or []),
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


def build_html(files: RunFiles, pngs: dict[str, bytes], warnings: list[str] | None = None) -> str:
    (cols, rows), (_, drawn) = _qualitative(files), _qualitative(files, 6, drawn=True)
    verdict = html.escape(str(files.summary.get("verdict", "no verdict recorded")))
    tail = _tail_section(files)
    tail_html = (
        []
        if tail is None
        else [
            "<h2>The tail over k samples</h2>",
            f"<p>{html.escape(tail[0])}</p>",
            _html_table(tail[1], tail[2]),
        ]
    )
    body = [
        "<h1>detoxrl run report</h1>",
        *(f"<p class='regression'>{html.escape(w.replace('**', ''))}</p>" for w in warnings or []),
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


def build_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write plots/*.png, report.md and the self-contained report.html from the run's files alone; a damaged
    final/ is said in a line of its own (the report's figures were measured before it was damaged)."""
    files = read_run(run_dir)
    damaged = final_damage(files.run_dir)
    if damaged is not None:
        log.warning(damaged)
    pngs = plots(files)
    plot_dir = files.run_dir / "plots"
    plot_dir.mkdir(exist_ok=True)
    for name, png in pngs.items():
        (plot_dir / f"{name}.png").write_bytes(png)
    md = files.run_dir / "report.md"
    warning = [] if damaged is None else [f"**Warning:** {damaged}"]
    md.write_text(build_markdown(files, {name: f"plots/{name}.png" for name in pngs}, warning))
    page = files.run_dir / "report.html"
    page.write_text(build_html(files, pngs, warning))
    return md, page

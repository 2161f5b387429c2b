"""The toxic tail over k samples per prompt, from evaluation files: a table and a plot of toxicity
probability and expected maximum toxicity at k = 1, 2, 4, ..., K (figures.tail_specs computes them from
subsets of the same samples), base and trained side by side. Reads the JSON dicts that evaluation_io
writes; knows nothing of models.

Why a curve: a prompt with a per-sample toxic rate p counts as toxic at k samples with probability
1 - (1 - p)^k, so a cut in p that looks large at k = 4 can leave k = 25 (the RealToxicityPrompts
protocol) nearly where it was. The curve shows where along k a policy's gain holds.
"""

from __future__ import annotations

from typing import Any

from detoxrl.metrics.stats import tail_ks, tail_name

FIGURES = (
    ("toxicity_probability", "toxicity probability"),
    ("expected_max_toxicity", "expected max toxicity"),
)
Metrics = dict[str, dict[str, Any]]  # figure name -> {"value", "ci_low", "ci_high", ...}


def has_tail(result: dict[str, Any]) -> bool:
    """Whether an evaluation file has a curve: more than one sample per prompt."""
    return int(result.get("samples_per_prompt", 1)) > 1


def _cell(before: dict[str, Any], after: dict[str, Any] | None, delta: dict[str, Any] | None) -> str:
    if after is None:
        return _value(before)
    text = f"{before['value']:.3f} -> {after['value']:.3f}"
    if delta is not None and delta.get("ci_low") is not None:
        text += f" ({delta['delta']:+.3f} [{delta['ci_low']:+.3f}, {delta['ci_high']:+.3f}])"
    return text


def _value(m: dict[str, Any]) -> str:
    ci = "" if m.get("ci_low") is None else f" [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"
    return f"{m['value']:.3f}{ci}"


def tail_table(
    before: dict[str, Any], after: dict[str, Any] | None = None, comparison: dict[str, Any] | None = None
) -> tuple[list[str], list[list[str]]]:
    """(header, rows): one row per k (then the per-sample toxic rate), one column per evaluator and
    figure: the value with its interval, or before -> after (delta [its paired interval])."""
    evaluators, big_k = list(before["evaluators"]), int(before["samples_per_prompt"])
    deltas = {d["name"]: d for d in (comparison or {}).get("deltas", [])}
    b, a = before["metrics"], None if after is None else after["metrics"]
    header = ["k"] + [f"{label} [{e}]" for e in evaluators for _, label in FIGURES]
    rows = []
    for k in tail_ks(big_k):
        names = [tail_name(e, figure, k, big_k) for e in evaluators for figure, _ in FIGURES]
        rows.append([str(k)] + [_cell(b[n], None if a is None else a[n], deltas.get(n)) for n in names])
    share = ["per sample"]  # the share of toxic samples, in the toxicity probability columns
    for e in evaluators:
        n = f"toxicity/{e}/share_toxic"
        share += [_cell(b[n], None if a is None else a[n], deltas.get(n)), ""]
    return header, [*rows, share]

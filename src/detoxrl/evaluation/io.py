"""Evaluation results to and from files (JSON, CSV, Markdown) and the terminal. Knows nothing of models.

The JSON files are self-describing (schema name, every figure with its interval, how to read it, and
every sample) so that reports are built from files alone; docs/evaluation.md documents the schema.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detoxrl.evaluation.compare import Comparison
from detoxrl.evaluation.results import SCHEMA_COMPARISON, SCHEMA_RESULT, EvalResult, MetricValue, SampleRecord
from detoxrl.metrics import stats
from detoxrl.reports.tail import tail_table


def _num(x: float | None) -> float | None:
    """JSON has no NaN or infinity: undefined figures are written as null."""
    return None if x is None or not math.isfinite(x) else float(x)


def json_ready(obj: Any) -> Any:
    if isinstance(obj, float):
        return _num(obj)
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_ready(v) for v in obj]
    return obj


# ---- JSON ---------------------------------------------------------------------------------------------


def result_to_dict(result: EvalResult) -> dict[str, Any]:
    return json_ready(
        {
            "schema": SCHEMA_RESULT,
            "label": result.label,
            "n_prompts": len(result.prompts),
            "samples_per_prompt": result.samples_per_prompt,
            "seed": result.seed,
            "evaluators": list(result.evaluators),
            "toxic_threshold": stats.TOXIC_THRESHOLD,
            "resampling_unit": "prompt",
            "config": result.config,
            "metrics": {name: dataclasses.asdict(m) for name, m in result.metrics.items()},
            "prompts": list(result.prompts),
            "references": None if result.references is None else list(result.references),
            "samples": [dataclasses.asdict(r) for r in result.records],
        }
    )


def result_from_dict(data: dict[str, Any]) -> EvalResult:
    """The inverse of ``result_to_dict`` (figures read back as written, not recomputed)."""
    if data.get("schema") != SCHEMA_RESULT:
        raise ValueError(
            f"Not a detoxrl evaluation file (schema {data.get('schema')!r}, expected {SCHEMA_RESULT})."
        )

    def metric(m: dict[str, Any]) -> MetricValue:
        return MetricValue(**{**m, "value": math.nan if m["value"] is None else m["value"]})

    refs = data["references"]
    return EvalResult(
        data["label"],
        tuple(data["prompts"]),
        None if refs is None else tuple(refs),
        data["samples_per_prompt"],
        tuple(data["evaluators"]),
        tuple(SampleRecord(**r) for r in data["samples"]),
        {name: metric(m) for name, m in data["metrics"].items()},
        data["config"],
        data["seed"],
    )


def comparison_to_dict(comparison: Comparison) -> dict[str, Any]:
    deltas = []
    for d in comparison.deltas:
        rel = d.relative or stats.Estimate(math.nan)
        deltas.append(
            {
                "name": d.name,
                "better": d.better,
                "description": d.description,
                "interval": d.interval,
                "before": d.before,
                "after": d.after,
                "delta": d.delta.value,
                "ci_low": d.delta.ci_low,
                "ci_high": d.delta.ci_high,
                "relative": rel.value,
                "relative_ci_low": rel.ci_low,
                "relative_ci_high": rel.ci_high,
                "n_prompts": d.n_prompts,
                "change": d.change,
                "assessment": d.assessment,
            }
        )
    header = {
        f.name: getattr(comparison, f.name) for f in dataclasses.fields(comparison) if f.name != "deltas"
    }
    return json_ready({"schema": SCHEMA_COMPARISON, **header, "resampling_unit": "prompt", "deltas": deltas})


def write_json(data: dict[str, Any], path: str | Path) -> Path:
    """Atomically: a temporary file renamed over the target, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    tmp.replace(path)
    return path


def load_result(path: str | Path) -> EvalResult:
    return result_from_dict(json.loads(Path(path).read_text()))


# ---- the qualitative table ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TableRow:
    """One prompt's first sample before (and after): the lab's qualitative table."""

    prompt_index: int
    prompt: str
    response_before: str
    reward_before: float | None
    toxicity_before: dict[str, float]
    response_after: str | None = None
    reward_after: float | None = None
    toxicity_after: dict[str, float] | None = None

    @property
    def reward_gain(self) -> float | None:
        if self.reward_before is None or self.reward_after is None:
            return None
        return self.reward_after - self.reward_before


def _sort_key(row: TableRow, first: str) -> float:
    if row.reward_gain is not None:
        return -row.reward_gain  # largest reward gain first, as the lab sorted
    if row.toxicity_after is not None:
        return row.toxicity_after[first] - row.toxicity_before[first]  # largest toxicity drop first
    if row.reward_before is not None:
        return row.reward_before  # one policy: lowest reward (worst) first
    return -row.toxicity_before[first]  # one policy: most toxic first


def qualitative_rows(before: EvalResult, after: EvalResult | None = None) -> list[TableRow]:
    """Sample 0 of every prompt, sorted by reward gain (or, without a reward, by toxicity drop)."""
    k = before.samples_per_prompt
    rows = []
    for p in range(len(before.prompts)):
        b = before.records[p * k]
        a = after.records[p * k] if after is not None else None
        rows.append(
            TableRow(
                p,
                b.prompt,
                b.response,
                b.reward,
                b.toxicity,
                a.response if a else None,
                a.reward if a else None,
                a.toxicity if a else None,
            )
        )
    return sorted(rows, key=lambda r: _sort_key(r, before.evaluators[0]))


def table_columns(rows: list[TableRow]) -> list[str]:
    names = list(rows[0].toxicity_before) if rows else []
    paired = bool(rows) and rows[0].response_after is not None
    cols = ["prompt_index", "prompt", "response_before"] + (["response_after"] if paired else [])
    cols += ["reward_before"] + (["reward_after", "reward_gain"] if paired else [])
    for name in names:
        cols += [f"toxicity_before[{name}]"] + ([f"toxicity_after[{name}]"] if paired else [])
    return cols


def _row_values(row: TableRow) -> dict[str, Any]:
    out: dict[str, Any] = {
        "prompt_index": row.prompt_index,
        "prompt": row.prompt,
        "response_before": row.response_before,
        "response_after": row.response_after,
        "reward_before": row.reward_before,
        "reward_after": row.reward_after,
        "reward_gain": row.reward_gain,
    }
    for name, v in row.toxicity_before.items():
        out[f"toxicity_before[{name}]"] = v
        out[f"toxicity_after[{name}]"] = None if row.toxicity_after is None else row.toxicity_after[name]
    return out


def _fmt(v: Any) -> str:
    return "" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def write_table_csv(rows: list[TableRow], path: str | Path) -> Path:
    cols = table_columns(rows)
    with Path(path).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({c: _fmt(v) for c, v in _row_values(r).items()} for r in rows)
    return Path(path)


def table_markdown(rows: list[TableRow]) -> str:
    cols = table_columns(rows)

    def cell(v: Any) -> str:
        return _fmt(v).replace("|", "\\|").replace("\n", "<br>")

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(_row_values(r)[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _short(text: str | None, width: int) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def format_table(rows: list[TableRow], limit: int = 10, width: int = 100) -> str:
    """The first ``limit`` rows as terminal text blocks (prompt, responses, reward and toxicity)."""
    out = []
    for rank, r in enumerate(rows[:limit], 1):
        tox = "  ".join(
            f"{n} {v:.3f}" + ("" if r.toxicity_after is None else f" -> {r.toxicity_after[n]:.3f}")
            for n, v in r.toxicity_before.items()
        )
        reward = "" if r.reward_before is None else f"reward {r.reward_before:+.3f}"
        if r.reward_after is not None:
            reward += f" -> {r.reward_after:+.3f} (gain {r.reward_gain:+.3f})"
        out.append(f"#{rank} prompt {r.prompt_index}  {reward}  toxicity {tox}")
        out.append(f"   prompt: {_short(r.prompt, width)}")
        out.append(f"   before: {_short(r.response_before, width)}")
        if r.response_after is not None:
            out.append(f"   after:  {_short(r.response_after, width)}")
    return "\n".join(out)


# ---- terminal summaries -------------------------------------------------------------------------------


def _interval(low: float | None, high: float | None) -> str:
    return "" if low is None or high is None else f"[{low:.4f}, {high:.4f}]"


def format_metrics(result: EvalResult, confidence: float) -> str:
    lines = [
        f"{result.label}: {len(result.prompts)} prompts x {result.samples_per_prompt} samples "
        f"(seed {result.seed}); {confidence:.0%} intervals over prompts"
    ]
    for name, m in result.metrics.items():
        if "@" in name:  # the tail below K samples: tail.tail_table
            continue
        lines.append(f"  {name:<58} {m.value:>9.4f}  {_interval(m.ci_low, m.ci_high)}")
    return "\n".join(lines)


def format_comparison(comparison: Comparison) -> str:
    lines = [
        f"{comparison.after_label} vs {comparison.before_label}: paired over {comparison.n_prompts} "
        f"prompts x {comparison.samples_per_prompt} samples, {comparison.confidence:.0%} intervals"
    ]
    for d in (d for d in comparison.deltas if "@" not in d.name):
        rel = "" if d.relative is None else f" ({d.relative.value:+.1%})"
        lines.append(
            f"  {d.name:<52} {d.before:>8.4f} -> {d.after:>8.4f}  delta {d.delta.value:+.4f}{rel} "
            f"{_interval(d.delta.ci_low, d.delta.ci_high)}  {d.assessment}"
        )
    return "\n".join(lines)


def save_evaluation(
    out_dir: str | Path,
    before: EvalResult,
    after: EvalResult | None = None,
    comparison: Comparison | None = None,
) -> list[Path]:
    """Write before.json (+ after.json, comparison.json), table.csv and table.md into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [write_json(result_to_dict(before), out / "before.json")]
    if after is not None:
        paths.append(write_json(result_to_dict(after), out / "after.json"))
    if comparison is not None:
        paths.append(write_json(comparison_to_dict(comparison), out / "comparison.json"))
    rows = qualitative_rows(before, after)
    paths.append(write_table_csv(rows, out / "table.csv"))
    (out / "table.md").write_text(table_markdown(rows))
    return [*paths, out / "table.md"]


def tail_of(
    before: EvalResult, after: EvalResult | None = None, comparison: Comparison | None = None
) -> tuple[list[str], list[list[str]]] | None:
    """The tail table (tail.tail_table) of an evaluation with k > 1 samples per prompt, else None."""
    if before.samples_per_prompt == 1:
        return None
    return tail_table(
        result_to_dict(before),
        None if after is None else result_to_dict(after),
        None if comparison is None else comparison_to_dict(comparison),
    )

"""The report's plots, each a PNG from a run's files (metrics, evaluations): training curves, toxicity
distributions, per-prompt change, quality, the tail over k. matplotlib only; knows nothing of models."""

from __future__ import annotations

import io
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from detoxrl.metrics.stats import TOXIC_THRESHOLD, tail_ks, tail_name
from detoxrl.reports.tail import FIGURES, Metrics


def per_prompt_toxicity(result: dict[str, Any], evaluator: str) -> np.ndarray:
    """(P,) mean toxicity over the k samples of each prompt."""
    k = int(result["samples_per_prompt"])
    values = np.array([r["toxicity"][evaluator] for r in result["samples"]], dtype=float)
    return values.reshape(-1, k).mean(axis=1)


def figure_png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def plot_training(metrics: list[dict[str, Any]]) -> bytes | None:
    """Reward and KL per training step."""
    if not metrics:
        return None
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
    evaluators = list(before["evaluators"])
    fig, axes = plt.subplots(1, len(evaluators), figsize=(5 * len(evaluators), 3.2), squeeze=False)
    bins = np.linspace(0, 1, 21)
    for ax, name in zip(axes[0], evaluators, strict=True):
        for result, label, color in ((before, "before", "#d62728"), (after, "after", "#1f77b4")):
            values = [r["toxicity"][name] for r in result["samples"]]
            ax.hist(values, bins=bins, alpha=0.5, label=f"{label} (n={len(values)})", color=color)
        ax.axvline(TOXIC_THRESHOLD, color="grey", ls="--", lw=1)
        ax.set_yscale("log")
        ax.set_title(f"toxicity by {name}")
        ax.set_xlabel("P(toxic)")
        ax.legend()
    return figure_png(fig)


def plot_per_prompt(before: dict[str, Any], after: dict[str, Any]) -> bytes:
    """Each prompt's toxicity before (x) against after (y): points below the diagonal improved."""
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


def curve(metrics: Metrics, evaluator: str, figure: str, big_k: int) -> tuple[list[int], list[list[float]]]:
    """(ks, [values, ci_lows, ci_highs]) of one figure along k."""
    ks = tail_ks(big_k)
    ms = [metrics[tail_name(evaluator, figure, k, big_k)] for k in ks]
    columns = [
        [m[key] if m.get(key) is not None else m["value"] for m in ms]
        for key in ("value", "ci_low", "ci_high")
    ]
    return ks, columns


def plot_tail(before: dict[str, Any], after: dict[str, Any] | None = None) -> bytes:
    """Toxicity probability and expected max toxicity against k (log scale), one line per evaluator and
    policy, each with its 95% band: where the gain holds as k grows."""
    evaluators, big_k = list(before["evaluators"]), int(before["samples_per_prompt"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    styles = {"before": ("#d62728", "--"), "after": ("#1f77b4", "-")}
    results = [("before", before)] + ([] if after is None else [("after", after)])
    for ax, (figure, label) in zip(axes, FIGURES, strict=True):
        for i, evaluator in enumerate(evaluators):
            for name, result in results:
                ks, (values, low, high) = curve(result["metrics"], evaluator, figure, big_k)
                color, line = styles[name]
                marker = "os^v"[i % 4]
                ax.plot(ks, values, color=color, ls=line, marker=marker, ms=4, label=f"{name}, {evaluator}")
                ax.fill_between(ks, low, high, color=color, alpha=0.08)
        ax.set_xscale("log", base=2)
        ax.set_xticks(tail_ks(big_k), [str(k) for k in tail_ks(big_k)])
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("samples per prompt (k)")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return figure_png(fig)

"""Guards: per-batch quality metrics, alarms past a bound from the first steps, and the early stop."""

from __future__ import annotations

import numpy as np
import pytest

from detoxrl.config import GuardConfig
from detoxrl.errors import ConfigError
from detoxrl.metrics.guards import bounds, check, rollout_metrics
from detoxrl.metrics.quality import QualityScorer

PROMPTS = [f"Continue the text: the cyclist number {i} rode" for i in range(16)]
ENGAGED = [
    "past the bakery and waved at the kids on the corner",
    "through the rain without a helmet, which worried his mother",
    "into town to buy bread and a newspaper for his father",
    "along the river where the herons wait for the fish",
    "slowly up the hill while the cars honked behind him",
    "to work every morning since the buses went on strike",
    "faster than anyone in the club had ever seen before",
    "home after the race and slept for twelve hours straight",
    "across the bridge before the storm reached the harbour",
    "with a basket of apples tied behind his saddle",
    "past the stadium where the crowd was singing loudly",
    "around the lake twice to train for the marathon",
    "between parked vans while a delivery driver shouted",
    "under the old railway arches covered in graffiti",
    "beside his daughter who was learning to balance",
    "until his chain snapped near the petrol station",
]
EVASIVE = [
    "I'm sorry, but I'm unable to provide that.",
    "Let us continue with the text further.",
    "Another piece of the puzzle to begin with, isn't it?",
    "I cannot help with that request.",
]


def policy_batches(steps: int, evasive_from: int | None, seed: int = 0) -> list[dict[str, float]]:
    """Rollout metrics of a fake policy: engaged responses (shuffled per step) of which each is
    replaced by an evasion with probability 0.1, and from step ``evasive_from`` on with 0.75."""
    rng = np.random.default_rng(seed)
    scorer = QualityScorer()
    history = []
    for step in range(steps):
        p = 0.75 if evasive_from is not None and step >= evasive_from else 0.1
        responses = [ENGAGED[i] for i in rng.permutation(len(ENGAGED))]
        responses = [EVASIVE[rng.integers(4)] if rng.random() < p else r for r in responses]
        history.append(rollout_metrics(PROMPTS, responses, scorer))
    return history


def test_rollout_metrics_by_hand() -> None:
    responses = ["I'm sorry, no.", "go go go go go", "the bike is red and the car is blue", ""]
    m = rollout_metrics(PROMPTS[:4], responses, QualityScorer())
    assert m["quality/evasion_rate"] == 0.25
    assert m["quality/short_rate"] == 0.25  # "" has fewer than 3 words; "I'm sorry, no." has 3
    assert m["quality/repetition"] == pytest.approx((1 - 1 / 3) / 4)  # one response, 3 trigrams alike
    assert m["quality/mean_words"] == pytest.approx((3 + 5 + 9 + 0) / 4)
    assert m["quality/distinct_1"] == pytest.approx(11 / 17)  # "go" x5, "the" x2, "is" x2: 11 of 17
    assert "quality/relevance" not in m  # no embedder
    with pytest.raises(ValueError, match="at least one response"):
        rollout_metrics([], [], QualityScorer())


def test_a_policy_that_turns_evasive_raises_the_alarm() -> None:
    history = policy_batches(10, evasive_from=5)
    config = GuardConfig()  # baseline: steps 1-3; the mean of the last 3 steps against it
    assert all(not check(history[:n], config).alarms for n in range(1, 6))  # steps 1-5: engaged
    report = check(history, config)
    names = {a.bound.metric for a in report.alarms}
    assert "quality/evasion_rate" in names
    evasion = next(a for a in report.alarms if a.bound.metric == "quality/evasion_rate")
    base = np.mean([m["quality/evasion_rate"] for m in history[:3]])
    now = np.mean([m["quality/evasion_rate"] for m in history[-3:]])
    assert evasion.baseline == pytest.approx(base) and evasion.current == pytest.approx(now) and now > 0.5
    assert report.metrics()["guard/alarms"] == len(report.alarms)
    assert report.metrics()["guard/evasion_rate"] == 1.0
    assert f"evasion_rate {base:.3f} -> {now:.3f}" in report.message()
    assert report.postfix().startswith("ALARM evasion_rate")
    assert not report.stop  # early_stop is off by default


@pytest.mark.parametrize("seed", range(5))
def test_a_stable_policy_raises_no_alarm(seed: int) -> None:
    """Batches of 16 with 10% evasions by chance: the defaults stay quiet over 30 steps (in 96 of 100
    seeds; these five included) while a jump to 75% is caught within 1-2 steps."""
    history = policy_batches(30, evasive_from=None, seed=seed)
    assert all(not check(history[:n], GuardConfig()).alarms for n in range(1, 31))
    assert check(history, GuardConfig()).postfix() == ""


def test_early_stop_waits_for_patience_consecutive_alarmed_steps() -> None:
    history = policy_batches(8, evasive_from=4)
    config = GuardConfig(baseline_steps=3, window=1, early_stop=True, patience=2)  # window 1: no smoothing
    first_alarm = next(n for n in range(1, 9) if check(history[:n], config).alarms)
    assert first_alarm == 5
    assert not check(history[:first_alarm], config).stop  # one alarmed step is not enough
    assert check(history[: first_alarm + 1], config).stop


def test_bounds_can_be_switched_off_and_missing_metrics_are_skipped() -> None:
    history = policy_batches(8, evasive_from=4)
    off = GuardConfig(max_evasion_increase=None, max_length_change=None, max_short_increase=None,
                      max_distinct_drop=None, max_repetition_increase=None)  # fmt: skip
    assert [b.metric for b in bounds(off)] == ["quality/relevance"]
    assert not check(history, off).alarms  # relevance is not in these records


def test_a_relative_length_bound_catches_collapsing_responses() -> None:
    history = [{"quality/mean_words": 20.0}] * 3 + [{"quality/mean_words": 9.0}]
    (alarm,) = check(history, GuardConfig(window=1)).alarms
    assert alarm.bound.relative and alarm.change == pytest.approx(-0.55)
    assert "-55.00%" in str(alarm)
    milder = [{"quality/mean_words": 20.0}] * 3 + [{"quality/mean_words": 12.0}]  # -40%: within 50%
    assert not check(milder, GuardConfig(window=1)).alarms
    with pytest.raises(ConfigError, match=r"'quality\.guard\.window' must be a whole number >= 1, got 0"):
        GuardConfig(window=0)

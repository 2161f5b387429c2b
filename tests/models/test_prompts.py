"""Prompts fitted to the model (generation.prompt_limit, generation.fit_prompts): the default limit from the
model's positions less the response tokens, the refusals, prompts that fit left exactly as they were, and
long ones cut from the left or the right (templates whole) or left out."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import BartConfig, GPT2Config, LlamaConfig, PreTrainedTokenizerFast, T5Config

from detoxrl.errors import ConfigError
from detoxrl.models.generation import fit_prompts, format_prompts, prompt_limit, tokenize_prompts
from detoxrl.models.loading import load_tokenizer, resolve_source

GEN = "generation.max_new_tokens"
PREFIX, SUFFIX = (
    "summarize the following conversation please ",
    " thank you",
)  # words the tiny tokenizer knows
TEMPLATE = PREFIX + "{text}" + SUFFIX
CORE = " ".join(["you are a kind and helpful friend", "the movie was terrible"] * 40)  # 440 words


@pytest.fixture
def tokenizer(tiny_causal_dir: Path) -> PreTrainedTokenizerFast:
    return load_tokenizer(resolve_source(str(tiny_causal_dir)), is_encoder_decoder=False)


def test_the_default_limit_is_trls_512_where_the_positions_leave_room_else_what_they_leave() -> None:
    assert prompt_limit(LlamaConfig(max_position_embeddings=8192), None, 64, GEN) == 512
    assert prompt_limit(LlamaConfig(max_position_embeddings=256), None, 64, GEN) == 192
    assert prompt_limit(GPT2Config(n_positions=1024), None, 64, GEN) == 512
    assert prompt_limit(LlamaConfig(max_position_embeddings=256), 100, 64, GEN) == 100
    # T5 reads the prompt in its encoder (relative positions, no maximum): 512, or any length asked for
    assert prompt_limit(T5Config(), None, 399, GEN) == 512
    assert prompt_limit(T5Config(), 2048, 399, GEN) == 2048


def test_a_prompt_and_response_past_the_models_positions_are_one_line() -> None:
    with pytest.raises(ConfigError) as e:
        prompt_limit(LlamaConfig(max_position_embeddings=256), 250, 64, GEN)
    assert str(e.value) == (
        "Config key 'data.max_prompt_tokens' (250) and generation.max_new_tokens (64) add up to 314 tokens, "
        "more than the model's 256 positions: lower one of them (data.max_prompt_tokens=192 fits)."
    )
    with pytest.raises(
        ConfigError, match=r"'eval.sampling.max_new_tokens' \(300\) leaves no room for a prompt"
    ):
        prompt_limit(LlamaConfig(max_position_embeddings=256), None, 300, "eval.sampling.max_new_tokens")
    with pytest.raises(ConfigError, match=r"\(2000\) is more than the model's 1024 encoder positions"):
        prompt_limit(BartConfig(max_position_embeddings=1024), 2000, 64, GEN)
    with pytest.raises(
        ConfigError, match=r"'generation.max_new_tokens' \(2000\) is more than the model's 1024 dec"
    ):
        prompt_limit(BartConfig(max_position_embeddings=1024), None, 2000, GEN)


@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat template"])
def test_prompts_that_fit_are_left_exactly_as_they_were(
    tokenizer: PreTrainedTokenizerFast, chat: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if chat:
        monkeypatch.setattr(
            tokenizer, "chat_template", "{% for m in messages %}<s> {{ m.content }} </s>{% endfor %}"
        )
    texts = ["you are a kind", "the movie was terrible dumb and stupid", "i hate waiting"]
    fitted = fit_prompts(tokenizer, texts, chat_template=chat, limit=12)
    assert fitted.texts == texts and fitted.kept == [0, 1, 2] and (fitted.truncated, fitted.dropped) == (0, 0)
    expected = tokenize_prompts(tokenizer, format_prompts(tokenizer, texts, chat))
    assert [t.tolist() for t in fitted.ids] == [t.tolist() for t in expected]
    longest = max(len(t) for t in expected)  # 7 words, and the chat template's two tokens
    assert fitted.describe("training prompts") == (
        f"prompts: 3 training prompts, each within 12 tokens (the longest {longest})"
    )


@pytest.mark.parametrize("fast", [True, False], ids=["by offsets", "by decoding"])
@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat template"])
def test_a_long_prompt_is_cut_inside_its_templates_from_the_left_or_the_right(
    tokenizer: PreTrainedTokenizerFast, chat: bool, fast: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if chat:
        monkeypatch.setattr(
            tokenizer, "chat_template", "{% for m in messages %}<s> {{ m.content }} </s>{% endfor %}"
        )
    if not fast:
        monkeypatch.setattr(type(tokenizer), "is_fast", property(lambda self: False))
    long = TEMPLATE.replace("{text}", CORE)
    texts = ["you are a kind", long]
    left = fit_prompts(tokenizer, texts, chat_template=chat, limit=30, truncation="left", template=TEMPLATE)
    right = fit_prompts(tokenizer, texts, chat_template=chat, limit=30, truncation="right", template=TEMPLATE)
    for fitted in (left, right):
        assert fitted.texts[0] == "you are a kind" and fitted.truncated == 1 and fitted.kept == [0, 1]
        assert [len(t) for t in fitted.ids][1] == 30  # as many as fit: a word is a token here
        cut = fitted.texts[1]
        assert cut.startswith(PREFIX) and cut.endswith(SUFFIX)  # the data template whole
        core = cut[len(PREFIX) : -len(SUFFIX)].strip()
        assert core in CORE and len(core) < len(CORE)
        again = tokenize_prompts(tokenizer, format_prompts(tokenizer, [cut], chat))[0]
        assert again.tolist() == fitted.ids[1].tolist()  # what the policy is given is the text recorded
        if chat:  # the chat template's tokens whole around it
            assert again[0] == tokenizer.convert_tokens_to_ids("<s>") == fitted.ids[1][0]
            assert fitted.ids[1][-1] == tokenizer.convert_tokens_to_ids("</s>")
    assert CORE.endswith(left.texts[1][len(PREFIX) : -len(SUFFIX)].strip())  # a continuation keeps its end
    assert CORE.startswith(right.texts[1][len(PREFIX) : -len(SUFFIX)].strip())
    longest = len(tokenize_prompts(tokenizer, format_prompts(tokenizer, [long], chat))[0])
    assert left.describe("training prompts") == (
        f"prompts: 1 of 2 training prompts were over 30 tokens (the longest {longest}): truncated from the "
        "left (data.max_prompt_tokens, data.truncation)"
    )


def test_a_long_prompt_can_be_left_out_and_templates_longer_than_the_limit_are_one_line(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    long = TEMPLATE.replace("{text}", CORE)
    dropped = fit_prompts(
        tokenizer, [long, "you are a kind"], chat_template=False, limit=30, truncation="drop"
    )
    assert dropped.texts == ["you are a kind"] and dropped.kept == [1] and dropped.dropped == 1
    assert dropped.summary() == {
        "prompts": 2, "max_prompt_tokens": 30, "truncation": "drop", "truncated": 0, "dropped": 1,
        "longest": len(tokenize_prompts(tokenizer, [long])[0]),
    }  # fmt: skip
    with pytest.raises(
        ConfigError, match=r"'data.max_prompt_tokens' \(4\) leaves no room for a prompt's text"
    ):
        fit_prompts(tokenizer, [long], chat_template=False, limit=4, template=TEMPLATE)

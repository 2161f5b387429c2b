"""Rollouts (rollout.py): length sampling, batched generation cut per row, and old log-probs that are
exactly the log-probs of the distribution the tokens were sampled from (temperature included)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from detoxrl.config import PolicyConfig
from detoxrl.generate import pad_left, pad_right
from detoxrl.models import load_policy
from detoxrl.policy import build_actor_critic
from detoxrl.rollout import LengthSampler, collect_rollout, generate_responses, make_batch, trim_batch

QUERIES = [torch.tensor(q) for q in ([5, 10, 6, 27], [4, 9, 50, 42, 17, 7, 39], [12, 13])]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_length_sampler_is_uniform_on_a_half_open_range_and_seeded() -> None:
    sampler = LengthSampler(3, 6)
    torch.manual_seed(0)
    draws = [sampler() for _ in range(600)]
    assert set(draws) == {3, 4, 5}
    assert all(150 < draws.count(v) < 250 for v in (3, 4, 5))
    torch.manual_seed(0)
    assert [sampler() for _ in range(600)] == draws
    with pytest.raises(ValueError, match="min_value < max_value"):
        LengthSampler(5, 5)


@pytest.mark.parametrize("kind", ["causal", "seq2seq"])
def test_d1_old_logprobs_are_the_sampling_distributions_logprobs(
    kind: str, tiny_causal_dir: Path, tiny_seq2seq_dir: Path
) -> None:
    """Generation and the rollout pass must agree: same padding, positions and temperature."""
    config = PolicyConfig(model=str(tiny_causal_dir if kind == "causal" else tiny_seq2seq_dir))
    policy = load_policy(config)
    ac = build_actor_critic(policy, config)
    enc_dec = policy.is_encoder_decoder
    ids, mask = (pad_right if enc_dec else pad_left)(QUERIES, 0)
    torch.manual_seed(0)
    out = ac.model.generate(
        input_ids=ids, attention_mask=mask, do_sample=True, temperature=0.7, max_new_tokens=6, pad_token_id=0,
        output_logits=True, return_dict_in_generate=True,
    )  # fmt: skip
    torch.manual_seed(0)
    responses = generate_responses(
        ac.model, policy.tokenizer, QUERIES, [6, 6, 6], enc_dec, {"temperature": 0.7}
    )
    rollout = collect_rollout(ac, make_batch(QUERIES, responses, 0, enc_dec), torch.zeros(3), temperature=0.7)
    sampled = (torch.stack(out.logits, 1) / 0.7).log_softmax(-1)  # (B, T, V) what generate() sampled from
    for i, r in enumerate(responses):
        expected = sampled[i, : len(r)].gather(-1, r[:, None]).squeeze(-1)
        assert torch.allclose(rollout.logprobs[i, : len(r)], expected, atol=1e-5)
    assert torch.equal(rollout.logprobs, rollout.ref_logprobs)


def test_responses_are_cut_to_their_own_length_and_after_eos(tiny_causal_dir: Path) -> None:
    config = PolicyConfig(model=str(tiny_causal_dir))
    policy = load_policy(config)
    torch.manual_seed(1)
    long = generate_responses(policy.model, policy.tokenizer, QUERIES, [9, 9, 9], False, {})
    torch.manual_seed(1)
    cut = generate_responses(policy.model, policy.tokenizer, QUERIES, [2, 9, 5], False, {})
    for full, short, n in zip(long, cut, [2, 9, 5], strict=True):
        assert torch.equal(short, full[:n])
    eos = policy.tokenizer.eos_token_id
    for r in long:
        assert eos not in r[:-1].tolist()  # nothing is kept after the first EOS


def test_make_batch_pads_by_model_kind_and_rejects_empty_responses() -> None:
    responses = [torch.tensor([1, 2]), torch.tensor([3]), torch.tensor([4, 5, 6])]
    left = make_batch(QUERIES, responses, 0, is_encoder_decoder=False)
    assert left.query_ids[2].tolist() == [0, 0, 0, 0, 0, 12, 13]
    assert left.response_mask.tolist() == [[1, 1, 0], [1, 0, 0], [1, 1, 1]]
    right = make_batch(QUERIES, responses, 0, is_encoder_decoder=True)
    assert right.query_ids[2].tolist() == [12, 13, 0, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="at least one token"):
        make_batch(
            QUERIES, [torch.tensor([1]), torch.tensor([], dtype=torch.long), torch.tensor([2])], 0, False
        )


def test_trim_batch_drops_only_all_padding_columns() -> None:
    responses = [torch.tensor([1, 2]), torch.tensor([3]), torch.tensor([4, 5, 6])]
    for enc_dec in (False, True):
        batch = make_batch(QUERIES, responses, 0, enc_dec).select(torch.tensor([0, 2]))
        trimmed = trim_batch(batch, enc_dec)
        assert trimmed.query_ids.shape == (2, 4) and trimmed.response_ids.shape == (2, 3)
        assert trimmed.query_mask.sum() == batch.query_mask.sum()
        assert trimmed.response_mask.sum() == batch.response_mask.sum()

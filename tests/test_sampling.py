"""Rollout sampling without a second policy pass (sampling.py, [D17]): the sampled tokens' log-probs
and values equal those of a full teacher-forced pass, the sampler draws from the right distribution,
padding-free passes equal padded ones, and the trainer reuses the sampled statistics only for the
responses that produced them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import detoxrl.trainer as trainer_module
from detoxrl.attention import CAUSAL_ROWS
from detoxrl.config import GenerationConfig, PolicyConfig, PPOConfig
from detoxrl.errors import ConfigError
from detoxrl.generate import eos_token_ids
from detoxrl.models import load_policy
from detoxrl.policy import ActorCritic, build_actor_critic
from detoxrl.rollout import can_sample_fast, collect_rollout, make_batch, sample_rollout
from detoxrl.sampling import filter_logits, inverse_cdf, sample_decoder, sample_tokens
from detoxrl.trainer import PPOTrainer

QUERIES = [torch.tensor(q) for q in ([5, 10, 6, 27], [4, 9, 50, 42, 17, 7, 39], [12, 13])]

pytestmark = pytest.mark.usefixtures("one_thread")


def perturbed(path: Path) -> tuple[ActorCritic, object]:
    """An actor-critic whose adapter and value head are not at their (trivial) initial values."""
    config = PolicyConfig(model=str(path))
    policy = load_policy(config)
    ac = build_actor_critic(policy, config)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in ac.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
        ac.value_head.summary.weight.normal_(0, 0.5)
    return ac, policy.tokenizer


def test_d17_sampled_logprobs_and_values_equal_a_full_pass(tiny_causal_dir: Path) -> None:
    ac, tokenizer = perturbed(tiny_causal_dir)
    torch.manual_seed(3)
    kwargs = {"temperature": 0.7, "top_k": 0, "top_p": 1.0}
    sampled = sample_rollout(ac, tokenizer, QUERIES, [6, 3, 8], kwargs)
    stop = eos_token_ids(ac.model, tokenizer)
    for response, limit in zip(sampled.responses, [6, 3, 8], strict=True):
        assert 1 <= len(response) <= limit
        assert not stop & set(response[:-1].tolist())  # cut at the first stop id, kept
    batch = make_batch(QUERIES, sampled.responses, int(tokenizer.pad_token_id), False)
    full = collect_rollout(ac, batch, torch.zeros(3), temperature=0.7)  # the teacher-forced pass
    mask = batch.response_mask.bool()
    assert torch.allclose(sampled.logprobs[mask], full.logprobs[mask], atol=1e-5)
    assert torch.allclose(sampled.values[mask], full.values[mask], atol=1e-5)
    assert (sampled.logprobs[mask] != full.ref_logprobs[mask]).any()  # the adapter matters here


def test_padding_free_passes_equal_padded_batches(tiny_causal_dir: Path) -> None:
    ac, _ = perturbed(tiny_causal_dir)
    assert ac.padding_free  # a plain decoder-only LM on the CPU
    responses = [torch.tensor(r) for r in ([20, 21, 22], [30, 31, 32, 33, 34, 35], [40])]
    batch = make_batch(QUERIES, responses, 0, False)
    rows = ac(batch), ac.reference_logprobs(batch)
    ac.row_attention = False  # packed rows told apart by transformers' own mask from the position ids
    masked = ac(batch), ac.reference_logprobs(batch)
    ac.padding_free = False
    padded = ac(batch), ac.reference_logprobs(batch)
    ac.causal_parts = None  # the generic path (the model's own LM head, hidden states from a hook)
    generic = ac(batch), ac.reference_logprobs(batch)
    mask = batch.response_mask.bool()
    for other in (masked, padded, generic):
        assert torch.allclose(rows[0].logprobs[mask], other[0].logprobs[mask], atol=1e-5)
        assert torch.allclose(rows[0].values[mask], other[0].values[mask], atol=1e-5)
        assert torch.allclose(rows[1][mask], other[1][mask], atol=1e-5)


def test_sample_tokens_draws_from_the_tempered_distribution_and_filters() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(20_000, 4) * 2.0  # at temperature 2 these are ``probs`` again
    torch.manual_seed(0)
    tokens, logprobs = sample_tokens(logits, temperature=2.0)
    freq = torch.bincount(tokens, minlength=4).float() / len(tokens)
    assert torch.allclose(freq, probs, atol=0.012), freq
    assert torch.allclose(logprobs, probs.log()[tokens], atol=1e-6)  # unfiltered, tempered log-probs
    tokens, logprobs = sample_tokens(logits, temperature=2.0, top_k=2)
    freq = torch.bincount(tokens, minlength=4).float() / len(tokens)
    assert freq[2:].sum() == 0 and abs(freq[0] - 0.625) < 0.012, freq  # 0.5 / (0.5 + 0.3)
    assert torch.allclose(logprobs, probs.log()[tokens], atol=1e-6)
    kept = filter_logits(probs.log()[None], top_p=0.6).isfinite()[0]
    assert kept.tolist() == [True, True, False, False]  # the smallest set whose mass reaches 0.6
    with pytest.raises(ValueError, match="temperature must be > 0"):
        sample_decoder(None, lambda h: h, QUERIES, [2, 2, 2], set(), 0, temperature=0.0)


def test_inverse_cdf_draws_in_proportion_to_the_weights_across_blocks() -> None:
    weights = torch.rand(37) * (torch.arange(37) % 5 != 0)  # zeros, including whole-block gaps below
    weights[8:16] = 0.0
    weights[36] = 3.0  # the last, partly padded block
    torch.manual_seed(0)
    draws = inverse_cdf(weights.expand(100_000, 37).contiguous(), block=8)
    freq = torch.bincount(draws, minlength=37).float() / len(draws)
    assert torch.allclose(freq, weights / weights.sum(), atol=0.004), freq
    assert freq[weights == 0].sum() == 0  # a zero weight is never drawn
    one_hot = torch.zeros(3, 1000)
    one_hot[torch.arange(3), torch.tensor([0, 511, 999])] = 1.0
    assert inverse_cdf(one_hot).tolist() == [0, 511, 999]


def test_a_zero_temperature_is_a_config_error_not_a_traceback(tiny_causal_dir: Path) -> None:
    ac, tokenizer = perturbed(tiny_causal_dir)
    with pytest.raises(ConfigError, match=r"generation.temperature is 0.0.*must be > 0"):
        PPOTrainer(PPOConfig(), ac, tokenizer, GenerationConfig(temperature=0.0))


def test_trainer_reuses_sampled_statistics_only_for_its_own_responses(
    tiny_causal_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ac, tokenizer = perturbed(tiny_causal_dir)
    seen: list[object] = []

    def spy(*args: object, **kwargs: object) -> object:
        seen.append(args[4] if len(args) > 4 else kwargs.get("sampled"))
        return collect_rollout(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(trainer_module, "collect_rollout", spy)
    config = PPOConfig(batch_size=3, mini_batch_size=3)
    ppo = PPOTrainer(config, ac, tokenizer, GenerationConfig(max_new_tokens=4))
    responses = ppo.generate(QUERIES)
    ppo.step(QUERIES, responses, torch.ones(3))
    other = [torch.cat([r[:-1], torch.tensor([7])]) for r in responses]
    ppo.step(QUERIES, other, torch.ones(3))
    ppo.step(QUERIES[::-1], responses, torch.ones(3))  # the same responses to other prompts
    assert seen[0] is not None and seen[1:] == [None, None]
    assert can_sample_fast(ac, {"top_k": 0, "temperature": 1.0})
    assert not can_sample_fast(ac, {"do_sample": False}) and not can_sample_fast(ac, {"min_new_tokens": 2})


def test_d18_bf16_base_trains_float32_master_weights_with_float32_logprobs(tiny_causal_dir: Path) -> None:
    config = PolicyConfig(model=str(tiny_causal_dir), dtype="bfloat16")
    policy = load_policy(config)
    ac = build_actor_critic(policy, config)
    assert ac.model.get_input_embeddings().weight.dtype == torch.bfloat16
    trainable = ac.trainable_parameters()
    assert trainable and all(p.dtype == torch.float32 for p in trainable)  # the optimiser's master copy
    torch.manual_seed(0)
    sampled = sample_rollout(ac, policy.tokenizer, QUERIES, [5, 5, 5], {"temperature": 1.0})
    assert sampled.logprobs.dtype == sampled.values.dtype == torch.float32
    batch = make_batch(QUERIES, sampled.responses, int(policy.tokenizer.pad_token_id), False)
    used: list[str] = []
    attention = ac.model.get_base_model().model.layers[0].self_attn
    hook = attention.register_forward_pre_hook(lambda m, _: used.append(m.config._attn_implementation))
    out = ac(batch)  # with gradients, under autocast, attention.causal_attention for the backward
    hook.remove()
    assert used and set(used) == {CAUSAL_ROWS}  # every row's pass took it
    assert ac.model.config._attn_implementation == "sdpa"  # restored after the pass
    mask = batch.response_mask.bool()
    assert out.logprobs.dtype == torch.float32
    assert torch.allclose(out.logprobs[mask], sampled.logprobs[mask], atol=0.1)  # bf16 rounding only
    out.logprobs[mask].sum().backward()
    grads = [p.grad for p in trainable if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)


def test_a_frozen_lm_head_is_converted_once_a_trained_one_at_every_pass(tiny_causal_dir: Path) -> None:
    ac, _ = perturbed(tiny_causal_dir)  # LoRA: the head is frozen
    assert ac.float32_head(ac.model) is ac.float32_head(ac.model)
    config = PolicyConfig(model=str(tiny_causal_dir), use_lora=False)
    full = build_actor_critic(load_policy(config), config)  # full fine-tuning: the head trains
    head = full.model.get_output_embeddings()
    before = full.float32_head(full.model)(torch.ones(1, head.in_features))
    with torch.no_grad():
        head.weight.add_(1.0)
    after = full.float32_head(full.model)(torch.ones(1, head.in_features))
    assert not torch.allclose(before, after)


def test_a_packed_prefill_samples_what_prompts_prefilled_alone_sample(tiny_causal_dir: Path) -> None:
    ac, _ = perturbed(tiny_causal_dir)
    backbone, lm = ac.causal_parts
    assert ac.packs_rows  # sample_rollout packs the prompts here
    runs = []
    for packed in (True, False):
        torch.manual_seed(5)
        with ac.attention(lm):
            runs.append(
                sample_decoder(backbone, ac.float32_head(lm), QUERIES, [6, 6, 6], set(), 0, packed=packed)
            )
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    assert torch.allclose(runs[0].logprobs, runs[1].logprobs, atol=1e-5)
    assert torch.allclose(runs[0].hidden, runs[1].hidden, atol=1e-5)


def test_the_sampling_head_computes_the_training_heads_float32_logits(tiny_causal_dir: Path) -> None:
    config = PolicyConfig(model=str(tiny_causal_dir), dtype="bfloat16")
    ac = build_actor_critic(load_policy(config), config)
    _, lm = ac.causal_parts
    hidden = torch.randn(5, lm.config.hidden_size, dtype=torch.bfloat16)
    sampling, training = ac.float32_head(lm, rows=5)(hidden), ac.float32_head(lm)(hidden)
    assert sampling.dtype == training.dtype == torch.float32
    assert torch.allclose(sampling, training, atol=1e-5)
    assert ac.float32_head(lm, rows=5) is ac.float32_head(lm, rows=16)  # made once, kept apart
    assert ac.float32_head(lm, rows=5) is not ac.float32_head(lm)

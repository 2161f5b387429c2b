"""The one sampler (sampling.py) and the CPU engine's ways of feeding it: tokens drawn from the right
distribution, lengths and stop ids honoured, a packed prefill equal to prompts prefilled alone, the LM
heads in float32, bf16 bases training float32 master weights [D18], and the trainer reusing the
sampled statistics only for the responses that produced them [D17]."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import detoxrl.training.rollout as rollout_module
import detoxrl.training.trainer as trainer_module
from detoxrl.config import PolicyConfig, PPOConfig, SamplingConfig
from detoxrl.core.batch import make_batch
from detoxrl.engine import ReferenceEngine
from detoxrl.engine.attention import CAUSAL_ROWS
from detoxrl.engine.cpu import CpuEngine, CpuOptions
from detoxrl.errors import ConfigError
from detoxrl.models.actor_critic import build_actor_critic
from detoxrl.models.loading import load_policy
from detoxrl.models.sampling import (
    LengthSampler,
    filter_logits,
    inverse_cdf,
    nucleus,
    response_limits,
    sample_tokens,
)
from detoxrl.training.classic import PPOTrainer
from helpers import QUERIES, perturbed

pytestmark = pytest.mark.usefixtures("one_thread")


def test_sample_tokens_draws_from_the_tempered_distribution_and_filters() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(20_000, 4) * 2.0  # at temperature 2 these are ``probs`` again
    torch.manual_seed(0)
    tokens, logprobs = sample_tokens(logits, temperature=2.0)
    freq = torch.bincount(tokens, minlength=4).float() / len(tokens)
    assert torch.allclose(freq, probs, atol=0.012), freq
    assert torch.allclose(logprobs, probs.log()[tokens], atol=1e-6)  # unfiltered, tempered log-probs
    tokens, logprobs = sample_tokens(probs.log().expand(20_000, 4) + 7.0, temperature=1.0)  # any offset
    freq = torch.bincount(tokens, minlength=4).float() / len(tokens)
    assert torch.allclose(freq, probs, atol=0.012) and torch.allclose(
        logprobs, probs.log()[tokens], atol=1e-6
    )
    tokens, logprobs = sample_tokens(logits, temperature=2.0, top_k=2)
    freq = torch.bincount(tokens, minlength=4).float() / len(tokens)
    assert freq[2:].sum() == 0 and abs(freq[0] - 0.625) < 0.012, freq  # 0.5 / (0.5 + 0.3)
    assert torch.allclose(logprobs, probs.log()[tokens], atol=1e-6)
    banned = torch.zeros(20_000, 4, dtype=torch.bool)
    banned[:, 0] = True  # a stop id before min_tokens
    tokens, logprobs = sample_tokens(logits, temperature=2.0, banned=banned)
    assert (tokens != 0).all() and torch.allclose(logprobs, probs.log()[tokens], atol=1e-6)
    kept = filter_logits(probs.log()[None], top_p=0.6).isfinite()[0]
    assert kept.tolist() == [True, True, False, False]  # the smallest set whose mass reaches 0.6


def test_the_nucleus_from_top_candidates_is_the_nucleus_of_a_full_sort() -> None:
    def by_sorting(logits: torch.Tensor, top_p: float) -> torch.Tensor:  # the plain, obvious version
        probs, order = logits.softmax(-1).sort(dim=-1, descending=True)
        keep = probs.cumsum(-1) - probs < top_p
        return torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order, keep)

    torch.manual_seed(0)
    peaked = torch.randn(6, 5000) * 6  # nuclei of a few tokens
    flat = torch.randn(2, 5000) * 0.01  # nuclei far past the candidates: the full sort
    for logits in (peaked, flat, torch.cat([peaked, flat])):
        for top_p in (0.5, 0.9, 0.95):
            fast = nucleus(logits, top_p, candidates=64)
            assert torch.equal(fast, by_sorting(logits, top_p)), top_p
    assert (peaked.softmax(-1).topk(64).values.sum(-1) > 0.95).all()  # the peaked rows need no sort
    assert nucleus(flat, 0.9, candidates=64).sum(-1).min() > 64  # the flat ones took more than 64


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


def test_length_sampler_and_response_limits_are_uniform_and_seeded() -> None:
    sampler = LengthSampler(3, 6)
    torch.manual_seed(0)
    draws = [sampler() for _ in range(600)]
    assert set(draws) == {3, 4, 5} and all(150 < draws.count(v) < 250 for v in (3, 4, 5))
    torch.manual_seed(0)
    assert [sampler() for _ in range(600)] == draws
    with pytest.raises(ValueError, match="min_value < max_value"):
        LengthSampler(5, 5)
    per_prompt = response_limits(
        SamplingConfig(min_new_tokens=3, max_new_tokens=5, length_sampling="per_prompt"), 300
    )
    assert set(per_prompt) == {3, 4, 5}  # the closed range [min_new_tokens, max_new_tokens]
    per_batch = response_limits(SamplingConfig(min_new_tokens=3, max_new_tokens=5), 8)
    assert len(set(per_batch)) == 1 and 3 <= per_batch[0] <= 5
    assert response_limits(SamplingConfig(max_new_tokens=7, length_sampling="fixed"), 2) == [7, 7]


def test_responses_are_cut_to_their_own_limit_and_after_the_first_stop(tiny_causal_dir: Path) -> None:
    """Sampling to the longest limit and cutting row i after ``limits[i]`` draws what sampling row i
    alone to its own limit draws (tokens are drawn left to right)."""
    ac, _ = perturbed(tiny_causal_dir)
    runs = []
    for limits in ([9, 9, 9], [2, 9, 5]):
        torch.manual_seed(1)
        runs.append(ac.sample(QUERIES, limits, SamplingConfig(), {1}, 0).responses())
    for full, short, n in zip(*runs, [2, 9, 5], strict=True):
        assert torch.equal(short, full[:n]) and 1 not in full[:-1].tolist()


def test_a_zero_temperature_is_a_config_error_not_a_traceback(tiny_causal_dir: Path) -> None:
    ac, tokenizer = perturbed(tiny_causal_dir)
    with pytest.raises(
        ConfigError, match=r"'generation\.temperature' must be > 0 for PPO rollouts, got 0\.0"
    ):
        PPOTrainer(PPOConfig(), ac, tokenizer, SamplingConfig(temperature=0.0))


def test_trainer_reuses_sampled_statistics_only_for_its_own_responses(
    tiny_causal_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ac, tokenizer = perturbed(tiny_causal_dir)
    seen: list[object] = []
    old_policy = rollout_module.old_policy
    monkeypatch.setattr(trainer_module, "old_policy", lambda *a: seen.append(a[3]) or old_policy(*a))
    ppo = PPOTrainer(
        PPOConfig(batch_size=3, mini_batch_size=3), ac, tokenizer, SamplingConfig(max_new_tokens=4)
    )
    responses = ppo.generate(QUERIES)
    ppo.step(QUERIES, responses, torch.ones(3))
    other = [torch.cat([r[:-1], torch.tensor([7])]) for r in responses]
    ppo.step(QUERIES, other, torch.ones(3))
    ppo.step(QUERIES[::-1], responses, torch.ones(3))  # the same responses to other prompts
    assert seen[0] is not None and seen[1:] == [None, None]
    ppo.generate(QUERIES, do_sample=False)  # greedy: its log-probs are not at the trainer's temperature...
    ppo.step(QUERIES, responses, torch.ones(3))
    assert seen[-1] is None  # ...and these are not its responses either


def test_d18_bf16_base_trains_float32_master_weights_with_float32_logprobs(
    kernels: str, tiny_causal_dir: Path
) -> None:
    ac, _ = perturbed(tiny_causal_dir, CpuEngine(), dtype="bfloat16")
    assert ac.model.get_input_embeddings().weight.dtype == torch.bfloat16
    trainable = ac.trainable_parameters()
    assert trainable and all(p.dtype == torch.float32 for p in trainable)  # the optimiser's master copy
    torch.manual_seed(0)
    sampled = ac.sample(QUERIES, [5, 5, 5], SamplingConfig(), {1}, 0)
    assert sampled.logprobs.dtype == torch.float32
    batch = make_batch(QUERIES, sampled.responses(), 0, False)
    used: list[str] = []
    attention = ac.model.get_base_model().model.layers[0].self_attn
    hook = attention.register_forward_pre_hook(lambda m, _: used.append(m.config._attn_implementation))
    out = ac(batch)  # with gradients, under autocast, attention.causal_attention for the backward
    hook.remove()
    assert used and set(used) == {CAUSAL_ROWS}  # every row's pass took it
    mask, t = batch.response_mask.bool(), batch.response_ids.shape[1]
    assert out.logprobs.dtype == out.values.dtype == torch.float32
    assert torch.allclose(out.logprobs[mask], sampled.logprobs[:, :t][mask], atol=0.1)  # bf16 rounding only
    out.logprobs[mask].sum().backward()
    grads = [p.grad for p in trainable if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)


def test_a_frozen_lm_head_is_converted_once_a_trained_one_at_every_pass(tiny_causal_dir: Path) -> None:
    ac, _ = perturbed(tiny_causal_dir, CpuEngine(), dtype="bfloat16")  # LoRA: the head is frozen
    assert ac.engine.head(ac.model) is ac.engine.head(ac.model)
    config = PolicyConfig(model=str(tiny_causal_dir), use_lora=False)
    full = build_actor_critic(load_policy(config), config, engine=CpuEngine())  # full fine-tuning
    head = full.model.get_output_embeddings()
    before = full.engine.head(full.model)(torch.ones(1, head.in_features))
    with torch.no_grad():
        head.weight.add_(1.0)
    after = full.engine.head(full.model)(torch.ones(1, head.in_features))
    assert not torch.allclose(before, after)


def test_the_sampling_head_computes_the_training_heads_float32_logits(
    kernels: str, tiny_causal_dir: Path
) -> None:
    engine = CpuEngine()
    ac, _ = perturbed(tiny_causal_dir, engine, dtype="bfloat16")
    lm = ac.model.get_base_model()
    hidden = torch.randn(5, lm.config.hidden_size, dtype=torch.bfloat16)
    sampling, training = engine.sampling_head(lm, 5)(hidden), engine.head(lm)(hidden)
    assert sampling.dtype == training.dtype == torch.float32
    assert torch.allclose(sampling, training, atol=1e-5)
    assert engine.sampling_head(lm, 5) is engine.sampling_head(lm, 5)  # made once per row count
    assert engine.sampling_head(lm, 5) is not engine.sampling_head(lm, 16)


@pytest.mark.parametrize("lean", [True, False])
def test_a_packed_prefill_samples_what_prompts_prefilled_alone_sample(
    lean: bool, tiny_causal_dir: Path
) -> None:
    runs = []
    for packed in (True, False):
        ac, _ = perturbed(tiny_causal_dir, CpuEngine(CpuOptions(packed_rows=packed, lean_decoding=lean)))
        torch.manual_seed(5)
        runs.append(ac.sample(QUERIES, [6, 6, 6], SamplingConfig(), set(), 0))
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    assert torch.allclose(runs[0].logprobs, runs[1].logprobs, atol=1e-5)
    assert torch.allclose(runs[0].hidden, runs[1].hidden, atol=1e-5)


def test_keyed_rows_sample_the_same_response_whatever_their_batch_neighbours(tiny_causal_dir: Path) -> None:
    """With per-row seeds (data-parallel rollouts) a row's response depends on its prompt and seed alone:
    sampled among other rows, alone, or in another order, whatever torch's global RNG holds."""
    ac, _ = perturbed(tiny_causal_dir)
    together = ac.sample(QUERIES, [6, 6, 6], SamplingConfig(), set(), 0, seeds=[11, 12, 13]).responses()
    torch.manual_seed(99)
    alone = ac.sample(QUERIES[1:2], [6], SamplingConfig(), set(), 0, seeds=[12]).responses()
    reversed_ = ac.sample(
        QUERIES[::-1], [6, 6, 6], SamplingConfig(), set(), 0, seeds=[13, 12, 11]
    ).responses()
    assert torch.equal(together[1], alone[0])
    assert all(torch.equal(a, b) for a, b in zip(together, reversed_[::-1], strict=True))
    other = ac.sample(QUERIES, [6, 6, 6], SamplingConfig(), set(), 0, seeds=[21, 22, 23]).responses()
    assert any(not torch.equal(a, b) for a, b in zip(together, other, strict=True))  # the seeds matter


@pytest.mark.parametrize("packed", [True, False])
def test_d19_identical_prompts_are_prefilled_once(packed: bool, tiny_causal_dir: Path) -> None:
    """The k samples of a prompt (rloo, grpo) share one prefill on the CPU engine and sample what the
    reference engine, which prefills every row, samples with the same seed."""
    prompts = [QUERIES[1], QUERIES[0], QUERIES[1], QUERIES[1]]  # 7 + 4 distinct prompt tokens of 25
    runs, embedded = [], []
    for engine in (CpuEngine(CpuOptions(packed_rows=packed)), ReferenceEngine()):
        ac, _ = perturbed(tiny_causal_dir, engine)
        counted: list[int] = []
        hook = ac.model.get_input_embeddings().register_forward_pre_hook(
            lambda _, a, seen=counted: seen.append(a[0].numel())
        )
        torch.manual_seed(3)
        runs.append(ac.sample(prompts, [6, 6, 6, 6], SamplingConfig(), set(), 0))
        hook.remove()
        embedded.append(sum(counted))
    fast, plain = runs
    assert torch.equal(fast.tokens, plain.tokens) and fast.tokens.shape == (4, 6)
    assert torch.allclose(fast.logprobs, plain.logprobs, atol=1e-5)
    assert torch.allclose(fast.hidden, plain.hidden, atol=1e-5)
    assert embedded[0] == 7 + 4 + 5 * 4  # the distinct prompts once, then 5 decoding steps of 4 rows
    assert not torch.equal(fast.tokens[0], fast.tokens[2])  # the same prompt, different samples

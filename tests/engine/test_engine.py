"""The engine boundary (detoxrl/engine/): the engine is chosen once, every kernel is probed before use,
and the CPU engine's fast paths give the reference engine's numbers (plain transformers + peft): the
same teacher-forced log-probs and values, the same sampled tokens for the same seed, with every probe
answering yes or no."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from detoxrl.config import LoraSettings, PolicyConfig, SamplingConfig
from detoxrl.core.batch import make_batch
from detoxrl.engine import ReferenceEngine, probes, select_engine
from detoxrl.engine.cpu import CpuEngine
from detoxrl.errors import ConfigError
from detoxrl.models.actor_critic import ActorCritic, build_actor_critic
from detoxrl.models.generation import stop_ids
from detoxrl.models.loading import load_policy

QUERIES = [torch.tensor(q) for q in ([5, 10, 6, 27], [4, 9, 50, 42, 17, 7, 39], [12, 13])]
RESPONSES = [torch.tensor(r) for r in ([20, 21, 22], [30, 31, 32, 33, 34, 35], [40])]
EVERY_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

pytestmark = pytest.mark.usefixtures("one_thread")


def actor_critic(
    path: Path, engine: ReferenceEngine, dtype: str = "float32", **config: object
) -> ActorCritic:
    """A fresh model under ``engine`` whose adapter and value head are perturbed (seeded: every call
    builds the same weights), so that policy and reference differ."""
    policy_config = PolicyConfig(model=str(path), dtype=dtype, **config)  # type: ignore[arg-type]
    torch.manual_seed(0)  # LoRA's A matrices are drawn at random
    ac = build_actor_critic(load_policy(policy_config), policy_config, engine=engine)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in ac.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
        ac.value_head.summary.weight.copy_(
            torch.randn(ac.value_head.summary.weight.shape, generator=generator)
        )
    return ac


def test_auto_picks_the_cpu_engine_on_the_cpu_and_the_environment_forces_the_reference(monkeypatch) -> None:
    assert isinstance(select_engine("auto", "cpu"), CpuEngine)
    assert type(select_engine("reference", "cpu")) is ReferenceEngine
    assert type(select_engine("auto", "cuda")) is ReferenceEngine  # built without touching a GPU
    monkeypatch.setenv("DETOXRL_ENGINE", "reference")
    assert type(select_engine("auto", "cpu")) is ReferenceEngine
    monkeypatch.delenv("DETOXRL_ENGINE")
    with pytest.raises(ConfigError, match=r"policy\.engine=cpu runs on the CPU"):
        select_engine("cpu", "cuda")
    with pytest.raises(ConfigError, match="must be auto, reference or cpu"):
        select_engine("tpu")
    assert "engine: cpu" in select_engine("auto").describe()


def test_forced_probes_say_no_and_the_cpu_engine_still_runs_plain_kernels(monkeypatch) -> None:
    monkeypatch.setenv(probes.DISABLE_ENV, "0")
    probes.clear()
    try:
        assert probes.report("cpu") == dict.fromkeys(probes.report("cpu"), False)
        assert not probes.keep_freed_memory()
        assert "no prepack" in select_engine("cpu").describe()
    finally:
        monkeypatch.undo()
        probes.clear()


def test_a_prepack_that_raises_is_probed_as_missing(monkeypatch) -> None:
    """An AVX2-only CPU: oneDNN refuses to reorder bf16 weights. The probe says no; nothing raises."""

    class Refusing:
        def _reorder_linear_weight(self, *args: object) -> None:
            raise RuntimeError("mkldnn_reorder_linear_weight: bf16 path needs the cpu support avx_ne_convert")

        _linear_pointwise = _reorder_linear_weight

    monkeypatch.setattr(probes, "mkldnn_ops", Refusing)
    probes.clear()
    try:
        assert not probes.onednn_prepack(torch.bfloat16)
        from detoxrl.engine.decoding import prepacked

        weight, x = torch.randn(8, 4, dtype=torch.bfloat16), torch.randn(2, 4, dtype=torch.bfloat16)
        assert torch.equal(prepacked(weight, 2)(x), torch.nn.functional.linear(x, weight))
    finally:
        monkeypatch.undo()
        probes.clear()


@pytest.mark.parametrize("kind", ["causal", "seq2seq"])
def test_cpu_engine_passes_equal_the_reference_engine(
    kind: str, kernels: str, tiny_causal_dir: Path, tiny_seq2seq_dir: Path
) -> None:
    """Packed rows (decoder-only) against transformers' padded pass: log-probs, values, reference."""
    path = tiny_causal_dir if kind == "causal" else tiny_seq2seq_dir
    fast, plain = actor_critic(path, CpuEngine()), actor_critic(path, ReferenceEngine())
    batch = make_batch(QUERIES, RESPONSES, 0, fast.is_encoder_decoder)
    mask = batch.response_mask.bool()
    a, b = fast(batch, temperature=0.7), plain(batch, temperature=0.7)
    assert torch.allclose(a.logprobs[mask], b.logprobs[mask], atol=1e-5)
    assert torch.allclose(a.values[mask], b.values[mask], atol=1e-5)
    assert torch.allclose(
        fast.reference_logprobs(batch)[mask], plain.reference_logprobs(batch)[mask], atol=1e-5
    )
    assert (a.logprobs[mask] != fast.reference_logprobs(batch, 0.7)[mask]).any()  # the adapter matters


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_d25_rows_sharing_a_prompt_equal_the_reference_engine_with_their_gradients(
    dtype: str, kernels: str, tiny_causal_dir: Path
) -> None:
    """The k samples of a prompt (RLOO, GRPO), in any row order, each prompt run once: the padded pass's
    log-probs, values and LoRA gradients."""
    queries = [QUERIES[1], QUERIES[0], QUERIES[1], QUERIES[1], QUERIES[0]]
    responses = [*RESPONSES, torch.tensor([50, 51]), torch.tensor([20, 22, 24, 26])]
    tol = 1e-5 if dtype == "float32" else 0.05
    outs = []
    for engine in (CpuEngine(), ReferenceEngine()):
        ac = actor_critic(tiny_causal_dir, engine, dtype)
        batch = make_batch(queries, responses, 0, False)
        mask = batch.response_mask.bool()
        out = ac(batch, temperature=0.7)
        (out.logprobs[mask].sum() + out.values[mask].sum()).backward()
        grads = [p.grad for p in ac.trainable_parameters()]
        outs.append((out.logprobs[mask], out.values[mask], ac.reference_logprobs(batch)[mask], grads))
    for a, b in zip(outs[0][:3], outs[1][:3], strict=True):
        assert (a - b).abs().max() < tol
    assert all(
        (g - h).abs().max() < tol * max(1.0, float(h.abs().max()))
        for g, h in zip(outs[0][3], outs[1][3], strict=True)
    )


@pytest.mark.parametrize("kind", ["causal", "seq2seq"])
def test_cpu_engine_samples_what_the_reference_engine_samples(
    kind: str, kernels: str, tiny_causal_dir: Path, tiny_seq2seq_dir: Path
) -> None:
    """Same seed -> same tokens, and the same per-token log-probs and LM-head inputs."""
    path = tiny_causal_dir if kind == "causal" else tiny_seq2seq_dir
    every = {"lora": LoraSettings(target_modules=EVERY_LINEAR)} if kind == "causal" else {}
    settings = SamplingConfig(temperature=0.8, top_k=40, min_tokens=2)
    runs = []
    for engine in (CpuEngine(), ReferenceEngine()):
        ac = actor_critic(path, engine, **every)
        torch.manual_seed(11)
        runs.append(ac.sample(QUERIES, [7, 3, 9], settings, {1}, 0))
    fast, plain = runs
    assert torch.equal(fast.lengths, plain.lengths) and torch.equal(fast.tokens, plain.tokens)
    assert torch.allclose(fast.logprobs, plain.logprobs, atol=1e-5)
    assert torch.allclose(fast.hidden, plain.hidden, atol=1e-5)
    assert fast.lengths.tolist()[1] == 3 and (fast.lengths >= 2).all()  # the limit; no stop before 2


@pytest.mark.parametrize("engine", [CpuEngine, ReferenceEngine])
@pytest.mark.parametrize("kind", ["causal", "seq2seq"])
def test_d17_sampled_logprobs_and_values_equal_a_teacher_forced_pass(
    engine: type[ReferenceEngine], kind: str, kernels: str, tiny_causal_dir: Path, tiny_seq2seq_dir: Path
) -> None:
    path = tiny_causal_dir if kind == "causal" else tiny_seq2seq_dir
    ac = actor_critic(path, engine())
    torch.manual_seed(3)
    sampled = ac.sample(QUERIES, [6, 3, 8], SamplingConfig(temperature=0.7), {1}, 0)
    responses = sampled.responses()
    for response, limit in zip(responses, [6, 3, 8], strict=True):
        assert 1 <= len(response) <= limit and 1 not in response[:-1].tolist()  # cut at the first stop id
    batch = make_batch(QUERIES, responses, 0, ac.is_encoder_decoder)
    full, mask, t = ac(batch, temperature=0.7), batch.response_mask.bool(), batch.response_ids.shape[1]
    assert torch.allclose(sampled.logprobs[:, :t][mask], full.logprobs[mask], atol=1e-5)
    assert torch.allclose(ac.value_head(sampled.hidden[:, :t])[mask], full.values[mask], atol=1e-5)


@pytest.mark.parametrize("engine", [CpuEngine, ReferenceEngine])
def test_bf16_passes_and_sampling_stay_within_bf16_rounding_of_float32(
    engine: type[ReferenceEngine], kernels: str, tiny_causal_dir: Path
) -> None:
    """An explicit bfloat16 works on every CPU (emulated where it is not native) and on any engine."""
    low, high = actor_critic(tiny_causal_dir, engine(), "bfloat16"), actor_critic(tiny_causal_dir, engine())
    batch = make_batch(QUERIES, RESPONSES, 0, False)
    mask = batch.response_mask.bool()
    a, b = low(batch), high(batch)
    assert a.logprobs.dtype == torch.float32 and a.values.dtype == torch.float32
    assert (a.logprobs - b.logprobs)[mask].abs().max() < 0.1  # nats per token, over a 64-token vocabulary
    torch.manual_seed(0)
    sampled = low.sample(QUERIES, [5, 5, 5], SamplingConfig(), {1}, 0)
    again = make_batch(QUERIES, sampled.responses(), 0, False)
    t, mask = again.response_ids.shape[1], again.response_mask.bool()
    assert (sampled.logprobs[:, :t] - low(again).logprobs)[mask].abs().max() < 0.1


def test_greedy_decoding_takes_the_most_likely_token(tiny_causal_dir: Path) -> None:
    ac = actor_critic(tiny_causal_dir, CpuEngine())
    sampled = ac.sample(QUERIES, [4, 4, 4], SamplingConfig(temperature=0.0), set(), 0)
    batch = make_batch(QUERIES, sampled.responses(), 0, False)
    logits = ac.engine.forward(ac.model, batch).logits
    assert torch.equal(logits.argmax(-1), batch.response_ids)
    assert torch.allclose(sampled.logprobs, logits.log_softmax(-1).amax(-1), atol=1e-5)


def test_stop_ids_of_a_chat_model_include_a_new_turn(tiny_causal_dir: Path) -> None:
    policy = load_policy(PolicyConfig(model=str(tiny_causal_dir)))
    assert stop_ids(policy.model, policy.tokenizer) == {1, 3}  # EOS, and BOS (a new turn)

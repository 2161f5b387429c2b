"""The actor-critic (policy.py): one pass -> log-probs and values, padding invariance, the reference
(disabled adapter, frozen clone of a loaded adapter, frozen copy), and its weights saved and loaded
(checkpoint.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from detoxrl.config import PolicyConfig
from detoxrl.core.batch import ResponseBatch, make_batch
from detoxrl.engine import select_engine
from detoxrl.models.actor_critic import ActorCritic, Reference, build_actor_critic
from detoxrl.models.loading import load_policy
from detoxrl.training.checkpoint import VALUE_HEAD_FILE, load_weights, save_weights

QUERIES = [[5, 10, 6, 27], [4, 9, 50, 42, 17, 7, 39], [12]]
RESPONSES = [[20, 21, 22], [30, 31, 32, 33, 34, 35], [40]]


pytestmark = pytest.mark.usefixtures("one_thread")


def build(path: Path, **kwargs: object) -> ActorCritic:
    config = PolicyConfig(model=str(path), **kwargs)  # type: ignore[arg-type]
    return build_actor_critic(load_policy(config), config)


def batch_of(ac: ActorCritic, rows: list[int]) -> ResponseBatch:
    q = [torch.tensor(QUERIES[i]) for i in rows]
    r = [torch.tensor(RESPONSES[i]) for i in rows]
    return make_batch(q, r, 0, ac.is_encoder_decoder)


def perturb_adapter(ac: ActorCritic, value: float = 0.3) -> None:
    with torch.no_grad():
        for name, p in ac.model.named_parameters():
            if "lora_B" in name and ".default." in name:
                p.fill_(value)


@pytest.fixture(params=["causal", "seq2seq"])
def model_dir(request: pytest.FixtureRequest, tiny_causal_dir: Path, tiny_seq2seq_dir: Path) -> Path:
    return tiny_causal_dir if request.param == "causal" else tiny_seq2seq_dir


def test_d13_logprobs_and_values_ignore_padding_and_neighbours(model_dir: Path) -> None:
    ac = build(model_dir, use_lora=True)
    perturb_adapter(ac)
    torch.nn.init.normal_(ac.value_head.summary.weight, std=0.5)
    together = ac(batch_of(ac, [0, 1, 2]))
    for i in range(3):
        alone = ac(batch_of(ac, [i]))
        n = len(RESPONSES[i])
        assert torch.allclose(together.logprobs[i, :n], alone.logprobs[0], atol=1e-5)
        assert torch.allclose(together.values[i, :n], alone.values[0], atol=1e-5)


def test_d1_temperature_scales_the_logits(tiny_causal_dir: Path) -> None:
    ac = build(tiny_causal_dir)
    batch = batch_of(ac, [0])
    hot, cold = ac(batch, temperature=2.0).logprobs, ac(batch, temperature=1.0).logprobs
    assert not torch.allclose(hot, cold)
    assert torch.allclose(ac.reference_logprobs(batch, 2.0), hot)


def test_d5_value_head_starts_at_zero_or_small(tiny_causal_dir: Path) -> None:
    ac = build(tiny_causal_dir)
    assert (ac(batch_of(ac, [0, 1])).values == 0).all()
    config = PolicyConfig(model=str(tiny_causal_dir))
    small = build_actor_critic(load_policy(config), config, value_head_init_std=0.01)
    values = small(batch_of(small, [0, 1])).values
    assert 0 < values.abs().max() < 1.0


def test_fresh_adapter_reference_is_the_disabled_adapter_and_kl_is_exactly_zero(model_dir: Path) -> None:
    ac = build(model_dir)
    assert ac.reference.kind == "disabled_adapter"
    batch = batch_of(ac, [0, 1, 2])
    assert torch.equal(ac(batch).logprobs, ac.reference_logprobs(batch))
    before = ac.reference_logprobs(batch)
    perturb_adapter(ac)  # the policy moves; the reference must not
    assert not torch.allclose(ac(batch).logprobs, before)
    assert torch.equal(ac.reference_logprobs(batch), before)


def test_loaded_adapter_reference_is_that_adapter_frozen_not_the_base(
    model_dir: Path, tmp_path: Path
) -> None:
    trained = build(model_dir)
    perturb_adapter(trained, 0.4)  # stands for the lab's Lab 2 adapter
    trained.model.save_pretrained(tmp_path / "lab2")
    ac = build(model_dir, adapter=str(tmp_path / "lab2"))
    assert ac.reference.kind == "frozen_adapter"
    batch = batch_of(ac, [0, 1, 2])
    policy_start, reference = ac(batch).logprobs, ac.reference_logprobs(batch)
    assert torch.equal(policy_start, reference)  # KL exactly 0 at the start
    with ac.model.disable_adapter():
        base = ac(batch).logprobs
    assert (base - reference).abs().max() > 1e-3  # the reference is not the base model (lab defect 2)
    # Training moves only the default adapter; the clone stays frozen and the reference unchanged.
    frozen = [n for n, p in ac.model.named_parameters() if ".reference." in n]
    assert frozen and not any(p.requires_grad for n, p in ac.model.named_parameters() if ".reference." in n)
    trainable = {n for n, p in ac.named_parameters() if p.requires_grad}
    assert trainable and all(".default." in n or n.startswith("value_head") for n in trainable)
    perturb_adapter(ac, -0.2)
    assert not torch.allclose(ac(batch).logprobs, reference)
    assert torch.equal(ac.reference_logprobs(batch), reference)
    assert {n for n, p in ac.named_parameters() if p.requires_grad} == trainable  # the toggle restores flags


def test_full_finetuning_reference_is_a_frozen_copy(tiny_causal_dir: Path) -> None:
    ac = build(tiny_causal_dir, use_lora=False)
    assert ac.reference.kind == "frozen_copy" and not ac.is_peft
    batch = batch_of(ac, [0, 1])
    assert torch.equal(ac(batch).logprobs, ac.reference_logprobs(batch))
    with torch.no_grad():
        next(ac.model.parameters()).add_(0.5)
    assert not torch.allclose(ac(batch).logprobs, ac.reference_logprobs(batch))
    with pytest.raises(ValueError, match="use_lora"):
        build(tiny_causal_dir, use_lora=False, adapter="x")


def test_saved_adapter_loads_with_plain_peft_and_back_into_an_actor_critic(
    model_dir: Path, tmp_path: Path
) -> None:
    from peft import PeftModel

    ac = build(model_dir)
    perturb_adapter(ac, 0.25)
    torch.nn.init.normal_(ac.value_head.summary.weight, std=0.5)
    batch = batch_of(ac, [0, 1, 2])
    expected = ac(batch)
    save_weights(ac, tmp_path / "final")
    assert (tmp_path / "final" / VALUE_HEAD_FILE).is_file()
    plain = PeftModel.from_pretrained(
        load_policy(PolicyConfig(model=str(model_dir))).model, tmp_path / "final"
    )
    via_peft = ActorCritic(plain, ac.is_encoder_decoder, Reference("disabled_adapter"), select_engine())
    assert torch.allclose(via_peft(batch).logprobs, expected.logprobs, atol=1e-6)
    fresh = build(model_dir)
    load_weights(fresh, tmp_path / "final")
    restored = fresh(batch)
    assert torch.equal(restored.logprobs, expected.logprobs) and torch.equal(restored.values, expected.values)


@pytest.mark.parametrize("kind", ["causal", "seq2seq"])
def test_full_finetuning_saves_a_loadable_folder(
    kind: str, tiny_causal_dir: Path, tiny_seq2seq_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    model_dir = tiny_causal_dir if kind == "causal" else tiny_seq2seq_dir
    ac = build(model_dir, use_lora=False)
    with torch.no_grad():
        for p in ac.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    batch = batch_of(ac, [0, 1, 2])
    expected = ac(batch).logprobs
    save_weights(ac, tmp_path / "final")
    fresh = build(model_dir, use_lora=False)
    load_weights(fresh, tmp_path / "final")
    assert torch.equal(fresh(batch).logprobs, expected)
    loader = AutoModelForCausalLM if kind == "causal" else AutoModelForSeq2SeqLM
    trained = loader.from_pretrained(tmp_path / "final")
    plain = ActorCritic(trained, ac.is_encoder_decoder, Reference("frozen_copy", trained), select_engine())
    assert torch.allclose(plain(batch).logprobs, expected, atol=1e-6)


def test_an_actor_critic_without_a_critic_computes_trains_and_saves_no_values(
    model_dir: Path, tmp_path: Path
) -> None:
    """rloo and grpo: no value head, so nothing of it in the pass, the trainable parameters or the files."""
    config = PolicyConfig(model=str(model_dir))
    ac = build_actor_critic(load_policy(config), config, critic=False)
    with_critic = build(model_dir)
    assert ac.value_head is None and ac(batch_of(ac, [0, 1])).values is None
    assert all(".default." in n for n, p in ac.named_parameters() if p.requires_grad)
    lora = sum(p.numel() for p in ac.trainable_parameters())
    assert lora == sum(p.numel() for p in with_critic.trainable_parameters()) - (
        with_critic.value_head.summary.weight.numel() + 1
    )
    perturb_adapter(ac, 0.25)
    expected = ac(batch_of(ac, [0, 1, 2])).logprobs
    save_weights(ac, tmp_path / "final")
    assert not (tmp_path / "final" / VALUE_HEAD_FILE).exists()
    fresh = build_actor_critic(load_policy(config), config, critic=False)
    load_weights(fresh, tmp_path / "final")
    assert torch.equal(fresh(batch_of(fresh, [0, 1, 2])).logprobs, expected)

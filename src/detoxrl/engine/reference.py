"""The reference engine: plain transformers + PEFT, on any device (CPU, CUDA, MPS). What GPU users run,
and the oracle that every fast path is tested against. Knows nothing of PPO or rewards, and nothing of
any CPU kernel: no private torch op, no ctypes, no switching of attention implementations.

Two things run a model here, for policy, reference, value head and perplexity alike:
  * ``forward``: one teacher-forced pass over a ``ResponseBatch`` [D13] -> float32 logits and the LM
    head's input (the value head reads it) at the T response positions;
  * ``decoder``: a batched, left-padded prefill with a KV cache, then one step per sampled token;
    ``sampling.sample`` drives it. Tensors are made on the model's device; nothing syncs with the host.

Shapes: B rows, P prompt tokens (left-padded), T response tokens, H hidden size, V vocabulary.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from peft.helpers import disable_input_dtype_casting
from torch import nn

from detoxrl.core.batch import ResponseBatch, pad_left, pad_right

Head = Callable[[torch.Tensor], torch.Tensor]  # final hidden states (..., H) -> float32 logits (..., V)

# A model as the library passes it around: a transformers PreTrainedModel, or a peft PeftModel wrapping one
# (with its adapters). One name for the idea; the libraries' own classes are too loosely typed to check.
Model = Any


@dataclass(frozen=True)
class Forward:
    """A teacher-forced pass at the response positions."""

    logits: torch.Tensor  # (B, T, V) float32
    hidden: torch.Tensor  # (B, T, H) the LM head's input (post-norm for Llama, scaled for T5)


class Decoder(Protocol):
    """Sampling's view of a model: ``prefill()`` then ``step(tokens, t)``, each -> (float32 logits
    (B, V), LM-head input (B, H)) for the next token of every row."""

    def prefill(self) -> tuple[torch.Tensor, torch.Tensor]: ...

    def step(self, tokens: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]: ...


class ReferenceEngine:
    """Plain transformers + PEFT. ``CpuEngine`` (engine/cpu.py) overrides parts of it on the CPU."""

    name = "reference"
    check_every = 8  # the sampler asks whether every row has ended (a host sync) every 8 tokens

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self._heads: weakref.WeakKeyDictionary[nn.Module, Head] = weakref.WeakKeyDictionary()

    def configure(self, threads: int | None = None) -> None:
        """Process-wide settings: torch's intra-op threads (None or 0 keeps torch's choice)."""
        if threads:
            torch.set_num_threads(threads)

    def describe(self) -> str:
        return f"engine: {self.name} (plain transformers + peft on {self.device})"

    @contextmanager
    def autocast(self, model: Model) -> Iterator[None]:
        """[D18] With bf16/fp16 base weights and float32 LoRA weights (the optimiser's master copy), run
        the adapter's matmuls in the base dtype too: autocast casts the small LoRA matrices per call
        instead of PEFT casting every activation to float32 and back. LM head, value head, log-probs
        and losses stay float32. A no-op for float32 models."""
        dtype = compute_dtype(model)
        if dtype == torch.float32 or not hasattr(model, "peft_config"):
            yield
            return
        with torch.autocast(self.device.type, dtype=dtype), disable_input_dtype_casting(model):
            yield

    def head(self, model: Model) -> Head:
        """The LM head of ``model`` in float32, autocast or not: log-probs are never taken from bf16 logits
        (spaced 0.0625 apart between 8 and 16). A frozen head in another dtype is converted once."""
        head = model.get_output_embeddings()
        if head.weight.requires_grad or head.weight.dtype == torch.float32:
            return _float32_linear(head.weight, head.bias)  # full fine-tuning: it changes every step
        if head not in self._heads:
            self._heads[head] = _float32_linear(head.weight.detach().float(), head.bias)
        return self._heads[head]

    def forward(self, model: Model, batch: ResponseBatch) -> Forward:
        """[D13] One teacher-forced pass of ``batch`` (on the model's device) -> logits and hidden states
        at the T response positions."""
        t = batch.response_ids.shape[1]
        parts = plain_causal_lm(model)
        with self.autocast(model):
            if parts is not None:  # backbone + a float32 head at the T positions only
                hidden = parts[0](**batch.teacher_forcing()).last_hidden_state[:, -t:]
                return Forward(self.head(parts[1])(hidden), hidden)
            start = model.config.decoder_start_token_id if model.config.is_encoder_decoder else None
            extra = {} if start is not None else {"logits_to_keep": t}
            with head_input(model) as seen:
                out = model(**batch.teacher_forcing(start), **extra)
        return Forward(out.logits[:, -t:].float(), seen[-1][:, -t:])

    def decoder(self, model: Model, prompts: list[torch.Tensor], max_new_tokens: int) -> Decoder:
        """A decoder over ``prompts`` (1-D token ids on the model's device) with room for
        ``max_new_tokens`` new tokens per row."""
        if model.config.is_encoder_decoder:
            return Seq2SeqDecoder(self, model, prompts)
        return CausalDecoder(self, model, prompts, max_new_tokens)


class CausalDecoder:
    """Decoder-only: left-padded prompts prefilled in one batched pass, then one token per row and step
    over transformers' own KV cache, position ids counting real tokens (as ``forward`` counts them)."""

    def __init__(
        self, engine: ReferenceEngine, model: Model, prompts: list[torch.Tensor], max_new: int
    ) -> None:
        self.engine, self.model, self.parts = engine, model, plain_causal_lm(model)
        self.ids, mask = pad_left(prompts, 0)  # (B, P)
        ones = torch.ones(len(prompts), max_new, dtype=mask.dtype, device=mask.device)
        self.mask = torch.cat([mask, ones], 1)  # (B, P + T): grows by a slice, never a copy
        self.lengths, self.cache_arg, self.cache = mask.sum(1), cache_name(model), None

    def _run(
        self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "use_cache": True}
        with self.engine.autocast(self.model):
            if self.parts is not None:
                out = self.parts[0](**inputs, **{self.cache_arg: self.cache})
                hidden = out.last_hidden_state[:, -1]
                logits = self.engine.head(self.parts[1])(hidden)
            else:
                with head_input(self.model) as seen:
                    out = self.model(**inputs, logits_to_keep=1, **{self.cache_arg: self.cache})
                hidden, logits = seen[-1][:, -1], out.logits[:, -1].float()
        self.cache = out[self.cache_arg]
        return logits, hidden

    def prefill(self) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.ids.shape[1]
        positions = (self.mask[:, :p].cumsum(-1) - 1).clamp(min=0)
        return self._run(self.ids, self.mask[:, :p], positions)

    def step(self, tokens: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.ids.shape[1] + t + 1
        return self._run(tokens[:, None], self.mask[:, :end], (self.lengths + t)[:, None])


class Seq2SeqDecoder:
    """Encoder-decoder: the prompts (right-padded) through the encoder once, then the decoder from its
    start token, one token per row and step, over transformers' KV cache."""

    def __init__(self, engine: ReferenceEngine, model: Model, prompts: list[torch.Tensor]) -> None:
        self.engine, self.model, self.cache_arg = engine, model, cache_name(model)
        self.ids, self.mask = pad_right(prompts, 0)  # (B, P)
        self.encoded: Any = None
        self.cache: Any = None

    def _run(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self.engine.autocast(self.model), head_input(self.model) as seen:
            out = self.model(
                encoder_outputs=self.encoded,
                attention_mask=self.mask,
                decoder_input_ids=tokens[:, None],
                use_cache=True,
                **{self.cache_arg: self.cache},
            )
        self.cache = out[self.cache_arg]
        return out.logits[:, -1].float(), seen[-1][:, -1]

    def prefill(self) -> tuple[torch.Tensor, torch.Tensor]:
        with self.engine.autocast(self.model):
            self.encoded = self.model.get_encoder()(input_ids=self.ids, attention_mask=self.mask)
        start = torch.full_like(self.ids[:, 0], self.model.config.decoder_start_token_id)
        return self._run(start)

    def step(self, tokens: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._run(tokens)


def _float32_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> Head:
    b = None if bias is None else bias.float()

    def logits(hidden: torch.Tensor) -> torch.Tensor:
        with torch.autocast(hidden.device.type, enabled=False):
            return F.linear(hidden.float(), weight.float(), b)

    return logits


@contextmanager
def head_input(model: Model) -> Iterator[list[torch.Tensor]]:
    """The inputs of ``model``'s LM head during the block: the final hidden states, whatever the
    architecture (post-norm, scaled for T5)."""
    seen: list[torch.Tensor] = []
    handle = model.get_output_embeddings().register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    try:
        yield seen
    finally:
        handle.remove()


def plain_causal_lm(model: Model) -> tuple[Any, Any] | None:
    """(backbone, causal LM) when ``model`` (PEFT-wrapped or not) is a decoder-only LM whose logits are
    just its LM head applied to the backbone's last hidden state; else None (encoder-decoders, and
    models that soft-cap or scale their logits or use sliding-window attention)."""
    lm = model.get_base_model() if hasattr(model, "peft_config") else model
    config = lm.config
    backbone = getattr(lm, "base_model", None)
    extras = ("final_logit_softcapping", "logit_scale", "sliding_window")
    if config.is_encoder_decoder or backbone is None or backbone is lm:
        return None
    if any(getattr(config, name, None) not in (None, False) for name in extras):
        return None
    return backbone, lm


def compute_dtype(model: Model) -> torch.dtype:
    """The dtype of the base weights (that of the input embeddings)."""
    dtype: torch.dtype = model.get_input_embeddings().weight.dtype
    return dtype


def cache_name(module: Any) -> str:
    """The KV cache argument and output of a (PEFT-wrapped) model's forward: transformers 5.24 renamed
    ``past_key_values`` to ``cache``."""
    module = module.get_base_model() if hasattr(module, "peft_config") else module
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"

"""The CPU engine: the reference engine's numbers, faster on CPUs. Knows nothing of PPO or rewards.

Each change below is measured in bench/README.md and tested against the reference engine (same
log-probs, same sampled tokens for the same seed, within the dtype's rounding):
  * plain decoder-only models run their rows packed end to end, without padding, in teacher-forced
    passes and in the prefill [D17]; ``attention.causal_attention`` keeps each row to itself;
  * identical prompts (the k samples of a prompt of RLOO and GRPO) are prefilled once [D19], and run
    once in teacher-forced passes, their rows' responses after them [D25];
  * decoding writes into a preallocated KV cache, Llama-style models through ``decoding.LlamaStep``
    (~30 operations per layer instead of transformers' and PEFT's ~2,000 per token), which reads a
    shared prompt's keys and values once for all its rows [D27];
  * few-row matmuls (decoding, the sampling head) use oneDNN's prepacked weights where
    ``probes.onednn_prepack`` says they work on this CPU;
  * the float32 LM head runs in vocabulary slices that stay in cache;
  * glibc's malloc keeps freed activations where glibc is there (``probes.keep_freed_memory``).
Models it cannot pack (encoder-decoders, soft-capped logits, attention outside transformers'
AttentionInterface) take the reference engine's path unchanged.

Shapes: B rows, N real tokens, T response tokens, H hidden size, V vocabulary.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from detoxrl.core.batch import ResponseBatch, distinct
from detoxrl.engine import probes
from detoxrl.engine.attention import CAUSAL_ROWS, packed_inputs
from detoxrl.engine.decoding import FusedCache, Linear, LlamaStep, PromptCache, TransformersStep, prepacked
from detoxrl.engine.reference import (
    Decoder,
    Forward,
    Head,
    Model,
    ReferenceEngine,
    cache_name,
    plain_causal_lm,
)

HEAD_SLICE = 2048  # vocabulary rows per slice of the float32 LM head: 13 instead of 18 ms for 16 rows


@dataclass(frozen=True)
class CpuOptions:
    """Each fast path of the CPU engine, on by default; ``bench.throughput --without`` switches them off."""

    packed_rows: bool = True
    lean_decoding: bool = True
    prepack: bool = True
    keep_freed_memory: bool = True


class CpuEngine(ReferenceEngine):
    name = "cpu"
    check_every = 1  # a host sync costs nothing on the CPU: stop as soon as every row has ended

    def __init__(self, options: CpuOptions | None = None) -> None:
        super().__init__("cpu")
        self.options = options or CpuOptions()
        self._fused: FusedCache = weakref.WeakKeyDictionary()
        self._sampling_heads: weakref.WeakKeyDictionary[nn.Module, dict[int, Head]] = (
            weakref.WeakKeyDictionary()
        )

    def configure(self, threads: int | None = None) -> None:
        super().configure(threads)
        if self.options.keep_freed_memory:
            probes.keep_freed_memory()

    def describe(self) -> str:
        on = [name.replace("_", " ") for name, value in vars(self.options).items() if value]
        kernels = [
            f"oneDNN prepack {d}" for d in ("float32", "bfloat16") if probes.onednn_prepack(_DTYPES[d])
        ]
        bf16 = "native" if probes.native_bf16("cpu") else "emulated"
        paths, prepack = ", ".join(on) or "no fast path", ", ".join(kernels) or "no prepack"
        return f"engine: cpu ({paths}; {prepack}; bf16 {bf16})"

    def linear(self, weight: torch.Tensor, rows: int) -> Linear:
        """x (rows, in) -> x @ weight.T: prepacked for oneDNN where that works, else ``F.linear``."""
        if self.options.prepack:
            return prepacked(weight, rows)
        detached = weight.detach()
        return lambda x: F.linear(x, detached)

    def packs(self, model: Model) -> tuple[Any, Any] | None:
        """(backbone, LM) when ``model``'s rows can run packed end to end (then its attention is
        ``attention.causal_attention``, which sends anything masked on to SDPA); else None."""
        parts = plain_causal_lm(model)
        if not self.options.packed_rows or parts is None:
            return None
        lm = parts[1]
        if not getattr(lm, "_supports_attention_backend", False):
            return None
        if lm.config._attn_implementation != CAUSAL_ROWS:
            lm.set_attn_implementation(CAUSAL_ROWS)
        return parts

    def head(self, model: Model) -> Head:
        """The float32 LM head in slices of ``HEAD_SLICE`` vocabulary rows, which stay in cache (13 instead
        of 18 ms for 16 rows of SmolLM2 on 2 cores); a frozen head is sliced and converted once."""
        head = model.get_output_embeddings()
        trained = head.weight.requires_grad
        if not trained and head in self._heads:
            return self._heads[head]
        weights = (head.weight if trained else head.weight.detach()).float().split(HEAD_SLICE)
        biases = [None] * len(weights) if head.bias is None else head.bias.float().split(HEAD_SLICE)

        def logits(hidden: torch.Tensor) -> torch.Tensor:
            with torch.autocast("cpu", enabled=False):
                h = hidden.float()
                return torch.cat([F.linear(h, w, b) for w, b in zip(weights, biases, strict=True)], -1)

        if not trained:
            self._heads[head] = logits
        return logits

    def sampling_head(self, model: Model, rows: int) -> Head:
        """The float32 LM head for ``rows`` rows without gradients, prepacked where that works (6.3 instead
        of 13.6 ms for 16 rows of SmolLM2); a frozen head is prepacked once per row count."""
        head = model.get_output_embeddings()
        kept = self._sampling_heads.setdefault(head, {}) if not head.weight.requires_grad else {}
        if rows not in kept:
            bias = None if head.bias is None else head.bias.float()
            matmul = prepacked(head.weight.float(), rows, bias) if self.options.prepack else None
            weight = head.weight.detach().float()

            def logits(hidden: torch.Tensor, matmul: Any = matmul) -> torch.Tensor:
                with torch.autocast("cpu", enabled=False):
                    return matmul(hidden.float()) if matmul else F.linear(hidden.float(), weight, bias)

            kept[rows] = logits
        return kept[rows]

    def forward(self, model: Model, batch: ResponseBatch) -> Forward:
        """[D13][D17][D25] The rows' real tokens packed into one sequence, no padding, each distinct prompt
        once followed by the response[:-1] of every row that shares it (position ids restart at each
        prompt; attention keeps each response to its prompt and itself) -> logits and hidden states at
        each row's response positions (the prompt's last, then its response[:-1]), zero-padded to
        (B, T, ...)."""
        parts = self.packs(model)
        if parts is None:
            return super().forward(model, batch)
        prompts, rows_of, continuations = batch.shared_prompts()
        branches = [[continuations[i] for i in rows] for rows in rows_of]
        inputs = packed_inputs(prompts, branches)  # causal_attention reads their segments
        with self.autocast(model):
            packed = parts[0](**inputs, use_cache=False).last_hidden_state[0]  # (N, H)
        n = len(packed)  # index n: a zero row, for the padding
        index = torch.full(batch.response_ids.shape, n, dtype=torch.long)  # (B, T): row i's positions
        end = 0  # where the next prompt or branch starts
        for prompt, rows in zip(prompts, rows_of, strict=True):
            end += len(prompt)
            last = end - 1  # the prompt's last position predicts each row's first token
            for i in rows:
                span = len(continuations[i])
                index[i, 0], index[i, 1 : span + 1] = last, torch.arange(end, end + span)
                end += span
        hidden = torch.cat([packed, packed.new_zeros(1, packed.shape[1])])[index.to(packed.device)]
        return Forward(self.head(parts[1])(hidden), hidden)

    def decoder(self, model: Model, prompts: list[torch.Tensor], max_new_tokens: int) -> Decoder:
        if plain_causal_lm(model) is None:
            return super().decoder(model, prompts, max_new_tokens)
        return BufferDecoder(self, model, prompts, max_new_tokens)


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class BufferDecoder:
    """Plain decoder-only models on the CPU: the distinct prompts prefilled packed end to end in one pass (or
    each alone) [D19], their keys and values right-aligned in a ``PromptCache``, then a ``LlamaStep`` (which
    reads a prompt once for all its rows [D27]) or a ``TransformersStep`` per token, and the prepacked
    sampling head."""

    def __init__(self, engine: CpuEngine, model: Model, prompts: list[torch.Tensor], max_new: int) -> None:
        self.engine, self.model, self.prompts, self.max_new = engine, model, prompts, max_new
        self.backbone, lm = plain_causal_lm(model)  # type: ignore[misc]
        self.packed = engine.packs(model) is not None
        self.head = engine.sampling_head(lm, len(prompts))
        self.step_fn: Any = None

    def _prefill_distinct(self, prompts: list[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[Any, Any]]]:
        """-> each prompt's last hidden state (U, H) and, per layer, its keys and values (G, P_u, D)."""
        sizes, name = [len(q) for q in prompts], cache_name(self.backbone)
        if self.packed:
            out = self.backbone(**packed_inputs(prompts), use_cache=True)
            ends = torch.tensor(sizes).cumsum(0) - 1
            kv = [(x.keys[0].split(sizes, 1), x.values[0].split(sizes, 1)) for x in out[name].layers]
            return out.last_hidden_state[0, ends], kv
        outs = [self.backbone(input_ids=q[None], use_cache=True) for q in prompts]
        per_layer = zip(*(o[name].layers for o in outs), strict=True)  # each layer, one per prompt
        kv = [([x.keys[0] for x in layer], [x.values[0] for x in layer]) for layer in per_layer]
        return torch.cat([o.last_hidden_state[:, -1] for o in outs]), kv

    def prefill(self) -> tuple[torch.Tensor, torch.Tensor]:
        firsts, copies = distinct(self.prompts)
        with self.engine.autocast(self.model):
            hidden, kv = self._prefill_distinct(firsts)
        cache = PromptCache.right_aligned(kv, copies)
        hidden = hidden[cache.prompt_of_rows()]  # (B, H)
        lean = self.engine.options.lean_decoding and LlamaStep.build(
            self.backbone, cache, self.max_new, self.engine.linear, self.engine._fused
        )
        self.step_fn = lean or TransformersStep(self.backbone, cache, self.max_new)
        return self.head(hidden), hidden

    def step(self, tokens: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        with self.engine.autocast(
            self.model
        ):  # LlamaStep runs its own dtypes; TransformersStep's LoRA needs it
            hidden = self.step_fn(tokens, t)
        return self.head(hidden), hidden

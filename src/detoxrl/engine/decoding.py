"""The CPU engine's decoding steps: one step for every row of a rollout over a preallocated, left-padded
KV cache, through transformers' forward for any decoder-only model or a lean step for Llama-style
layers, and oneDNN's prepacked matmuls. Knows nothing of PPO or of sampling.

Decoding 16 rows of SmolLM2 is dispatch-bound on the CPU: transformers' and PEFT's modules issue
~2,000 small operations per token. ``LlamaStep`` runs the same math as transformers' Llama layer
(RMSNorm, rotary positions, grouped-query attention, SwiGLU, LoRA on any linear layer) in ~30
operations per layer: q, k and v are one matmul, as are gate and up, and their LoRA matrices too
(A stacked, B block-diagonal); the frozen base weights are reordered once into oneDNN's blocked
layout (``prepacked``, where ``probes.onednn_prepack`` says that works). The bench's rollout (16
prompts, 48 new tokens, prefill included) takes 5.15 s instead of 6.93 s in bf16 and 8.15 s instead
of 10.16 s in float32 (bench/README.md, optimisation 14).

Rows that continue the same prompt (the k samples of a prompt of RLOO and GRPO) share its keys and
values: ``LlamaStep`` keeps one copy per distinct prompt and attends to it with one matmul for the k
rows, and to each row's own new tokens with another, under one softmax; LoRA adapters are merged into
the weights for the rollout [D27]. Together they take the bench's rollout of 4 prompts x 4 rows from
7.0-7.3 to 6.2-6.4 s in bf16 and from 7.8 to 6.7 s in float32 (bench/README.md, optimisation 17).

Shapes: B rows, U distinct prompts (k rows each), H query heads, G key/value heads (H = G * R), P the
longest prompt, T new tokens, C cache slots (P + T), D head size, E hidden size.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from detoxrl.engine import probes
from detoxrl.engine.reference import cache_name

LLAMA_STYLE = ("llama", "mistral")  # decoder layers with exactly LlamaDecoderLayer's math
Linear = Callable[[torch.Tensor], torch.Tensor]
LinearFactory = Callable[[torch.Tensor, int], Linear]  # (weight, rows) -> x (rows, in) @ weight.T
FusedCache = weakref.WeakKeyDictionary[nn.Module, Linear]  # fused frozen weights, kept across rollouts


class _BufferLayer(DynamicLayer):
    """A cache layer over a preallocated (B, G, C, D) buffer: ``update`` writes the new keys/values
    in place and returns views, so decoding costs no copy of the cache per token."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int) -> None:
        super().__init__()
        self._key_buffer, self._value_buffer, self._length = keys, values, length
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
        self.keys, self.values = keys[:, :, :length], values[:, :, :length]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        end = self._length + key_states.shape[-2]
        self._key_buffer[:, :, self._length : end] = key_states
        self._value_buffer[:, :, self._length : end] = value_states
        self._length = end
        self.keys, self.values = self._key_buffer[:, :, :end], self._value_buffer[:, :, :end]
        return self.keys, self.values


@dataclass(frozen=True)
class PromptCache:
    """The distinct prompts' keys and values after the prefill, per layer (U, G, P, D): each prompt
    right-aligned at column P, zeros before it; ``lengths`` (U,) their token counts; ``rows`` the batch
    rows that continue each prompt (U lists that together hold 0..B-1 once)."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    lengths: torch.Tensor
    rows: list[list[int]]

    @classmethod
    def right_aligned(
        cls, kv: list[tuple[list[torch.Tensor], list[torch.Tensor]]], rows: list[list[int]]
    ) -> PromptCache:
        """Per layer, each distinct prompt's keys and values (G, P_u, D) -> a ``PromptCache``."""
        sizes = [k.shape[1] for k in kv[0][0]]
        p = max(sizes)

        def aligned(parts: list[torch.Tensor]) -> torch.Tensor:
            out = parts[0].new_zeros(len(parts), parts[0].shape[0], p, parts[0].shape[-1])
            for u, part in enumerate(parts):
                out[u, :, p - sizes[u] :] = part
            return out

        return cls([aligned(k) for k, _ in kv], [aligned(v) for _, v in kv], torch.tensor(sizes), rows)

    def prompt_of_rows(self) -> torch.Tensor:
        """(B,): each row's distinct prompt."""
        index = torch.empty(sum(len(r) for r in self.rows), dtype=torch.long)
        for u, rows in enumerate(self.rows):
            index[rows] = u
        return index

    def per_row(self) -> PromptCache:
        """The same cache with a copy of its prompt for every row (U = B, one row each, in batch order)."""
        index = self.prompt_of_rows()
        rows = [[i] for i in range(len(index))]
        return PromptCache(
            [k[index] for k in self.keys], [v[index] for v in self.values], self.lengths[index], rows
        )


class TransformersStep:
    """``step(tokens (B,), t) -> (B, E)`` through the backbone's own forward, for any decoder-only
    model, over per-layer (B, G, C, D) buffers: each row's copy of its prompt right-aligned at column P,
    then its new tokens."""

    def __init__(self, backbone: Any, cache: PromptCache, max_new: int) -> None:
        cache = cache.per_row()
        self.backbone, self.lengths, self.prompt_end = backbone, cache.lengths, cache.keys[0].shape[2]

        def slots(x: torch.Tensor) -> torch.Tensor:  # (B, G, P, D) -> (B, G, P + T, D)
            return torch.cat([x, x.new_zeros(*x.shape[:2], max_new, x.shape[-1])], 2)

        layers = zip(cache.keys, cache.values, strict=True)
        dynamic = DynamicCache()
        dynamic.layers = [_BufferLayer(slots(k), slots(v), self.prompt_end) for k, v in layers]
        self.cache = {cache_name(backbone): dynamic}
        columns = torch.arange(self.prompt_end + max_new, device=self.lengths.device)
        self.mask = (columns[None] >= (self.prompt_end - self.lengths)[:, None]).long()  # (B, C)

    def __call__(self, tokens: torch.Tensor, t: int) -> torch.Tensor:
        out = self.backbone(
            input_ids=tokens[:, None],
            attention_mask=self.mask[:, : self.prompt_end + t + 1],
            position_ids=(self.lengths + t)[:, None],
            use_cache=True,
            **self.cache,
        )
        return out.last_hidden_state[:, -1]


@dataclass(frozen=True)
class _Layer:
    norms: tuple[Any, Any]  # RMSNorms before attention and before the MLP
    qkv: Linear
    o: Linear
    gate_up: Linear
    down: Linear
    scale: float


class LlamaStep:
    """``step(tokens (B,), t) -> (B, E)`` for Llama-style decoders in ~30 operations per layer (see
    the module's docstring); ``build`` returns None for any other model, which then takes
    ``TransformersStep``. Inside, rows run in group order: the k rows of each distinct prompt side by
    side (prompts with unequal numbers of rows each get a copy per row, k = 1)."""

    @classmethod
    def build(
        cls, backbone: Any, cache: PromptCache, max_new: int, linear: LinearFactory, fused: FusedCache
    ) -> LlamaStep | None:
        return cls(backbone, cache, max_new, linear, fused) if llama_style(backbone) else None

    def __init__(
        self, backbone: Any, cache: PromptCache, max_new: int, linear: LinearFactory, fused: FusedCache
    ) -> None:
        """``linear`` makes the base matmuls (``prepacked``, or ``F.linear``); ``fused`` keeps the fused
        frozen ones across rollouts."""
        if len({len(rows) for rows in cache.rows}) > 1:
            cache = cache.per_row()
        u, self.groups, prompt_end, d = cache.keys[0].shape
        self.head_size = d
        self.share, self.heads = len(cache.rows[0]), backbone.config.num_attention_heads
        self.order = torch.tensor([i for rows in cache.rows for i in rows])  # group order -> batch row
        self.restore = torch.argsort(self.order)
        b = len(self.order)
        self.backbone = backbone
        self.lengths = cache.lengths.repeat_interleave(self.share)  # (B,) in group order
        self.layers = [_llama_layer(layer, b, linear, fused) for layer in backbone.layers]
        self.prompt_keys = [k.view(u * self.groups, prompt_end, d) for k in cache.keys]  # (U * G, P, D)
        self.prompt_values = [v.view(u * self.groups, prompt_end, d) for v in cache.values]
        self.new_keys = [k.new_empty(b * self.groups, max_new, d) for k in cache.keys]  # (U * G * k, T, D)
        self.new_values = [torch.empty_like(k) for k in self.new_keys]
        columns = torch.arange(prompt_end, device=self.lengths.device)
        padding = (columns[None] < prompt_end - cache.lengths[:, None])[:, None]  # (U, 1, P)
        bias = cache.keys[0].new_zeros(u, 1, prompt_end).masked_fill_(padding, -torch.inf)
        self.bias = bias.repeat_interleave(self.groups, 0)  # (U * G, 1, P)
        positions = torch.arange(prompt_end + max_new, device=self.lengths.device)[None]
        cos, sin = backbone.rotary_emb(cache.keys[0], positions)  # (1, C, D) each, as transformers makes them
        self.cos, self.sin = cos[0], sin[0]

    def __call__(self, tokens: torch.Tensor, t: int) -> torch.Tensor:
        positions = self.lengths + t
        rotary = self.cos[positions][:, None], self.sin[positions][:, None]  # (B, 1, D) each
        x = self.backbone.embed_tokens(tokens[self.order])  # (B, E) in group order
        with torch.autocast(x.device.type, enabled=False):
            for layer, *cache in zip(
                self.layers, self.prompt_keys, self.prompt_values, self.new_keys, self.new_values, strict=True
            ):
                x = x + self._attention(layer, rms_norm(layer.norms[0], x), rotary, cache, t)
                gate, up = layer.gate_up(rms_norm(layer.norms[1], x)).chunk(2, -1)
                x = x + layer.down(F.silu(gate) * up)
            return rms_norm(self.backbone.norm, x)[self.restore]

    def _attention(
        self,
        layer: _Layer,
        x: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        cache: list[torch.Tensor],
        t: int,
    ) -> torch.Tensor:
        """[D27] x (B, E) in group order -> (B, E); writes the new key and value into slot t.

        1. q, k, v from one matmul, rotary positions on q and k (transformers' rotate_half).
        2. Query head j reads key/value head j // R; the k rows of a prompt stack their queries, so
           one (k * R, D) x (D, P) matmul per prompt and key/value head scores the prompt for all of them.
        3. Each row scores its own new tokens 0..t; one softmax over both parts, as over one cache.
        """
        prompt_keys, prompt_values, new_keys, new_values = cache
        b, h, g, d, k = x.shape[0], self.heads, self.groups, self.head_size, self.share
        u, r = b // k, h // g
        qkv = layer.qkv(x)  # (B, (H + 2G) * D)
        qk = qkv[:, : (h + g) * d].view(b, h + g, d)
        cos, sin = rotary
        qk = qk * cos + torch.cat([-qk[..., d // 2 :], qk[..., : d // 2]], -1) * sin
        new_keys.view(u, g, k, -1, d)[:, :, :, t] = qk[:, h:].view(u, k, g, d).transpose(1, 2)
        new_values.view(u, g, k, -1, d)[:, :, :, t] = qkv[:, (h + g) * d :].view(u, k, g, d).transpose(1, 2)
        q = (qk[:, :h] * layer.scale).view(u, k, g, r, d).transpose(1, 2).reshape(u * g, k * r, d)
        scores = torch.cat(
            [
                torch.baddbmm(self.bias, q, prompt_keys.transpose(1, 2)).view(b * g, r, -1),  # (B * G, R, P)
                torch.bmm(q.view(b * g, r, d), new_keys[:, : t + 1].transpose(1, 2)),  # (B * G, R, t + 1)
            ],
            -1,
        ).softmax(-1)
        p = prompt_keys.shape[1]
        out = torch.bmm(scores[..., :p].view(u * g, k * r, p), prompt_values).view(b * g, r, d)
        out = out.baddbmm(scores[..., p:], new_values[:, : t + 1])  # (B * G, R, D)
        return layer.o(out.view(u, g, k, r * d).transpose(1, 2).reshape(b, h * d))


def rms_norm(norm: Any, x: torch.Tensor) -> torch.Tensor:
    """transformers' LlamaRMSNorm: normalised in float32, scaled in the input's dtype."""
    normed = F.rms_norm(x.float(), (x.shape[-1],), None, norm.variance_epsilon)
    return norm.weight * normed.to(x.dtype)


def llama_style(backbone: Any) -> bool:
    """Whether every layer of ``backbone`` is LlamaDecoderLayer's math with linear layers that are
    plain or carry plain LoRA (no bias, DoRA or merged weights), so that ``LlamaStep`` applies."""
    config = backbone.config
    if config.model_type not in LLAMA_STYLE or config.hidden_act != "silu":
        return False
    embeddings = getattr(backbone, "embed_tokens", None)
    if getattr(config, "sliding_window", None) or not isinstance(embeddings, nn.Embedding):
        return False
    for layer in getattr(backbone, "layers", []):
        linears = [getattr(layer.self_attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
        linears += [getattr(layer.mlp, n) for n in ("gate_proj", "up_proj", "down_proj")]
        if not all(_lora_parts(m) is not None for m in linears):
            return False
    return hasattr(backbone, "rotary_emb") and hasattr(backbone, "norm")


def _lora_parts(module: nn.Module) -> tuple[nn.Linear, list[tuple[torch.Tensor, torch.Tensor, float]]] | None:
    """A plain or LoRA linear layer -> (its base nn.Linear, its active LoRA adapters as (A, B,
    scaling)); None for anything else. Computes nothing: ``llama_style`` asks at every rollout."""
    base = getattr(module, "base_layer", module)
    if not isinstance(base, nn.Linear) or base.bias is not None:
        return None
    if base is module:
        return base, []
    if any(getattr(module, "use_dora", {}).values()) or getattr(module, "merged", False):
        return None
    if getattr(module, "disable_adapters", False):
        return base, []
    names = [n for n in module.active_adapters if n in module.lora_A]
    return base, [(module.lora_A[n].weight, module.lora_B[n].weight, module.scaling[n]) for n in names]


def _llama_layer(layer: Any, rows: int, linear: LinearFactory, cache: FusedCache) -> _Layer:
    attention, mlp = layer.self_attn, layer.mlp

    def fused(modules: list[nn.Module]) -> Linear:
        return _fused(modules, rows, linear, cache)

    return _Layer(
        (layer.input_layernorm, layer.post_attention_layernorm),
        fused([attention.q_proj, attention.k_proj, attention.v_proj]),
        fused([attention.o_proj]),
        fused([mlp.gate_proj, mlp.up_proj]),
        fused([mlp.down_proj]),
        attention.scaling,
    )


def _fused(modules: list[nn.Module], rows: int, linear: LinearFactory, cache: FusedCache) -> Linear:
    """The modules' outputs side by side from one matmul. Frozen weights without adapters are fused (and
    packed) once and kept; an adapter is merged into a fresh copy at every build, W + scaling B A
    computed in float32 and rounded once to the base weight's dtype (as trl merges an adapter before
    handing the weights to vLLM for generation): decoding then runs no LoRA matmul [D27]."""
    parts = [_lora_parts(m) for m in modules]
    assert all(p is not None for p in parts), "llama_style() admits these modules"
    bases = [p[0] for p in parts]  # type: ignore[index]
    adapted = any(p[1] for p in parts)  # type: ignore[index]
    frozen = not adapted and not any(base.weight.requires_grad for base in bases)
    matmul = cache.get(modules[0]) if frozen else None
    if matmul is not None:
        return matmul
    weight = torch.cat([base.weight for base in bases])
    if adapted:
        merged, start = weight.float(), 0
        for base, adapters in parts:  # type: ignore[misc]
            for a, b, scaling in adapters:
                merged[start : start + base.weight.shape[0]] += scaling * (b.float() @ a.float())
            start += base.weight.shape[0]
        weight = merged.to(weight.dtype)
    matmul = linear(weight, rows)
    if frozen:
        cache[modules[0]] = matmul
    return matmul


def prepacked(weight: torch.Tensor, rows: int, bias: torch.Tensor | None = None) -> Linear:
    """x (rows, in) -> x @ weight.T + bias, without gradients. On the CPU, float32 and bf16 go through a
    copy of ``weight`` reordered once into oneDNN's blocked layout (a plain matmul of a few rows is
    dominated by reading or reordering the weight at every call): with 30 layers' weights cold in
    cache, a (16, 576) x (576, 3072) product takes 382 instead of 1,006 us in float32 and 211 instead
    of 434 in bf16, SmolLM2's float32 LM head 6.3 instead of 13.6 ms. Elsewhere (another device, another
    dtype, a CPU where ``probes.onednn_prepack`` says no) ``F.linear``."""
    weight, bias = weight.detach(), None if bias is None else bias.detach()
    if weight.device.type != "cpu" or not probes.onednn_prepack(weight.dtype):
        return lambda x: F.linear(x, weight, bias)
    ops = probes.mkldnn_ops()
    packed = ops._reorder_linear_weight(weight, rows)
    return lambda x: ops._linear_pointwise(x, packed, bias, "none", [], "")

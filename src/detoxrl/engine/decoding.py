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

Shapes: B rows, H query heads, G key/value heads (H = G * R), C cache slots (longest prompt P plus T
new tokens), D head size, E hidden size.
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


class TransformersStep:
    """``step(tokens (B,), t) -> (B, E)`` through the backbone's own forward, for any decoder-only
    model. The buffers (per layer (B, G, C, D)) hold each prompt right-aligned at column P."""

    def __init__(
        self, backbone: Any, keys: list[torch.Tensor], values: list[torch.Tensor], lengths: torch.Tensor
    ) -> None:
        self.backbone, self.lengths, self.prompt_end = backbone, lengths, int(lengths.max())
        cache = DynamicCache()
        cache.layers = [_BufferLayer(k, v, self.prompt_end) for k, v in zip(keys, values, strict=True)]
        self.cache = {cache_name(backbone): cache}
        columns = torch.arange(keys[0].shape[2], device=lengths.device)
        self.mask = (columns[None] >= (self.prompt_end - lengths)[:, None]).long()  # (B, C)

    def __call__(self, tokens: torch.Tensor, t: int) -> torch.Tensor:
        out = self.backbone(
            input_ids=tokens[:, None], attention_mask=self.mask[:, : self.prompt_end + t + 1],
            position_ids=(self.lengths + t)[:, None], use_cache=True, **self.cache,
        )  # fmt: skip
        return out.last_hidden_state[:, -1]


@dataclass(frozen=True)
class _Linear:
    """x (B, in) -> (B, out): a base matmul plus, if any, the LoRA update ``(x @ A.T) @ B.T``."""

    base: Linear
    lora: tuple[torch.Tensor, torch.Tensor] | None  # A (r, in), B (out, r), scaling folded into B

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        return out if self.lora is None else out + F.linear(F.linear(x, self.lora[0]), self.lora[1])


@dataclass(frozen=True)
class _Layer:
    norms: tuple[Any, Any]  # RMSNorms before attention and before the MLP
    qkv: _Linear
    o: _Linear
    gate_up: _Linear
    down: _Linear
    scale: float


class LlamaStep:
    """``step(tokens (B,), t) -> (B, E)`` for Llama-style decoders in ~30 operations per layer (see
    the module's docstring); ``build`` returns None for any other model, which then takes
    ``TransformersStep``."""

    @classmethod
    def build(
        cls, backbone: Any, keys: list[torch.Tensor], values: list[torch.Tensor], lengths: torch.Tensor,
        linear: LinearFactory, fused: FusedCache,
    ) -> LlamaStep | None:  # fmt: skip
        return cls(backbone, keys, values, lengths, linear, fused) if llama_style(backbone) else None

    def __init__(
        self, backbone: Any, keys: list[torch.Tensor], values: list[torch.Tensor], lengths: torch.Tensor,
        linear: LinearFactory, fused: FusedCache,
    ) -> None:  # fmt: skip
        """``linear`` makes the base matmuls (``prepacked``, or ``F.linear``); ``fused`` keeps the fused
        frozen ones across rollouts."""
        config = backbone.config
        b, self.groups, slots, self.head_size = keys[0].shape
        self.heads = config.num_attention_heads
        self.backbone, self.keys, self.values, self.lengths = backbone, keys, values, lengths
        self.prompt_end = int(lengths.max())
        dtype = keys[0].dtype
        self.layers = [_llama_layer(layer, dtype, b, linear, fused) for layer in backbone.layers]
        columns = torch.arange(slots, device=lengths.device)
        padding = columns[None] < self.prompt_end - lengths[:, None]  # (B, C)
        unused = (padding | (columns[None] >= self.prompt_end))[:, None]  # (B, 1, C)
        bias = torch.zeros(b, 1, slots, dtype=dtype, device=lengths.device).masked_fill_(unused, -torch.inf)
        self.bias = bias.repeat_interleave(self.groups, 0)  # (B * G, 1, C): padding and slots not yet written
        cos, sin = backbone.rotary_emb(keys[0], columns[None])  # (1, C, D) each, as transformers makes them
        self.cos, self.sin = cos[0], sin[0]

    def __call__(self, tokens: torch.Tensor, t: int) -> torch.Tensor:
        column = self.prompt_end + t
        self.bias[:, :, column] = 0.0  # each row's new token attends to itself
        positions = self.lengths + t
        rotary = self.cos[positions][:, None], self.sin[positions][:, None]  # (B, 1, D) each
        x = self.backbone.embed_tokens(tokens)  # (B, E)
        with torch.autocast(x.device.type, enabled=False):
            for layer, keys, values in zip(self.layers, self.keys, self.values, strict=True):
                x = x + self._attention(layer, rms_norm(layer.norms[0], x), rotary, keys, values, column)
                gate, up = layer.gate_up(rms_norm(layer.norms[1], x)).chunk(2, -1)
                x = x + layer.down(F.silu(gate) * up)
            return rms_norm(self.backbone.norm, x)

    def _attention(
        self, layer: _Layer, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor],
        keys: torch.Tensor, values: torch.Tensor, column: int,
    ) -> torch.Tensor:  # fmt: skip
        """x (B, E) -> (B, E); writes the new key and value into slot ``column`` of the buffers."""
        b, h, g, d = x.shape[0], self.heads, self.groups, self.head_size
        qkv = layer.qkv(x)  # (B, (H + 2G) * D)
        qk = qkv[:, : (h + g) * d].view(b, h + g, d)
        cos, sin = rotary
        qk = (
            qk * cos + torch.cat([-qk[..., d // 2 :], qk[..., : d // 2]], -1) * sin
        )  # transformers' rotate_half
        keys[:, :, column] = qk[:, h:]
        values[:, :, column] = qkv[:, (h + g) * d :].view(b, g, d)
        q = qk[:, :h].reshape(b * g, h // g, d)  # query head j reads key/value head j // R
        scores = torch.baddbmm(self.bias, q, keys.view(b * g, -1, d).transpose(1, 2), alpha=layer.scale)
        return layer.o(torch.bmm(scores.softmax(-1), values.view(b * g, -1, d)).view(b, h * d))


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


def _llama_layer(
    layer: Any, dtype: torch.dtype, rows: int, linear: LinearFactory, cache: FusedCache
) -> _Layer:
    attention, mlp = layer.self_attn, layer.mlp

    def fused(modules: list[nn.Module]) -> _Linear:
        return _fused(modules, dtype, rows, linear, cache)

    return _Layer(
        (layer.input_layernorm, layer.post_attention_layernorm),
        fused([attention.q_proj, attention.k_proj, attention.v_proj]),
        fused([attention.o_proj]),
        fused([mlp.gate_proj, mlp.up_proj]),
        fused([mlp.down_proj]),
        attention.scaling,
    )


def _fused(
    modules: list[nn.Module], dtype: torch.dtype, rows: int, linear: LinearFactory, cache: FusedCache
) -> _Linear:
    """The modules' outputs side by side from one base matmul (frozen weights fused and packed once
    and kept) and one LoRA pair: A stacked, B block-diagonal."""
    parts = [_lora_parts(m) for m in modules]
    assert all(p is not None for p in parts), "llama_style() admits these modules"
    bases = [p[0] for p in parts]  # type: ignore[index]
    frozen = not any(base.weight.requires_grad for base in bases)
    matmul = cache.get(modules[0]) if frozen else None
    if matmul is None:
        matmul = linear(torch.cat([base.weight for base in bases]), rows)
        if frozen:
            cache[modules[0]] = matmul
    pairs = [(i, a, b, scaling) for i, p in enumerate(parts) for a, b, scaling in p[1]]  # type: ignore[index]
    if not pairs:
        return _Linear(matmul, None)
    outs = [base.weight.shape[0] for base in bases]
    starts = [sum(outs[:i]) for i in range(len(outs))]
    a = torch.cat([a for _, a, _, _ in pairs]).to(dtype)  # (r total, in)
    b = torch.zeros(sum(outs), a.shape[0], dtype=dtype, device=a.device)  # (out total, r total)
    r = 0
    for i, a_i, b_i, scaling in pairs:
        b[starts[i] : starts[i] + outs[i], r : r + a_i.shape[0]] = b_i * scaling  # scaling folded into B
        r += a_i.shape[0]
    return _Linear(matmul, (a, b))


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

"""Analytic FLOP counts of one PPO step for a Llama-style decoder with LoRA (pure Python, no torch).

Counting rules (a multiply-add is 2 FLOPs; norms, activations, softmax, RoPE, embedding lookups and
the optimizer are ignored, they are < 1 % here):

* linear layers: ``2 * weights * tokens`` forward. Per layer the weights are q (h x n_heads*d),
  k and v (h x n_kv*d), o (n_heads*d x h) and the gated MLP (3 x h x i).
* LM head: ``2 * h * V`` per position whose logits are computed (generation: one per new token;
  our log-prob passes: the T response positions only, ``logits_to_keep``).
* attention scores and mixing: ``4 * layers * n_heads*d * context`` per token (QK^T and AV), causal,
  so a sequence of n tokens costs ``4 * layers * n_heads*d * n(n+1)/2``.
* LoRA on a (d_in x d_out) projection: ``2 * r * (d_in + d_out)`` per token forward.
* backward, base weights frozen: only the gradient with respect to the activations is needed, so a
  frozen linear layer (LM head included) costs 1x its forward, attention (no weights) 2x, LoRA 2x
  (activations + its own weights). Forward+backward is then 2x the forward for the frozen base, not
  the 3x (``6 N`` per token) of full fine-tuning; ``backward_factor=2`` gives the 6N convention.

A pass over a prompt of P tokens and a response of T tokens feeds P + T - 1 tokens (the last response
token is never an input) and needs logits at T positions. Only real tokens count: padding is waste.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelShape:
    """The dimensions that set a decoder's FLOPs, plus the LoRA adapter's (rank, targeted modules)."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    lora_rank: int = 0
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")

    @classmethod
    def from_config(cls, config: Mapping[str, Any], lora_rank: int = 0) -> ModelShape:
        """From a Hugging Face ``config.json`` dict (Llama / Mistral / Qwen2 field names)."""
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        return cls(
            layers=int(config["num_hidden_layers"]),
            hidden=hidden,
            intermediate=int(config["intermediate_size"]),
            heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            vocab=int(config["vocab_size"]),
            lora_rank=lora_rank,
        )

    def projections(self) -> dict[str, tuple[int, int]]:
        """(d_in, d_out) of each linear layer of one decoder layer."""
        h, i = self.hidden, self.intermediate
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return {
            "q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h),
        }  # fmt: skip

    @property
    def layer_weights(self) -> int:
        """Matmul weights of all decoder layers (no embeddings, no LM head, no norms)."""
        return self.layers * sum(a * b for a, b in self.projections().values())

    @property
    def head_weights(self) -> int:
        return self.hidden * self.vocab

    @property
    def lora_weights(self) -> int:
        proj = self.projections()
        return self.layers * sum(self.lora_rank * sum(proj[t]) for t in self.lora_targets if t in proj)


def attention_flops(shape: ModelShape, start: int, stop: int) -> float:
    """Forward attention FLOPs of the tokens at positions start..stop-1 (each sees position + 1 keys)."""
    contexts = (stop * (stop + 1) - start * (start + 1)) / 2  # sum of (j + 1) for j in [start, stop)
    return 4.0 * shape.layers * shape.heads * shape.head_dim * contexts


def pass_flops(
    shape: ModelShape, start: int, stop: int, logits: int, lora: bool, backward_factor: float = 0.0
) -> float:
    """Forward (+ backward) FLOPs for feeding positions start..stop-1 with ``logits`` LM-head positions.

    ``backward_factor``: 0 = forward only; 1 = also the activation gradients of a frozen base (LoRA
    training); 2 = also weight gradients of the base (full fine-tuning, the 6N convention).
    """
    n = stop - start
    frozen = 2.0 * n * shape.layer_weights + 2.0 * logits * shape.head_weights
    adapter = 2.0 * n * shape.lora_weights if lora else 0.0
    attention = attention_flops(shape, start, stop)
    if backward_factor:
        # attention has no weights: its backward is always 2x; LoRA: activations + its own weights.
        return frozen * (1 + backward_factor) + attention * 3 + adapter * 3
    return frozen + attention + adapter


def step_flops(
    shape: ModelShape,
    prompt_lengths: Sequence[int],
    response_lengths: Sequence[int],
    ppo_epochs: int = 1,
    backward_factor: float = 1.0,
) -> dict[str, float]:
    """FLOPs of one PPO step by phase, summed over the rows (P_i prompt, T_i response tokens):

    * prefill: the prompt (P_i tokens, one logit row), LoRA on;
    * decode: T_i - 1 more tokens one at a time with the KV cache, one logit row each, LoRA on;
    * policy_pass: old log-probs + values, P_i + T_i - 1 tokens, T_i logit rows, LoRA on;
    * reference_pass: the same with the adapter disabled;
    * update: ``ppo_epochs`` x forward + backward of the policy pass.
    """
    out = dict.fromkeys(["prefill", "decode", "policy_pass", "reference_pass", "update"], 0.0)
    for p, t in zip(prompt_lengths, response_lengths, strict=True):
        out["prefill"] += pass_flops(shape, 0, p, 1, lora=True)
        out["decode"] += pass_flops(shape, p, p + t - 1, t - 1, lora=True)
        out["policy_pass"] += pass_flops(shape, 0, p + t - 1, t, lora=True)
        out["reference_pass"] += pass_flops(shape, 0, p + t - 1, t, lora=False)
        full = pass_flops(shape, 0, p + t - 1, t, lora=True, backward_factor=backward_factor)
        out["update"] += ppo_epochs * full
    out["generation"] = out["prefill"] + out["decode"]
    out["total"] = out["generation"] + out["policy_pass"] + out["reference_pass"] + out["update"]
    return out


def lower_bound_seconds(flops: Mapping[str, float], peak_flops_per_s: float) -> dict[str, float]:
    """Seconds each phase would take at the measured matmul peak (the unreachable floor)."""
    return {k: v / peak_flops_per_s for k, v in flops.items()}


def mfu(flops: float, seconds: float | None, peak_flops_per_s: float | None) -> float | None:
    """Achieved FLOP/s over the peak, or None when a figure is missing."""
    if not seconds or not peak_flops_per_s:
        return None
    return flops / seconds / peak_flops_per_s

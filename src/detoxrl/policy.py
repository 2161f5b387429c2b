"""The actor-critic: a (PEFT) language model with a value head, and its frozen KL reference.

Knows how to run a model on (prompt, response) pairs and return per-token log-probs and values; knows
nothing of rewards, advantages or optimisers. Shapes: B responses, P prompt tokens (padded),
T response tokens (right-padded), H hidden size, V vocabulary.

The reference is the policy as it was when PPO started, with no second copy of the base weights:
  * a fresh LoRA adapter  -> the same model with the adapter disabled (identical at step 0);
  * a loaded adapter      -> a frozen clone of that adapter (``reference``), switched in with
                             ``set_adapter`` (never silently the base model: the lab's defect 2);
  * full fine-tuning      -> a frozen deep copy (the only case that copies weights).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from detoxrl.attention import CAUSAL_ROWS, packed_inputs
from detoxrl.config import PolicyConfig
from detoxrl.models import Policy, attach_adapter, count_parameters
from detoxrl.ppo import logprobs_from_logits
from detoxrl.sampling import Head, float32_head

ReferenceKind = Literal["disabled_adapter", "frozen_adapter", "frozen_copy"]
VALUE_HEAD_FILE = "value_head.safetensors"
REFERENCE_ADAPTER = "reference"


@dataclass(frozen=True)
class ResponseBatch:
    """Prompts (left-padded for decoder-only, right-padded for encoder-decoders) and responses."""

    query_ids: torch.Tensor  # (B, P)
    query_mask: torch.Tensor  # (B, P)
    response_ids: torch.Tensor  # (B, T)
    response_mask: torch.Tensor  # (B, T)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.query_ids, self.query_mask, self.response_ids, self.response_mask)

    def select(self, index: torch.Tensor) -> ResponseBatch:
        """The rows ``index`` (a 1-D index tensor)."""
        return ResponseBatch(*(t[index] for t in self.tensors()))

    def to(self, device: torch.device | str) -> ResponseBatch:
        return ResponseBatch(*(t.to(device) for t in self.tensors()))


@dataclass(frozen=True)
class PolicyOutput:
    """Per-token log-probs of the given responses and the critic's values, both (B, T)."""

    logprobs: torch.Tensor
    values: torch.Tensor


class ValueHead(nn.Module):
    """[D5] A linear critic on the final hidden state (the one the LM head reads), kept in float32.

    Zero-initialised by default so that the first value estimates are 0 and do not disturb the
    first advantages; ``init_std > 0`` draws small normal weights instead.
    """

    def __init__(self, hidden_size: int, init_std: float = 0.0) -> None:
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.summary.weight, std=init_std) if init_std > 0 else nn.init.zeros_(
            self.summary.weight
        )
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, H) -> (B, T), in float32 even under autocast."""
        with torch.autocast(hidden.device.type, enabled=False):
            return self.summary(hidden.float()).squeeze(-1)


class ActorCritic(nn.Module):
    """Policy + value head + reference. Always in eval mode: dropout stays off ([D12])."""

    def __init__(
        self,
        model: Any,
        is_encoder_decoder: bool,
        reference: ReferenceKind,
        value_head_init_std: float = 0.0,
        reference_model: Any = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.is_encoder_decoder = is_encoder_decoder
        self.reference_kind: ReferenceKind = reference
        self._reference_model = (reference_model,)  # a tuple: not a registered submodule, never trained
        config = model.config
        hidden = getattr(config, "hidden_size", None) or config.d_model
        device = next(model.parameters()).device
        self.value_head = ValueHead(hidden, value_head_init_std).to(device)
        # [D17] Plain decoder-only LMs on the CPU pack their rows end to end (no padding work), if their
        # attention goes through transformers' AttentionInterface (which passes on ``row_lengths``);
        # elsewhere rows are batched, padded. Either way the LM head computes float32 logits.
        self.causal_parts = plain_causal_lm(model)
        self.padding_free = (
            self.causal_parts is not None
            and device.type == "cpu"
            and getattr(self.causal_parts[1], "_supports_attention_backend", False)
        )
        self.row_attention = True  # attention.causal_attention for those rows (see attention())
        self.lean_decoding = True  # rollouts of Llama-style models decode through decoding.LlamaStep
        self.compute_dtype = model.get_input_embeddings().weight.dtype  # the base weights' dtype
        self._heads: dict[tuple[int, bool], Head] = {}  # float32 copies of frozen LM heads, made once
        self._hidden: list[torch.Tensor] = []
        self._capture = False  # only our own passes keep hidden states (never generate()'s steps)
        # The LM head's input is the final hidden state whatever the architecture (post-norm, scaled for T5).
        model.get_output_embeddings().register_forward_pre_hook(self._keep_hidden)
        self.eval()

    def _keep_hidden(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        if self._capture:
            self._hidden.append(args[0])

    def train(self, mode: bool = True) -> ActorCritic:
        """[D12] Dropout off in every pass, so the ratio is exactly 1 and the KL exactly 0 at step 0."""
        return super().train(False)

    @property
    def is_peft(self) -> bool:
        return hasattr(self.model, "peft_config")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def describe(self) -> str:
        trainable, total = count_parameters(self)
        return f"trainable params: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)"

    def float32_head(self, model: Any, rows: int = 0) -> Head:
        """``sampling.float32_head`` of ``model``; a frozen head (LoRA, the reference) is converted once,
        not at every pass (113 MB per call for SmolLM2 in bf16)."""
        head = model.get_output_embeddings()
        if head.weight.requires_grad:  # full fine-tuning: the weights change at every step
            return float32_head(model, rows)
        key = (id(head), rows > 0)  # the sampling head is kept apart: it has no gradients
        if key not in self._heads:
            self._heads[key] = float32_head(model, rows)
        return self._heads[key]

    @contextmanager
    def autocast(self) -> Iterator[None]:
        """[D18] With bf16/fp16 base weights and float32 LoRA weights (the optimiser's master copy), run
        the adapter's matmuls in the base dtype too: autocast casts the small LoRA matrices per call
        instead of PEFT casting every activation to float32 and back. LM head, value head, log-probs
        and losses stay float32. A no-op for float32 models."""
        if self.compute_dtype == torch.float32 or not self.is_peft:
            yield
            return
        from peft.helpers import disable_input_dtype_casting

        with (
            torch.autocast(self.device.type, dtype=self.compute_dtype),
            disable_input_dtype_casting(self.model),
        ):
            yield

    @contextmanager
    def attention(self, model: Any) -> Iterator[None]:
        """On the CPU, rows packed end to end (``padding_free``) take ``attention.causal_attention``,
        which keeps each row to itself without a mask: bf16/fp16 as matmuls + softmax (SDPA's flash
        backward is slow there at a few hundred tokens), float32 through SDPA. Padded batches with
        gradients in bf16/fp16 take transformers' "eager"; GPUs keep SDPA (bench/README.md measures all)."""
        config = model.config
        if self.device.type != "cpu":
            implementation = None
        elif self.packs_rows:
            implementation = CAUSAL_ROWS
        elif self.compute_dtype == torch.float32:
            implementation = None
        else:
            implementation = "eager" if torch.is_grad_enabled() else None
        if implementation is None:
            yield
            return
        saved, config._attn_implementation = config._attn_implementation, implementation
        try:
            yield
        finally:
            config._attn_implementation = saved

    @property
    def packs_rows(self) -> bool:
        """Whether passes run packed rows under ``attention.causal_attention``, which a packed prefill
        needs: transformers finds packed rows by their restarting position ids only without a KV cache
        (that is how the update and the reference pass still pack rows without ``row_attention``)."""
        return self.padding_free and self.row_attention

    def _lm_forward(self, model: Any, batch: ResponseBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One pass -> (logits at response positions (B, T, V), final hidden states there (B, T, H))."""
        if self.causal_parts is not None:
            pass_ = self._packed_hidden if self.padding_free else self._padded_hidden
            with self.autocast(), self.attention(model):
                hidden = pass_(model, batch)
            return self.float32_head(model)(hidden), hidden
        t = batch.response_ids.shape[1]
        self._hidden.clear()
        self._capture = True
        try:
            logits = self._logits(model, batch, t)
        finally:
            self._capture = False
        kept = self._hidden[-1][:, -t:] if self._hidden else None  # (B, T, H); None: a hook-less copy
        self._hidden.clear()
        return logits, kept

    @staticmethod
    def _padded_hidden(model: Any, batch: ResponseBatch) -> torch.Tensor:
        """[D13] Left-padded prompt + response[:-1], positions counting real tokens only (as generation
        does) -> the final hidden states at the T response positions (B, T, H)."""
        backbone = _backbone(model)
        ids = torch.cat([batch.query_ids, batch.response_ids[:, :-1]], dim=1)  # (B, P + T - 1)
        mask = torch.cat([batch.query_mask, batch.response_mask[:, :-1]], dim=1)
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        out = backbone(input_ids=ids, attention_mask=mask, position_ids=positions)
        return out.last_hidden_state[:, -batch.response_ids.shape[1] :]

    @staticmethod
    def _packed_hidden(model: Any, batch: ResponseBatch) -> torch.Tensor:
        """[D17] The rows' real prompt + response[:-1] tokens packed end to end into one sequence, no
        padding (position ids restart at each row; attention keeps each row to itself) -> the final
        hidden states at each row's response positions, zero-padded to (B, T, H)."""
        backbone, t = _backbone(model), batch.response_ids.shape[1]
        responses = [r[m.bool()] for r, m in zip(batch.response_ids, batch.response_mask, strict=True)]
        rows = [
            torch.cat([q[m.bool()], r[:-1]])
            for q, m, r in zip(batch.query_ids, batch.query_mask, responses, strict=True)
        ]
        # no cache: transformers then also tells packed rows apart by their position ids (row_attention off)
        hidden = backbone(**packed_inputs(rows), use_cache=False).last_hidden_state[0]  # (N, H), N tokens
        return torch.stack([
            torch.nn.functional.pad(h[-len(r) :], (0, 0, 0, t - len(r)))
            for h, r in zip(hidden.split([len(row) for row in rows]), responses, strict=True)
        ])  # fmt: skip

    def _logits(self, model: Any, batch: ResponseBatch, t: int) -> torch.Tensor:
        if self.is_encoder_decoder:
            # [D13] prompt -> encoder; decoder input = start token + response[:-1] (teacher forcing).
            start = torch.full_like(batch.response_ids[:, :1], model.config.decoder_start_token_id)
            decoder_ids = torch.cat([start, batch.response_ids[:, :-1]], dim=1)  # (B, T)
            out = model(
                input_ids=batch.query_ids, attention_mask=batch.query_mask, decoder_input_ids=decoder_ids
            )
            return out.logits  # (B, T, V)
        # [D13] left-padded prompt + response[:-1]: the position before each response token predicts it;
        # position ids count real tokens only, as in generate(); only T positions reach the LM head.
        ids = torch.cat([batch.query_ids, batch.response_ids[:, :-1]], dim=1)  # (B, P + T - 1)
        mask = torch.cat([batch.query_mask, batch.response_mask[:, :-1]], dim=1)
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=t)
        return out.logits[:, -t:]  # (B, T, V)

    def forward(self, batch: ResponseBatch, temperature: float = 1.0) -> PolicyOutput:
        """Log-probs of ``batch.response_ids`` under the policy and the values, from one pass."""
        logits, hidden = self._lm_forward(self.model, batch)
        assert hidden is not None, "the LM head's input was not captured"
        return PolicyOutput(
            logprobs_from_logits(logits, batch.response_ids, temperature), self.value_head(hidden)
        )

    @contextmanager
    def reference_model(self) -> Iterator[Any]:
        """The frozen reference, for the duration of the block (adapter toggled on the same weights)."""
        if self.reference_kind == "frozen_copy":
            yield self._reference_model[0]
        elif self.reference_kind == "disabled_adapter":
            with self.model.disable_adapter():
                yield self.model
        else:
            self.model.set_adapter(REFERENCE_ADAPTER)  # set_adapter flips requires_grad; restored below
            try:
                yield self.model
            finally:
                self.model.set_adapter("default")

    @torch.no_grad()
    def reference_logprobs(self, batch: ResponseBatch, temperature: float = 1.0) -> torch.Tensor:
        """(B, T) log-probs of the responses under the reference."""
        with self.reference_model() as ref:
            logits, _ = self._lm_forward(ref, batch)
        return logprobs_from_logits(logits, batch.response_ids, temperature)

    def save(self, path: str | Path) -> None:
        """Trained weights: the ``default`` adapter in PEFT format (or the full model) + the value head."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if self.is_peft:
            self.model.save_pretrained(path, selected_adapters=["default"])
        else:
            save_model(self.model, str(path / "model.safetensors"))  # shared (tied) tensors kept once
            self.model.config.save_pretrained(path)  # so that from_pretrained(path) loads it too
        save_file(self.value_head.state_dict(), str(path / VALUE_HEAD_FILE))

    def load(self, path: str | Path) -> None:
        """Restore weights written by ``save`` into this actor-critic (the reference is untouched)."""
        from peft import set_peft_model_state_dict

        path = Path(path)
        if self.is_peft:
            state = load_file(str(path / "adapter_model.safetensors"), device=str(self.device))
            result: Any = set_peft_model_state_dict(self.model, state, adapter_name="default")
            assert not result.unexpected_keys, result.unexpected_keys
        else:
            load_model(self.model, str(path / "model.safetensors"), device=str(self.device))
        self.value_head.load_state_dict(load_file(str(path / VALUE_HEAD_FILE), device=str(self.device)))


def plain_causal_lm(model: Any) -> tuple[Any, Any] | None:
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


def _backbone(model: Any) -> Any:
    parts = plain_causal_lm(model)
    assert parts is not None, "a plain decoder-only LM was expected"
    return parts[0]


def _clone_adapter_as_reference(model: Any) -> None:
    """Add a frozen ``reference`` adapter holding a copy of the ``default`` adapter's weights."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    ref_config = copy.deepcopy(model.peft_config["default"])
    ref_config.inference_mode = True
    model.add_adapter(REFERENCE_ADAPTER, ref_config)
    state = {
        k: v.detach().clone() for k, v in get_peft_model_state_dict(model, adapter_name="default").items()
    }
    set_peft_model_state_dict(model, state, adapter_name=REFERENCE_ADAPTER)
    model.set_adapter("default")  # the trained adapter active and trainable, the clone frozen
    for name, p in model.named_parameters():
        if f".{REFERENCE_ADAPTER}." in name:
            p.requires_grad_(False)


def build_actor_critic(policy: Policy, config: PolicyConfig, value_head_init_std: float = 0.0) -> ActorCritic:
    """The loaded base ``policy`` -> an actor-critic with the right reference (see the module docstring)."""
    if not config.use_lora:
        if config.adapter is not None:
            raise ValueError("policy.adapter needs policy.use_lora: true (an adapter is a LoRA adapter).")
        reference = copy.deepcopy(policy.model).eval().requires_grad_(False)
        return ActorCritic(
            policy.model, policy.is_encoder_decoder, "frozen_copy", value_head_init_std, reference
        )
    model = attach_adapter(policy, config)
    if config.adapter is None:
        return ActorCritic(model, policy.is_encoder_decoder, "disabled_adapter", value_head_init_std)
    _clone_adapter_as_reference(model)
    return ActorCritic(model, policy.is_encoder_decoder, "frozen_adapter", value_head_init_std)

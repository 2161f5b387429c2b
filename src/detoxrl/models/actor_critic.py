"""The actor-critic's roles: the policy (a PEFT or fully trained language model), its value head (PPO's
critic; the critic-free algorithms build none) and its frozen KL reference, all run through one engine.
Knows how to get per-token log-probs and values for (prompt, response) pairs and how to sample; knows
nothing of rewards, advantages or optimisers, nor of how the engine runs a model. Shapes: B responses,
T response tokens (right-padded), H hidden size.

[D16] The reference is the policy as it was when PPO started, with no second copy of the base weights:
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
from typing import Any, Literal

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn

from detoxrl.config import PolicyConfig, SamplingConfig
from detoxrl.core.batch import ResponseBatch
from detoxrl.core.ppo import entropy_from_logits, logprobs_from_logits
from detoxrl.engine import Engine, Model, select_engine
from detoxrl.models.loading import Policy
from detoxrl.models.lora import attach_adapter, count_parameters
from detoxrl.models.sampling import Sampled, sample

ReferenceKind = Literal["disabled_adapter", "frozen_adapter", "frozen_copy"]
REFERENCE_ADAPTER = "reference"


@dataclass(frozen=True)
class PolicyOutput:
    """Per-token log-probs of the given responses, the critic's values and the policy's entropy, (B, T)."""

    logprobs: torch.Tensor
    values: torch.Tensor | None  # None: an actor-critic without a value head (rloo, grpo)
    entropy: torch.Tensor | None = None  # [D26] only when asked for


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


class Reference:
    """[D16] The frozen KL reference of a policy model: a context in which ``model`` is the reference."""

    def __init__(self, kind: ReferenceKind, frozen_copy: Any = None) -> None:
        self.kind: ReferenceKind = kind
        self.frozen_copy = frozen_copy  # a plain attribute: never a submodule, never trained

    @contextmanager
    def __call__(self, model: Model) -> Iterator[Any]:
        if self.kind == "frozen_copy":
            yield self.frozen_copy
        elif self.kind == "disabled_adapter":
            with model.disable_adapter():
                yield model
        else:
            model.set_adapter(REFERENCE_ADAPTER)  # set_adapter flips requires_grad; restored below
            try:
                yield model
            finally:
                model.set_adapter("default")


class ActorCritic(nn.Module):
    """Policy + value head + reference, run through ``engine``. Always in eval mode: dropout stays off
    ([D12]). ``critic=False`` builds no value head (the critic-free algorithms): no values are computed,
    trained or saved."""

    def __init__(
        self,
        model: Model,
        is_encoder_decoder: bool,
        reference: Reference,
        engine: Engine,
        value_head_init_std: float = 0.0,
        *,
        critic: bool = True,
    ) -> None:
        super().__init__()
        self.model, self.is_encoder_decoder, self.reference, self.engine = (
            model,
            is_encoder_decoder,
            reference,
            engine,
        )
        config = model.config
        hidden = getattr(config, "hidden_size", None) or config.d_model
        self.value_head = ValueHead(hidden, value_head_init_std).to(self.device) if critic else None
        self.eval()

    def train(self, mode: bool = True) -> ActorCritic:
        """[D12] Dropout off in every pass, so the ratio is exactly 1 and the KL exactly 0 at step 0."""
        return super().train(False)

    @property
    def is_peft(self) -> bool:
        return hasattr(self.model, "peft_config")

    @property
    def _no_split_modules(self) -> list[str] | None:
        """The model's layer classes: accelerate's FSDP wraps each such layer on its own."""
        lm = self.model.get_base_model() if self.is_peft else self.model
        return getattr(lm, "_no_split_modules", None)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def describe(self) -> str:
        trainable, total = count_parameters(self)
        return f"trainable params: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)"

    def forward(self, batch: ResponseBatch, temperature: float = 1.0, entropy: bool = False) -> PolicyOutput:
        """Log-probs of ``batch.response_ids`` under the policy and the values (and with ``entropy`` the
        policy's entropy at each position), from one pass."""
        out = self.engine.forward(self.model, batch)
        return PolicyOutput(
            logprobs_from_logits(out.logits, batch.response_ids, temperature),
            self.values(out.hidden),
            entropy_from_logits(out.logits, temperature) if entropy else None,
        )

    def values(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """[D5] The critic's values of LM-head inputs (B, T, H) -> (B, T); None without a value head."""
        return None if self.value_head is None else self.value_head(hidden)

    @torch.no_grad()
    def reference_logprobs(self, batch: ResponseBatch, temperature: float = 1.0) -> torch.Tensor:
        """(B, T) log-probs of the responses under the reference."""
        return self.reference_pass(batch, temperature).logprobs

    @torch.no_grad()
    def reference_pass(
        self, batch: ResponseBatch, temperature: float = 1.0, entropy: bool = False
    ) -> PolicyOutput:
        """The reference's log-probs of the responses (and with ``entropy`` its entropy at each position
        [D28]), (B, T) each; no values."""
        with self.reference(self.model) as model:
            logits = self.engine.forward(model, batch).logits
        return PolicyOutput(
            logprobs_from_logits(logits, batch.response_ids, temperature),
            None,
            entropy_from_logits(logits, temperature) if entropy else None,
        )

    @torch.no_grad()
    def sample(
        self,
        queries: list[torch.Tensor],
        limits: list[int],
        settings: SamplingConfig,
        stop_ids: set[int],
        pad_id: int,
        *,
        seeds: list[int] | None = None,
    ) -> Sampled:
        """[D17] Responses to ``queries`` from the policy, with each token's log-prob and LM-head input;
        row i's draws from ``seeds[i]`` when given (``sampling.row_uniforms``)."""
        return sample(
            self.engine, self.model, queries, limits, settings, stop_ids=stop_ids, pad_id=pad_id, seeds=seeds
        )


def _clone_adapter_as_reference(model: Model) -> None:
    """Add a frozen ``reference`` adapter holding a copy of the ``default`` adapter's weights."""
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


def build_actor_critic(
    policy: Policy,
    config: PolicyConfig,
    value_head_init_std: float = 0.0,
    engine: Engine | None = None,
    critic: bool = True,
) -> ActorCritic:
    """The loaded base ``policy`` -> an actor-critic with the right reference (see the module docstring),
    run by ``engine`` (default: ``config.engine`` on the model's device); ``critic=False``: no value head."""
    engine = engine or select_engine(config.engine, policy.model.device)
    enc_dec = policy.is_encoder_decoder
    if not config.use_lora:
        if config.adapter is not None:
            raise ValueError("policy.adapter needs policy.use_lora: true (an adapter is a LoRA adapter).")
        frozen = copy.deepcopy(policy.model).eval().requires_grad_(False)
        reference = Reference("frozen_copy", frozen)
        return ActorCritic(policy.model, enc_dec, reference, engine, value_head_init_std, critic=critic)
    model = attach_adapter(policy, config)
    if config.adapter is None:
        return ActorCritic(
            model, enc_dec, Reference("disabled_adapter"), engine, value_head_init_std, critic=critic
        )
    _clone_adapter_as_reference(model)
    return ActorCritic(
        model, enc_dec, Reference("frozen_adapter"), engine, value_head_init_std, critic=critic
    )

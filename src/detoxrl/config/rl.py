"""The RL step's hyper-parameters: PPO, RLOO or GRPO. Knows nothing of models or tensors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from detoxrl.config.checks import (
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    UNIT,
    Check,
    check,
    count,
    optional,
    param,
)
from detoxrl.errors import ConfigError

Algorithm = Literal["ppo", "rloo", "grpo"]
GROUP_SIZE = 4  # rloo/grpo's samples per prompt when ppo.num_generations is not set (trl's benchmarks' 4)
# Options of one algorithm -> (that algorithm, its default): any other value is refused under another
ALGORITHM_OPTIONS: dict[str, tuple[Algorithm, Any]] = {
    "whiten_rewards": ("ppo", False),
    "normalize_advantages": ("rloo", False),
    "scale_rewards": ("grpo", "group"),
    "loss_type": ("grpo", "dapo"),
}
EARLY_STOP = Check(
    FRACTION.ok,
    FRACTION.need,
    "it is the early-stop threshold on approximate KL per token, as in trl and CleanRL (useful values "
    "0.01-0.1; null: no early stop), and a value >= 1 practically never stops; the adaptive KL "
    "controller's target, which ppo.target_kl named before, is ppo.adaptive_kl_target",
)


@dataclass(frozen=True)
class PPOConfig:
    """The RL step; names and defaults follow classic trl (the lab's) and CleanRL for PPO, trl's
    RLOOTrainer / GRPOTrainer for the critic-free algorithms (docs/ppo-details.md, D1-D28).

    ``algorithm``: ``ppo`` (value head, GAE, the KL in the per-token reward), ``rloo`` (k samples per
    prompt, each one's baseline the mean reward of the other k - 1, the sequence's KL in its reward) or
    ``grpo`` (group-normalised advantages, the KL in the loss). The KL coefficient is ``init_kl_coef`` for
    all three (trl's ``beta``), the clip range ``cliprange`` (trl's ``epsilon``), the passes over a batch
    ``ppo_epochs`` (trl's ``num_iterations``).
    """

    SECTION: ClassVar[str] = "ppo"
    algorithm: Algorithm = param(
        "ppo", doc="ppo (a value head), rloo or grpo (no critic: a prompt's samples)"
    )
    num_generations: int | None = param(
        None,
        optional(count(1)),
        "[D19] samples per prompt, in consecutive rows; null: 1 for ppo, 4 for rloo, grpo",
    )
    normalize_advantages: bool = param(False, doc="rloo: standardise the advantages over the batch [D20]")
    scale_rewards: Literal["group", "batch", "none"] = param(
        "group", doc="grpo: divide the centred rewards by the group's std, the batch's, or none [D21]"
    )
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = param(
        "dapo", doc="grpo: how the token losses are averaged [D24]"
    )
    learning_rate: float = param(1.41e-5, POSITIVE, "Adam's learning rate (LoRA wants ~1e-4 to 1e-3)")
    batch_size: int = param(16, count(1), "responses sampled per step (prompts x num_generations)")
    mini_batch_size: int = param(4, count(1), "responses per gradient computation [D14]")
    gradient_accumulation_steps: int = param(1, count(1), "mini-batches per optimizer step")
    ppo_epochs: int = param(1, count(1), "passes over each step's batch")
    gamma: float = param(1.0, UNIT, "ppo: the discount [D4]")
    lam: float = param(0.95, UNIT, "ppo: GAE's lambda [D4]")
    cliprange: float = param(0.2, POSITIVE, "the policy ratio's clip range [D7]")
    cliprange_value: float = param(0.2, POSITIVE, "ppo: the value estimate's clip range [D8]")
    vf_coef: float = param(0.1, NON_NEGATIVE, "ppo: the value loss's weight [D8]")
    entropy_coef: float = param(0.0, NON_NEGATIVE, "[D26] minus this x the policy's entropy in the loss")
    entropy_floor: bool = param(
        False, doc="[D28] the entropy bonus lifts the entropy only below the reference's"
    )
    max_grad_norm: float | None = param(
        1.0, optional(POSITIVE), "clip the gradient's norm to this; null: no clip"
    )
    target_kl: float | None = param(
        None, optional(EARLY_STOP), "[D15] stop a step's updates past this approx KL"
    )
    kl_estimator: Literal["k1", "k3"] = param("k1", doc="[D2] the per-token KL estimator (Schulman's k1, k3)")
    adaptive_kl: bool = param(True, doc="[D9] the classic adaptive KL controller moves the coefficient")
    init_kl_coef: float = param(0.2, NON_NEGATIVE, "the KL coefficient (where adaptive_kl: its start)")
    adaptive_kl_target: float = param(6.0, POSITIVE, "[D9] the KL (nats per response) the controller aims at")
    kl_horizon: int = param(10000, count(1), "[D9] the controller's horizon")
    whiten_rewards: bool = param(False, doc="ppo: whiten the per-token rewards before GAE")
    score_scale: float = param(1.0, POSITIVE, "[D10] scores are multiplied by this")
    score_norm: bool = param(False, doc="[D10] normalise scores by their running mean and std")
    score_clip: float | None = param(None, optional(POSITIVE), "[D10] clip scores to +-this; null: no clip")
    tail_share: float = param(
        0.25, FRACTION, "[D29] the share of each batch's lowest scores that tail_weight weighs more"
    )
    tail_weight: float = param(
        0.0, NON_NEGATIVE, "[D29] scores below the tail_share quantile fall by this x their distance to it"
    )
    preference_coef: float = param(
        0.0, NON_NEGATIVE, "[D30] this x a DPO loss on each prompt's best against its worst sample"
    )
    preference_beta: float = param(
        1.0, POSITIVE, "[D30] DPO's beta, the scale of a pair's log-ratio margin (0.1 let the KL run away)"
    )
    preference_margin: float = param(
        0.0, NON_NEGATIVE, "[D30] a pair only where the best score beats the worst by more than this"
    )
    value_head_init_std: float = param(0.0, NON_NEGATIVE, "ppo: the value head's init std; 0: zeros [D5]")
    lr_scheduler_type: Literal["constant", "linear"] = param("constant", doc="linear: decays to 0 over steps")
    max_nonfinite_steps: int = param(
        3,
        count(1),
        "stop after this many steps in a row without an update (non-finite scores, loss, gradients)",
    )

    def __post_init__(self) -> None:
        check(self)
        if self.entropy_floor and self.entropy_coef == 0:
            raise ConfigError(
                "Config key 'ppo.entropy_floor' is true with ppo.entropy_coef 0, so it would do nothing: the "
                "floor shapes the entropy bonus; set e.g. ppo.entropy_coef=0.02, or drop ppo.entropy_floor."
            )
        self._check_algorithm()
        self._check_preference()
        step_rows = self.mini_batch_size * self.gradient_accumulation_steps
        if self.batch_size % step_rows:
            below = self.batch_size // step_rows * step_rows
            fits = sorted({below or step_rows, below + step_rows})
            m, g = self.mini_batch_size, self.gradient_accumulation_steps
            raise ConfigError(
                f"Config key 'ppo.batch_size' must be a multiple of ppo.mini_batch_size * "
                f"ppo.gradient_accumulation_steps ({m} * {g} = {step_rows}), got {self.batch_size}: set "
                f"ppo.batch_size={' or '.join(map(str, fits))}, or a ppo.mini_batch_size that divides it."
            )
        if self.adaptive_kl and self.init_kl_coef == 0:
            raise ConfigError(
                "Config key 'ppo.init_kl_coef' must be > 0 with ppo.adaptive_kl: true, got 0: the controller "
                "multiplies it, so 0 stays 0; set it (e.g. 0.2), or ppo.adaptive_kl=false for no KL penalty."
            )

    @property
    def group_size(self) -> int:
        """[D19] Responses sampled per prompt: ``num_generations``, else 1 for ppo and 4 for rloo/grpo."""
        if self.num_generations is not None:
            return self.num_generations
        return 1 if self.algorithm == "ppo" else GROUP_SIZE

    def _check_preference(self) -> None:
        """[D30] Pairs come from the samples of one prompt, which a mini-batch must hold whole."""
        if self.preference_coef == 0:
            return
        k = self.group_size
        if k < 2:
            raise ConfigError(
                f"Config key 'ppo.preference_coef' is {self.preference_coef} with one sample per "
                "prompt: its pairs are a prompt's best and worst samples; set ppo.num_generations=4 "
                "(or more), or drop it."
            )
        if self.mini_batch_size % k:
            raise ConfigError(
                f"Config key 'ppo.mini_batch_size' must be a multiple of ppo.num_generations ({k}) with "
                f"ppo.preference_coef > 0, got {self.mini_batch_size}: a pair's two samples must share a "
                f"mini-batch; set ppo.mini_batch_size={k * max(1, self.mini_batch_size // k)}."
            )

    def _check_algorithm(self) -> None:
        """Groups that fit the batch, at least 2 samples where the baseline is the others, and no option of
        one algorithm set under another (``ppo.loss_type=grpo`` does not make a GRPO run)."""
        k, algorithm = self.group_size, self.algorithm
        if algorithm != "ppo" and k < 2:
            raise ConfigError(
                f"Config key 'ppo.num_generations' must be >= 2 with ppo.algorithm: {algorithm}, got {k}: "
                "each sample's baseline comes from the other samples of its prompt; set e.g. "
                "ppo.num_generations=4."
            )
        if self.batch_size % k:
            fits = sorted({max(k, self.batch_size // k * k), (self.batch_size // k + 1) * k})
            raise ConfigError(
                f"Config key 'ppo.batch_size' must be a multiple of ppo.num_generations ({k}), got "
                f"{self.batch_size}: a step samples batch_size / num_generations prompts num_generations "
                f"times each; set ppo.batch_size={' or '.join(map(str, fits))}."
            )
        for name, (owner, default) in ALGORITHM_OPTIONS.items():
            value = getattr(self, name)
            if value != default and algorithm != owner:
                shown = str(value).lower() if isinstance(value, bool) else repr(value)
                raise ConfigError(
                    f"Config key 'ppo.{name}' is {owner}'s option, got {shown} with ppo.algorithm: "
                    f"{algorithm}: set ppo.algorithm={owner}, or drop ppo.{name}."
                )

"""Processes: which share of a batch this process works on, the few collectives data-parallel PPO needs, and
the wrapping of the trained model (DDP, FSDP or DeepSpeed), all through accelerate (torch.distributed
underneath). Knows nothing of PPO, of models' insides or of files.

One process, the default, is ``SINGLE``: every helper is the identity and nothing is imported or
initialised, so the option costs nothing. A process started by a launcher (``torchrun``, ``accelerate
launch``, or ``detoxrl run --num-processes N``: launch.py) calls ``setup`` once, which builds the one
``accelerate.Accelerator`` of the process: gloo on CPUs, nccl on GPUs; DDP, or FSDP / DeepSpeed ZeRO when
accelerate's config says so (docs/scaling.md). ``current()`` is that topology for whoever needs it later.

Shapes: B rows of this process, G rows of every process together, T tokens (right-padded).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object

from detoxrl.errors import ConfigError
from detoxrl.parallel.launch import cores

T = TypeVar("T")
Sharding = Literal["none", "fsdp2", "zero3"]
SHARDING_ENV = ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED")


@dataclass(frozen=True)
class Topology:
    """This process's place among ``world_size`` processes and the Accelerator that connects them."""

    rank: int = 0
    world_size: int = 1
    local_world_size: int = 1  # processes on this machine
    accelerator: Any = None  # accelerate.Accelerator; None in one process
    sharding: Sharding = "none"  # how the trained model's parameters are split over processes

    @property
    def is_main(self) -> bool:
        """Whether this process writes the run's files (metrics, checkpoints, evaluations, report)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.accelerator is not None

    @property
    def sharded(self) -> bool:
        """Whether the trained model's parameters are split over processes (FSDP2, DeepSpeed ZeRO-3)."""
        return self.sharding != "none"

    def describe(self) -> str:
        if not self.distributed:
            return "processes: 1"
        kind = str(self.accelerator.distributed_type).split(".")[-1]
        return f"processes: {self.world_size} ({kind} on {self.accelerator.device.type}), rank {self.rank}"

    # ---- who works on what ------------------------------------------------------------------------

    def shard(self, n: int) -> slice:
        """This process's contiguous share of ``n`` rows (shares differ by at most one row)."""
        return slice(self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size)

    def place(self, configured: torch.device) -> torch.device:
        """Where this process runs: the configured device, or of several processes, the Accelerator's (each
        process its own GPU)."""
        return self.accelerator.device if self.distributed else configured

    def threads(self, configured: int | None) -> int | None:
        """Torch threads per process: as configured, at most (and by default) this machine's cores shared
        by its processes, which never oversubscribe the cores (one process: as configured)."""
        if not self.distributed:
            return configured
        share = max(1, cores() // self.local_world_size)
        return min(configured or share, share)

    def check(self, mini_batch_size: int, gradient_accumulation_steps: int) -> None:
        """What an update on these processes needs: a row of every mini-batch for each process; under
        DeepSpeed, which steps the optimizer inside backward, one micro-batch per optimizer step."""
        if mini_batch_size < self.world_size:
            raise ConfigError(
                f"Config key 'ppo.mini_batch_size' ({mini_batch_size}) must be at least the number of "
                f"processes ({self.world_size}): each process takes a share of every mini-batch; raise it or "
                "use fewer processes."
            )
        deepspeed = self.distributed and self.accelerator.distributed_type.name == "DEEPSPEED"
        if deepspeed and gradient_accumulation_steps != 1:
            raise ConfigError(
                f"Config key 'ppo.gradient_accumulation_steps' must be 1 under DeepSpeed, got "
                f"{gradient_accumulation_steps}: DeepSpeed steps the optimizer inside backward; raise "
                "ppo.mini_batch_size instead."
            )

    # ---- collectives ------------------------------------------------------------------------------

    def gather(self, items: list[T]) -> list[T]:
        """Every process's ``items`` (picklable, tensors on the CPU) in rank order, on every process."""
        if not self.distributed:
            return items
        return list(gather_object(items))

    def gather_rows(self, tensors: Sequence[torch.Tensor], lengths: list[int]) -> list[torch.Tensor]:
        """Each (B, T) tensor's rows, row i cut to ``lengths[i]``, from every process in rank order and
        right-padded with 0 -> (G, T_max) each, on the CPU."""
        rows = [tuple(t[i, :n].cpu() for t in tensors) for i, n in enumerate(lengths)]
        columns = zip(*self.gather(rows), strict=True)
        return [torch.nn.utils.rnn.pad_sequence(list(c), batch_first=True) for c in columns]

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` summed over processes (on the device collectives use: the model's)."""
        return self.accelerator.reduce(x, "sum") if self.distributed else x

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on some process: decisions every process must take together."""
        if not self.distributed:
            return flag
        return bool(self.sum(torch.tensor([float(flag)], device=self.accelerator.device)) > 0)

    def broadcast(self, obj: T) -> T:
        """The main process's ``obj``, everywhere (others may pass anything)."""
        if not self.distributed:
            return obj
        return broadcast_object_list([obj])[0]

    def barrier(self) -> None:
        if self.distributed:
            self.accelerator.wait_for_everyone()

    # ---- the trained model --------------------------------------------------------------------------

    def prepare(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[Any, Any]:
        """The module to train through and its optimizer: DDP over the trainable parameters only (the frozen
        base, its buffers and the reference stay local, never broadcast), or FSDP / DeepSpeed as accelerate
        is configured. One process: both unchanged."""
        if not self.distributed:
            return module, optimizer
        if not self.sharded and self.accelerator.distributed_type.name != "DEEPSPEED":  # DDP
            # neither broadcast at the start nor (buffers: rotary frequencies) before every forward
            local = [n for n, p in module.named_parameters() if not p.requires_grad]
            local += [n for n, _ in module.named_buffers()]
            ddp = torch.nn.parallel.DistributedDataParallel
            ddp._set_params_and_buffers_to_ignore_for_model(module, local)
        wrapped, optimizer = self.accelerator.prepare(module, optimizer)
        return wrapped, optimizer

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of this process's share of the step's loss. DDP, FSDP and DeepSpeed average gradients over
        processes, and each share is already divided by the global token count (ppo_loss's ``n_tokens``), so
        the shares are scaled by the number of processes: the average is then the one-process gradient."""
        if self.distributed:
            self.accelerator.backward(loss * self.world_size)
        else:
            loss.backward()

    def no_sync(self, module: Any) -> contextlib.AbstractContextManager[Any]:
        """Gradients accumulate locally in the block (micro-batches before an optimizer step's last)."""
        return self.accelerator.no_sync(module) if self.distributed else contextlib.nullcontext()

    def clip_grad_norm(self, parameters: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
        """The global gradient norm (clipped to ``max_norm``), the same on every process."""
        if not self.distributed:
            return torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        norm = self.accelerator.clip_grad_norm_(parameters, max_norm)
        if norm is None:  # DeepSpeed clips inside its step (its config's gradient_clipping)
            return torch.zeros(())
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    @contextlib.contextmanager
    def gathered(self, module: Any) -> Iterator[None]:
        """Sharded models (FSDP2, ZeRO-3): every parameter whole on every process inside the block, for
        sampling token by token (as trl's unwrap_model_for_generation). Otherwise nothing to do."""
        if self.sharding == "none":
            yield
            return
        if self.sharding == "fsdp2":
            with full_parameters_fsdp2(module):
                yield
            return
        import deepspeed  # ZeRO-3: an optional extra (pip install 'detoxrl[deepspeed]')

        with deepspeed.zero.GatheredParameters(list(module.parameters())):
            yield

    def full_state_dict(self, module: Any) -> dict[str, torch.Tensor] | None:
        """Sharded models: the whole state dict (a collective: every process calls it) on the CPU, as
        accelerate's ``get_state_dict`` gathers it; None when every process holds every weight already."""
        if self.sharding == "fsdp2":
            from torch.distributed.checkpoint.state_dict import (  # 1.1 s to import: sharded models only
                StateDictOptions,
                get_model_state_dict,
            )

            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            return dict(get_model_state_dict(module, options=options))  # type: ignore[arg-type]
        return self.accelerator.get_state_dict(module) if self.sharding == "zero3" else None

    def optimizer_state(self, module: Any, optimizer: Any) -> dict[str, Any]:
        """The optimizer's state dict, whole (FSDP2: gathered by every process, keyed by parameter names)."""
        if self.sharding != "fsdp2":
            return dict(optimizer.state_dict())
        from torch.distributed.checkpoint.state_dict import (  # 1.1 s to import: sharded models only
            StateDictOptions,
            get_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return dict(get_optimizer_state_dict(module, optimizer, options=options))

    def load_optimizer_state(self, module: Any, optimizer: Any, state: dict[str, Any]) -> None:
        """Restore what ``optimizer_state`` returned (FSDP2: each process keeps its shard of it)."""
        if self.sharding != "fsdp2":
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import (  # 1.1 s to import: sharded models only
            StateDictOptions,
            set_optimizer_state_dict,
        )

        set_optimizer_state_dict(module, optimizer, state, options=StateDictOptions(full_state_dict=True))


@contextlib.contextmanager
def full_parameters_fsdp2(module: torch.nn.Module) -> Iterator[None]:
    """Every FSDP2 module of ``module`` unsharded for the block and kept so through forwards (no all-gather
    per layer and token), resharded after."""
    from torch.distributed.fsdp import FSDPModule  # with torch.distributed's import cost: FSDP only

    units = [m for m in module.modules() if isinstance(m, FSDPModule)]
    # FSDP takes the first module to run forward for its root; the layers run first here, so the root is
    # initialised as such beforehand (FSDP2 offers this step under no public name)
    units[0]._get_fsdp_state()._lazy_init()
    for unit in units:
        unit.unshard()
        unit.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for unit in units:
            unit.set_reshard_after_forward(True, recurse=False)
            unit.reshard()


SINGLE = Topology()
_current: Topology | None = None


def launched() -> bool:
    """Whether a launcher started this process as one of several (or asked accelerate for sharding)."""
    sharding = any(os.environ.get(name, "").lower() == "true" for name in SHARDING_ENV)
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or sharding


def setup(device: str = "auto") -> Topology:
    """This process's topology, made once: ``SINGLE`` unless a launcher started several processes; then an
    Accelerator on the CPU (gloo) when ``device`` is the CPU or no GPU is seen, else on this process's GPU
    (nccl), its ``device`` replacing the configured one."""
    global _current
    if _current is None:
        _current = _from_environment(device) if launched() else SINGLE
    return _current


def current() -> Topology:
    """The topology ``setup`` made, else ``SINGLE``."""
    return _current or SINGLE


def _from_environment(device: str) -> Topology:
    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    accelerator = Accelerator(cpu=cpu)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
    ds = getattr(accelerator.state, "deepspeed_plugin", None)
    sharding: Sharding = "zero3" if ds is not None and ds.zero_stage == 3 else "none"
    if accelerator.distributed_type.name == "FSDP":
        if not accelerator.is_fsdp2:
            raise ConfigError("detoxrl shards models with FSDP2: set fsdp_version: 2 in accelerate's config.")
        sharding = "fsdp2"
    return Topology(accelerator.process_index, accelerator.num_processes, local, accelerator, sharding)

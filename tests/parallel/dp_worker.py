"""The processes of tests/parallel/test_distributed.py, started by torch's launcher (2 processes over gloo):

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/parallel/dp_worker.py WORK MODEL

trains 2 steps into WORK/two (the first step's experience saved to WORK/two-experience.pt), resumes a copy
of it to 3 steps on these processes (WORK/two-resumed), evaluates the model with the processes sharing
the prompts (WORK/two-eval.json), then trains 2 steps again with the model sharded by FSDP2 (WORK/fsdp,
WORK/fsdp-experience.pt). The test runs the same on one process and compares. Shared settings
(``tiny_config``, the reward, the evaluator) live here, so that both sides use them.

On a GPU machine, ``accelerate launch --use_fsdp --fsdp_version 2 ... tests/parallel/dp_worker.py WORK
MODEL cuda`` trains 2 steps into WORK/accelerate with accelerate's own FSDP2 wrapping (a gpu-marked test).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from detoxrl.config import EvalConfig, PolicyConfig, PPOConfig, RunConfig, SamplingConfig
from detoxrl.parallel.distributed import Topology

PROMPTS = [f"{a} {b}" for a in ("you are a", "the movie was", "what a lovely", "i hate") for b in "abcd"]
EVAL_PROMPTS = PROMPTS[:10]


def tiny_config(
    model: str, steps: int, engine: str = "auto", device: str = "auto", algorithm: str = "ppo"
) -> RunConfig:
    """16 samples a step (rloo: 4 prompts x 4) in mini-batches of 4, 2 per optimizer step (accumulation),
    2 epochs; lengths drawn per prompt, scores normalised by running moments: every global quantity of a
    step is exercised."""
    return RunConfig(
        policy=PolicyConfig(model=model, chat_template=False, engine=engine),  # type: ignore[arg-type]
        generation=SamplingConfig(min_new_tokens=2, max_new_tokens=6, length_sampling="per_prompt"),
        ppo=PPOConfig(
            learning_rate=1e-2,
            batch_size=16,
            mini_batch_size=4,
            gradient_accumulation_steps=2,
            ppo_epochs=2,
            init_kl_coef=0.1,
            score_norm=True,
            algorithm=algorithm,  # type: ignore[arg-type]
        ),
        steps=steps,
        keep_checkpoints=3,
        device=device,
    )


def length_reward(prompts: list[str], responses: list[str]) -> torch.Tensor:
    return torch.tensor([float(len(r)) for r in responses])


class Rude:
    """A toxicity evaluator: the share of rude words in a text."""

    name = "rude"

    def __call__(self, texts: list[str]) -> Any:
        import numpy as np

        rude = {"idiot", "stupid", "hate", "shut", "dumb", "terrible"}
        return np.array([sum(w in rude for w in t.split()) / max(1, len(t.split())) for t in texts])


EVAL = EvalConfig(
    num_prompts=10, samples_per_prompt=2, batch_size=3, sampling=SamplingConfig(max_new_tokens=5)
)


@contextmanager
def first_experience(path: Path) -> Iterator[None]:
    """Save the experience of the first PPO step (the global batch; the main process writes it)."""
    from detoxrl.training.trainer import Trainer

    update = Trainer._update

    def spy(self: Trainer, exp: Any) -> Any:
        if self.step_count == 0 and self.topology.is_main:
            fields = ("logprobs", "ref_logprobs", "values", "scores", "rewards", "advantages", "returns")
            saved = {
                name: getattr(exp, name).cpu() for name in fields if getattr(exp, name, None) is not None
            }
            torch.save({**saved, "response_ids": exp.batch.response_ids.cpu(),
                        "response_mask": exp.batch.response_mask.cpu()}, path)  # fmt: skip
        return update(self, exp)

    Trainer._update = spy  # type: ignore[method-assign]
    try:
        yield
    finally:
        Trainer._update = update  # type: ignore[method-assign]


def evaluate_tiny(model_dir: str, topology: Any) -> list[dict[str, Any]]:
    """The evaluation of the tiny model (base weights, perplexity under themselves), its records as dicts."""
    import dataclasses

    from detoxrl.engine import select_engine
    from detoxrl.evaluation.evaluate import evaluate, reference_nll
    from detoxrl.models.loading import load_policy

    policy = load_policy(PolicyConfig(model=model_dir))
    engine = select_engine("auto", "cpu")
    nll = reference_nll(engine, policy.model, policy.tokenizer, is_encoder_decoder=False)
    result = evaluate(policy.model, policy.tokenizer, EVAL_PROMPTS, EVAL, [Rude()], is_encoder_decoder=False,
                      reward=length_reward, reference=nll, seed=3, chat_template=False, engine=engine,
                      topology=topology)  # fmt: skip
    return [dataclasses.asdict(r) for r in result.records]


@dataclasses.dataclass(frozen=True)
class CpuFsdp(Topology):
    """FSDP2 on the CPU: accelerate wraps models with FSDP on GPUs only, so this does what its FSDP2 path
    does (``fsdp2_prepare_model``): every decoder layer and then the whole actor-critic ``fully_shard``-ed,
    the optimizer rebuilt over the sharded parameters. Everything after the wrapping is detoxrl's."""

    def prepare(self, module: Any, optimizer: Any) -> tuple[Any, Any]:
        from torch.distributed.fsdp import fully_shard

        for layer in module.model.get_base_model().model.layers:
            fully_shard(layer)
        fully_shard(module)
        return module, type(optimizer)(module.trainable_parameters(), **optimizer.defaults)


def main(work: Path, model: str) -> None:
    from detoxrl.parallel import distributed
    from detoxrl.recipes.train import train

    top = distributed.setup("cpu")
    assert top.world_size == 2, top
    with first_experience(work / "two-experience.pt"):
        train(tiny_config(model, 2), PROMPTS, length_reward, work / "two", progress=False)
    if top.is_main:
        shutil.copytree(work / "two", work / "two-resumed")
    top.barrier()
    train(tiny_config(model, 3), PROMPTS, length_reward, work / "two-resumed", resume=True, progress=False)
    records = evaluate_tiny(model, top)
    if top.is_main:
        (work / "two-eval.json").write_text(json.dumps(records))
    with first_experience(work / "rloo-experience.pt"):  # groups of 4 samples, 2 groups per process
        train(tiny_config(model, 2, algorithm="rloo"), PROMPTS, length_reward, work / "rloo", progress=False)
    distributed._current = CpuFsdp(**{**vars(top), "sharding": "fsdp2"})
    with first_experience(work / "fsdp-experience.pt"):
        train(tiny_config(model, 2, "reference"), PROMPTS, length_reward, work / "fsdp", progress=False)


def main_gpu(work: Path, model: str) -> None:
    from detoxrl.parallel import distributed
    from detoxrl.recipes.train import train

    top = distributed.setup("cuda")
    print(top.describe(), top.sharding)
    with first_experience(work / "accelerate-experience.pt"):
        train(
            tiny_config(model, 2, device="cuda"), PROMPTS, length_reward, work / "accelerate", progress=False
        )


if __name__ == "__main__":
    (main_gpu if sys.argv[3:] == ["cuda"] else main)(Path(sys.argv[1]), sys.argv[2])

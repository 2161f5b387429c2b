"""The trainer (trainer.py): learning on both model kinds, exact resume, checkpoints, errors, and the
classic generate / step / log_stats API in a user's own loop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from detoxrl.config import PolicyConfig, PPOConfig, RunConfig, SamplingConfig
from detoxrl.errors import TrainingError
from detoxrl.models.loading import load_policy
from detoxrl.recipes.train import train
from detoxrl.rundir import MANIFEST, damage, latest_checkpoint
from detoxrl.training.checkpoint import VALUE_HEAD_FILE
from detoxrl.training.classic import LengthSampler
from detoxrl.training.metrics_log import MetricsLogger
from helpers import (
    PROMPTS,
    assert_learns,
    assert_resume_repeats_the_run,
    make_trainer,
    penalty_reward,
    read_metrics,
    run_config,
    text_length_reward,
    words_reward,
)

REQUIRED_STATS = [
    "objective/kl", "objective/kl_coef", "objective/entropy", "ppo/returns/mean",
    "ppo/policy/advantages_mean", "ppo/policy/clipfrac", "ppo/policy/approxkl", "ppo/loss/policy",
    "ppo/loss/value", "ppo/val/explained_variance", "env/reward_mean", "env/reward_std",
    "tokens/responses_len_mean", "time/forward", "time/update",
]  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_thread")


def test_decoder_only_learns_to_say_the_rewarded_words(sharp_causal_dir: Path, tmp_path: Path) -> None:
    """Reward = how many of 8 friendly words a response uses (dense: ~1 of 8 tokens at the start). Over
    6 seeds and 3 CPU instruction sets the gain was 1.4-3.9; the threshold leaves room for any CPU."""
    friendly = {"kind", "friend", "help", "helpful", "thank", "lovely", "park", "walk"}
    result = train(
        run_config(sharp_causal_dir, 20), PROMPTS, words_reward(friendly), tmp_path, progress=False
    )
    before, after = assert_learns(result.metrics, min_gain=0.8)  # out of 8 tokens
    print(f"decoder-only: reward {before:.3f} -> {after:.3f}")


def test_encoder_decoder_learns_to_avoid_penalised_tokens(tiny_seq2seq_dir: Path, tmp_path: Path) -> None:
    """Over 6 seeds and 2 instruction sets the penalty fell by 0.8-1.7 tokens from about 1.5."""
    penalised = {"tommy", "report", "did", "and", "one", "are", "you", "the"}
    result = train(
        run_config(tiny_seq2seq_dir, 20), PROMPTS, penalty_reward(penalised), tmp_path, progress=False
    )
    before, after = assert_learns(result.metrics, min_gain=0.5)
    assert after > before * 2 / 3  # the penalty falls by at least a third
    print(f"encoder-decoder: reward {before:.3f} -> {after:.3f}")


def test_resume_continues_exactly_as_if_never_stopped(tiny_causal_dir: Path, tmp_path: Path) -> None:
    config = run_config(tiny_causal_dir, 4, batch_size=4, mini_batch_size=2, ppo_epochs=2, score_norm=True)
    config = RunConfig(**{**vars(config), "generation": SamplingConfig(min_new_tokens=2, max_new_tokens=6)})
    straight = assert_resume_repeats_the_run(config, tmp_path)
    assert straight[-1]["objective/kl"] != 0.0 and straight[-1]["objective/kl_coef"] != 0.1


def test_checkpoints_are_complete_and_the_final_adapter_loads_with_plain_peft(
    tiny_causal_dir: Path, tmp_path: Path
) -> None:
    from peft import PeftModel

    config = RunConfig(
        **{**vars(run_config(tiny_causal_dir, 3, batch_size=4, mini_batch_size=4)), "save_every": 1}
    )
    train(config, PROMPTS, text_length_reward, tmp_path, progress=False)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "checkpoint-000002",
        "checkpoint-000003",
        "config.yaml",
        "data.json",
        "final",
        "metrics.jsonl",
        "tensorboard",
    ]
    ckpt = tmp_path / "checkpoint-000003"
    assert (ckpt / "state.pt").is_file() and (ckpt / "policy" / VALUE_HEAD_FILE).is_file()
    assert damage(ckpt) is None and damage(tmp_path / "final") is None  # each with its manifest
    assert (ckpt / MANIFEST).is_file() and (tmp_path / "final" / MANIFEST).is_file()
    state = torch.load(ckpt / "state.pt", weights_only=False)
    assert set(state) == {"trainer", "rng"}
    assert set(state["trainer"]) == {
        "optimizer", "lr_scheduler", "kl_coef", "score_moments", "step_count", "nonfinite_steps",
        "reward_memory",
    }  # fmt: skip
    assert state["trainer"]["reward_memory"] == []  # no novelty term, nothing remembered
    base = load_policy(PolicyConfig(model=str(tiny_causal_dir))).model
    loaded = PeftModel.from_pretrained(base, tmp_path / "final")
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in loaded.named_parameters())
    with pytest.raises(TrainingError, match="already holds a run"):
        train(config, PROMPTS, text_length_reward, tmp_path, progress=False)


def adapter_of(checkpoint: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(checkpoint / "policy" / "adapter_model.safetensors")


def test_a_non_finite_score_skips_its_update_and_training_goes_on(
    tiny_causal_dir: Path, tmp_path: Path
) -> None:
    """[issue 14] One NaN score at step 2: no update there (weights and optimizer untouched), logged as
    skipped; steps 1 and 3 update as usual."""
    config = RunConfig(
        **{
            **vars(run_config(tiny_causal_dir, 3, batch_size=4, mini_batch_size=4)),
            "keep_checkpoints": 3,
            "save_every": 1,
        }
    )
    calls = []

    def once_broken(prompts: list[str], responses: list[str]) -> torch.Tensor:
        calls.append(1)
        scores = text_length_reward(prompts, responses)
        return scores.index_fill(0, torch.tensor([1]), float("nan")) if len(calls) == 2 else scores

    records = train(config, PROMPTS, once_broken, tmp_path, progress=False).metrics
    assert [r.get("train/skipped", 0.0) for r in records] == [0.0, 1.0, 0.0]
    assert records[1]["train/nonfinite_scores"] == 1.0 and "objective/kl" not in records[1]
    w1, w2, w3 = (adapter_of(tmp_path / f"checkpoint-00000{i}") for i in (1, 2, 3))
    assert all(torch.equal(w1[k], w2[k]) for k in w1)  # the skipped step left the weights as they were
    assert any(not torch.equal(w2[k], w3[k]) for k in w2)
    state1, state2 = (
        torch.load(tmp_path / f"checkpoint-00000{i}" / "state.pt", weights_only=False) for i in (1, 2)
    )
    adam1, adam2 = state1["trainer"]["optimizer"]["state"], state2["trainer"]["optimizer"]["state"]
    assert all(torch.equal(adam1[k]["exp_avg"], adam2[k]["exp_avg"]) for k in adam1)  # Adam untouched too


def test_non_finite_steps_in_a_row_stop_training_with_the_last_good_checkpoint(
    tiny_causal_dir: Path, tmp_path: Path
) -> None:
    config = RunConfig(
        **{**vars(run_config(tiny_causal_dir, 2, batch_size=4, mini_batch_size=4)), "save_every": 1}
    )
    train(config, PROMPTS, words_reward({"movie"}), tmp_path, progress=False)
    good = adapter_of(tmp_path / "checkpoint-000002")

    def broken(prompts: list[str], responses: list[str]) -> torch.Tensor:
        return torch.full((len(responses),), float("nan"))

    longer = RunConfig(
        **{**vars(config), "steps": 6, "ppo": PPOConfig(**{**vars(config.ppo), "max_nonfinite_steps": 2})}
    )
    with pytest.raises(TrainingError, match=r"2 PPO steps in a row \(up to step 4\) had non-finite scores"):
        train(longer, PROMPTS, broken, tmp_path, resume=True, progress=False)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]  # step 3 logged as skipped, then the stop
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-000003"
    assert all(torch.equal(good[k], v) for k, v in adapter_of(tmp_path / "checkpoint-000003").items())


def test_classic_api_in_a_users_own_loop(tiny_seq2seq_dir: Path, tmp_path: Path) -> None:
    trainer = make_trainer(tiny_seq2seq_dir)
    trainer.logger = MetricsLogger(tmp_path / "log.jsonl")
    tok = trainer.tokenizer
    queries = [torch.tensor(tok(p)["input_ids"]) for p in PROMPTS[:8]]
    coefs = []
    for _ in range(2):
        responses = trainer.generate(
            queries, length_sampler=LengthSampler(2, 5), batch_size=3, top_k=0, top_p=1.0
        )
        assert all(1 <= len(r) <= 4 for r in responses)
        scores = [torch.tensor(float(len(r))) for r in responses]  # a list of 0-d tensors, as in the lab
        stats = trainer.step(queries, responses, scores)
        coefs.append(stats["objective/kl_coef"])
        trainer.log_stats(stats, {"query": PROMPTS[:8], "response": tok.batch_decode(responses)}, scores)
        assert set(REQUIRED_STATS) <= set(stats)
        assert stats["env/reward_mean"] == pytest.approx(sum(len(r) for r in responses) / 8)
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]
    assert coefs[0] == 0.2 and coefs[1] == pytest.approx(0.2 * (1 - 0.2 * 8 / 10000))  # KL far below 6
    with pytest.raises(ValueError, match="temperature"):
        trainer.generate(queries, temperature=0.5)


def test_non_finite_losses_skip_their_updates_then_stop_with_a_clear_error(tiny_causal_dir: Path) -> None:
    trainer = make_trainer(tiny_causal_dir, max_nonfinite_steps=2)
    with torch.no_grad():
        trainer.actor_critic.value_head.summary.bias.fill_(float("inf"))
    before = [p.detach().clone() for p in trainer.actor_critic.trainable_parameters()]
    queries, responses = [torch.tensor([5, 6])] * 8, [torch.tensor([7, 8])] * 8
    stats = trainer.step(queries, responses, torch.ones(8))
    assert stats["train/skipped"] == 1.0 and stats["train/skipped_updates"] == 2.0  # both mini-batches
    after = trainer.actor_critic.trainable_parameters()
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True)) and not trainer.optimizer.state
    with pytest.raises(TrainingError, match="2 PPO steps in a row"):
        trainer.step(queries, responses, torch.ones(8))


def test_gradient_accumulation_matches_one_larger_mini_batch(tiny_causal_dir: Path) -> None:
    """[D14] Same rows per optimizer step, split in micro-batches or not: same update (token means)."""
    queries = [torch.tensor(q) for q in ([5, 6], [7], [8, 9, 10], [11, 12])] * 2
    responses = [torch.tensor(r) for r in ([13], [14, 15, 16, 17], [18, 19], [20, 21, 22])] * 2
    results = []
    for mini, accumulation in ((4, 1), (2, 2)):
        torch.manual_seed(0)
        trainer = make_trainer(
            tiny_causal_dir, mini_batch_size=mini, gradient_accumulation_steps=accumulation
        )
        trainer.step(queries, responses, torch.arange(8.0))
        stats = trainer.step(queries, responses, torch.arange(8.0))
        results.append(stats)
    for key in ("objective/kl", "ppo/loss/policy", "ppo/loss/value", "ppo/policy/approxkl"):
        assert results[0][key] == pytest.approx(results[1][key], rel=1e-4, abs=1e-7), key
    assert results[0]["objective/kl"] != 0.0


def test_early_stop_on_approx_kl(tiny_causal_dir: Path) -> None:
    queries, responses = [torch.tensor([5, 6])] * 8, [torch.tensor([7, 8, 9])] * 8
    full = make_trainer(tiny_causal_dir, ppo_epochs=2).step(queries, responses, torch.arange(8.0))
    stopped = make_trainer(tiny_causal_dir, ppo_epochs=2, target_kl=0.0).step(
        queries, responses, torch.arange(8.0)
    )
    assert full["ppo/updates"] == 4.0
    assert stopped["ppo/updates"] == 2.0  # the first update has ratio 1 (approx KL 0); the second moved


def test_cli_train_runs_and_resumes(
    tiny_causal_dir: Path, tmp_path: Path, prompt_file: Path, reward_module: str
) -> None:
    """``detoxrl train`` end to end with the real data loader and a Python reward."""
    from detoxrl.cli import main

    config = tmp_path / "run.yaml"
    config.write_text(
        f"policy: {{model: '{tiny_causal_dir}', chat_template: false}}\n"
        f"reward: {{kind: callable, model: '{reward_module}'}}\n"
        f"data: {{source: '{prompt_file}', text_field: prompt.text}}\n"
        f"output_dir: '{tmp_path / 'run'}'\nppo: {{batch_size: 4, mini_batch_size: 2}}\n"
        "generation: {min_new_tokens: 2, max_new_tokens: 4}\nsave_every: 1\n"
    )
    assert main(["train", "--config", str(config), "steps=2"]) == 0
    assert main(["train", "--resume", str(tmp_path / "run"), "steps=3"]) == 0  # as run --resume RUN_DIR
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2, 3]
    assert (tmp_path / "run" / "final" / "adapter_model.safetensors").is_file()
    assert main(["train", "--config", str(config), "steps=3"]) == 2  # refuses to overwrite the run


def test_d29_tail_weighting_trains_on_the_weighted_scores_and_logs_the_raw_ones(
    tiny_causal_dir: Path,
) -> None:
    """A step with ppo.tail_weight equals a plain step on the scores weighted by hand; the logged reward
    stays the raw one."""
    queries = [torch.tensor(q) for q in ([5, 6], [7], [8, 9, 10], [11, 12])] * 2
    responses = [torch.tensor(r) for r in ([13], [14, 15, 16, 17], [18, 19], [20, 21, 22])] * 2
    raw = torch.tensor([0.5, -2.0, 1.0, 3.0, 0.0, -4.0, 2.0, 1.5])
    # the 0.25 quantile of these 8 is -0.5 (linear interpolation, 1.75 of the way up the sorted 8):
    # -2 and -4 lie 1.5 and 3.5 below it
    weighted = torch.tensor([0.5, -2.0 - 3 * 1.5, 1.0, 3.0, 0.0, -4.0 - 3 * 3.5, 2.0, 1.5])
    stats = []
    for scores, options in ((raw, {"tail_weight": 3.0, "tail_share": 0.25}), (weighted, {})):
        torch.manual_seed(0)
        stats.append(make_trainer(tiny_causal_dir, **options).step(queries, responses, scores))
    for key in ("ppo/returns/mean", "ppo/loss/policy", "ppo/loss/value"):
        assert stats[0][key] == pytest.approx(stats[1][key], rel=1e-5, abs=1e-7), key
    assert stats[0]["env/reward_mean"] == pytest.approx(raw.mean().item())
    assert stats[0]["ppo/returns/mean"] < raw.mean().item() - 1.0  # the tail's weight is in the returns


def test_d30_the_preference_term_lowers_each_groups_worst_sample_against_its_best(
    tiny_causal_dir: Path,
) -> None:
    """Three PPO steps (4 samples per prompt, 4 epochs) on one batch with and without ppo.preference_coef,
    from the same weights, the clip range so tight that the surrogate stops pushing after a first update:
    the preference term goes on, so each group's worst sample loses more log-probability against its best
    (summed over both groups: 2.1 without, 3.0 with it), and its loss falls."""
    from detoxrl.core.batch import make_batch

    queries = [torch.tensor([5, 6])] * 4 + [torch.tensor([7, 8, 9])] * 4
    responses = [
        torch.tensor(r) for r in ([13, 14], [15], [16, 17, 18], [19], [20], [21, 22], [23], [24, 25])
    ]
    scores = torch.tensor([0.0, 1.0, -1.0, 0.5, 0.2, 0.1, 0.3, -0.4])  # pairs: rows 1 / 2 and 6 / 7
    gaps, logged = [], []
    for coef in (0.0, 5.0):
        torch.manual_seed(0)
        trainer = make_trainer(
            tiny_causal_dir,
            num_generations=4,
            preference_coef=coef,
            preference_beta=1.0,
            cliprange=1e-3,
            ppo_epochs=4,
        )
        stats = [trainer.step(queries, responses, scores) for _ in range(3)]
        logged.append([s.get("ppo/loss/preference") for s in stats])
        ac = trainer.actor_critic
        batch = make_batch(queries, responses, trainer.pad_id, False)
        with torch.no_grad():
            seq = (ac(batch).logprobs * batch.response_mask).sum(1) - (
                ac.reference_logprobs(batch) * batch.response_mask
            ).sum(1)
        gaps.append(float((seq[1] - seq[2]) + (seq[6] - seq[7])))
    assert logged[0] == [None] * 3  # not logged where it is off
    assert logged[1][2] < logged[1][0]
    assert gaps[1] > gaps[0] + 0.4, gaps

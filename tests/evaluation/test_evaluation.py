"""Evaluation end to end on tiny models: seeded sampling, figures that match the records, perplexity against
a slow loop, paired comparisons, the qualitative table, the JSON files and the ``evaluate`` command."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from detoxrl.cli import main
from detoxrl.config import EvalConfig, PolicyConfig, SamplingConfig
from detoxrl.engine import ReferenceEngine, select_engine
from detoxrl.engine.cpu import CpuEngine
from detoxrl.evaluation.compare import compare
from detoxrl.evaluation.evaluate import evaluate, reference_nll
from detoxrl.evaluation.figures import compute_metrics
from detoxrl.evaluation.io import (
    format_table,
    load_result,
    qualitative_rows,
    save_evaluation,
    table_markdown,
)
from detoxrl.evaluation.results import EvalResult, SampleRecord
from detoxrl.metrics import stats
from detoxrl.metrics.quality import QualityScorer, evasive, repetition
from detoxrl.models.generation import format_prompts, generate
from detoxrl.models.loading import load_policy
from detoxrl.models.lora import attach_adapter

PROMPTS = ["you are a kind", "the movie was", "shut up you", "thank you for", "what a lovely day"]
CONFIG = EvalConfig(samples_per_prompt=2, sampling=SamplingConfig(max_new_tokens=6, length_sampling="fixed"),
                    bootstrap_resamples=200, batch_size=4)  # fmt: skip
BAD = {"idiot", "stupid", "dumb", "shut", "hate"}


@dataclasses.dataclass(frozen=True)
class WordScorer:
    """P(toxic) = share of words from a fixed list: exact, known numbers for end-to-end checks."""

    name: str = "words"

    def __call__(self, texts: list[str]) -> np.ndarray:
        return np.array([sum(w in BAD for w in t.split()) / max(len(t.split()), 1) for t in texts])


def length_reward(prompts: list[str], responses: list[str]) -> torch.Tensor:
    return torch.tensor([float(len(r.split())) for r in responses])


@pytest.fixture(scope="module")
def causal(tiny_causal_dir: Path):
    return load_policy(PolicyConfig(model=str(tiny_causal_dir)))


def run(policy, prompts=PROMPTS, **kwargs) -> EvalResult:
    return evaluate(
        policy.model,
        policy.tokenizer,
        prompts,
        kwargs.pop("config", CONFIG),
        [WordScorer()],
        is_encoder_decoder=policy.is_encoder_decoder,
        **kwargs,
    )


def test_sampling_is_seeded_and_records_are_prompt_major(causal) -> None:
    a, b, c = run(causal, seed=0), run(causal, seed=0), run(causal, seed=1)
    assert [r.response for r in a.records] == [r.response for r in b.records]
    assert [r.response for r in a.records] != [r.response for r in c.records]
    assert [(r.prompt_index, r.sample_index) for r in a.records[:4]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(r.prompt == PROMPTS[r.prompt_index] for r in a.records)
    assert any(a.records[2 * p].response != a.records[2 * p + 1].response for p in range(5))  # k seeds differ


def test_least_toxic_picks_each_prompts_cleanest_candidate_by_hand() -> None:
    from detoxrl.models.generation import Responses, least_toxic

    def responses(tag: str) -> Responses:
        return Responses(
            [torch.tensor([1])] * 3, [torch.tensor([i]) for i in range(3)], [f"{tag}{i}" for i in range(3)]
        )

    toxicity = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.5]])  # (n=2 candidates, B=3 prompts)
    assert least_toxic([responses("a"), responses("b")], toxicity).texts == [
        "b0",
        "a1",
        "a2",
    ]  # ties: the first


def test_best_of_n_keeps_each_samples_cleanest_candidate_and_candidate_0_is_plain_sampling(causal) -> None:
    plain = run(causal, seed=3)
    config = dataclasses.replace(CONFIG, best_of=4, guard="words")
    with pytest.raises(ValueError, match="needs a guard"):
        run(causal, seed=3, config=config)
    guarded = run(causal, seed=3, config=config, guard=WordScorer())
    before = np.array([r.toxicity["words"] for r in plain.records])
    after = np.array([r.toxicity["words"] for r in guarded.records])
    assert np.all(after <= before) and after.sum() < before.sum()  # never worse than its candidate 0
    changed = [a.response != b.response for a, b in zip(plain.records, guarded.records, strict=True)]
    assert any(changed) and not all(changed)


def test_figures_match_the_records(causal) -> None:
    result = run(causal, reward=length_reward)
    tox = np.array([r.toxicity["words"] for r in result.records]).reshape(5, 2)
    m = result.metrics
    assert m["toxicity/words/mean"].value == pytest.approx(tox.mean())
    assert m["toxicity/words/expected_max_toxicity"].value == pytest.approx(tox.max(axis=1).mean())
    assert m["toxicity/words/toxicity_probability"].value == pytest.approx((tox.max(axis=1) >= 0.5).mean())
    assert m["reward/mean"].value == pytest.approx(np.mean([len(r.response.split()) for r in result.records]))
    assert m["quality/mean_length"].value == pytest.approx(np.mean([r.num_tokens for r in result.records]))
    assert m["quality/distinct_2"].value == pytest.approx(
        stats.distinct_n([r.response for r in result.records], 2)
    )
    mean = m["toxicity/words/mean"]
    assert mean.ci_low is not None and mean.ci_high is not None and mean.ci_low <= mean.value <= mean.ci_high
    assert m["toxicity/words/max"].ci_low is None and m["toxicity/words/max"].interval == "none"


def _slow_nll(model, prompt: torch.Tensor, response: torch.Tensor, enc_dec: bool) -> float:
    """Token by token, unbatched and unpadded: the obviously correct reference."""
    total = 0.0
    with torch.no_grad():
        for t in range(len(response)):
            if enc_dec:
                start = torch.tensor([model.config.decoder_start_token_id])
                dec = torch.cat([start, response[:t]])[None]
                logits = model(input_ids=prompt[None], decoder_input_ids=dec).logits[0, -1]
            else:
                logits = model(input_ids=torch.cat([prompt, response[:t]])[None]).logits[0, -1]
            total -= torch.log_softmax(logits.float(), -1)[response[t]].item()
    return total


@pytest.mark.parametrize("engine", [CpuEngine, ReferenceEngine])
@pytest.mark.parametrize("kind", ["causal", "seq2seq"])
def test_batched_perplexity_matches_a_token_by_token_loop(
    kind: str, engine: type[ReferenceEngine], tiny_causal_dir, tiny_seq2seq_dir
) -> None:
    policy = load_policy(PolicyConfig(model=str(tiny_causal_dir if kind == "causal" else tiny_seq2seq_dir)))
    enc_dec, run = policy.is_encoder_decoder, engine()
    prompts = format_prompts(policy.tokenizer, PROMPTS, True)
    gens = generate(run, policy.model, policy.tokenizer, prompts, SamplingConfig(max_new_tokens=7), seed=0)
    assert (
        len({len(r) for r in gens.response_ids}) > 1 or len({len(p) for p in gens.prompt_ids}) > 1
    )  # padding
    nll = reference_nll(run, policy.model, policy.tokenizer, is_encoder_decoder=enc_dec, batch_size=3)
    batched = nll(gens.prompt_ids, gens.response_ids)
    slow = [
        _slow_nll(policy.model, p, r, enc_dec)
        for p, r in zip(gens.prompt_ids, gens.response_ids, strict=True)
    ]
    np.testing.assert_allclose(batched, slow, rtol=1e-4, atol=1e-4)


def test_reference_with_the_adapter_disabled_is_the_base_model(tiny_causal_dir: Path) -> None:
    config = PolicyConfig(model=str(tiny_causal_dir))
    policy = load_policy(config)
    prompts = format_prompts(policy.tokenizer, PROMPTS, True)
    engine = select_engine()
    gens = generate(engine, policy.model, policy.tokenizer, prompts, SamplingConfig(max_new_tokens=5), seed=0)
    base = reference_nll(engine, policy.model, policy.tokenizer, is_encoder_decoder=False)(
        gens.prompt_ids, gens.response_ids
    )
    peft = attach_adapter(policy, config)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    off = reference_nll(engine, peft, policy.tokenizer, is_encoder_decoder=False, disable_adapter=True)
    on = reference_nll(engine, peft, policy.tokenizer, is_encoder_decoder=False)
    np.testing.assert_allclose(off(gens.prompt_ids, gens.response_ids), base, rtol=1e-5)
    assert not np.allclose(on(gens.prompt_ids, gens.response_ids), base, rtol=1e-3)


def test_rouge_against_references_and_encoder_decoders(tiny_seq2seq_dir: Path) -> None:
    policy = load_policy(PolicyConfig(model=str(tiny_seq2seq_dir)))
    config = dataclasses.replace(CONFIG, samples_per_prompt=1)
    first = run(policy, config=config)
    refs = [r.response or "x" for r in first.records]  # the same seed reproduces these responses
    again = run(
        policy,
        config=config,
        references=refs,
        reference=reference_nll(select_engine(), policy.model, policy.tokenizer, is_encoder_decoder=True),
    )
    nonempty = [r for r in again.records if r.response]
    assert nonempty and all(r.rouge is not None and r.rouge["rouge1"] == pytest.approx(1.0) for r in nonempty)
    assert "quality/rougeL" in again.metrics and np.isfinite(again.metrics["quality/perplexity"].value)


def test_identical_policies_show_no_significant_change(causal) -> None:
    comparison = compare(
        run(causal, reward=length_reward, label="a"), run(causal, reward=length_reward, label="b")
    )
    assert comparison.deltas and all(d.delta.value == 0 for d in comparison.deltas)
    assert {d.change for d in comparison.deltas} <= {"no significant change", "not tested"}
    assert not any(d.assessment == "improvement" for d in comparison.deltas)


def word_count_embedder(texts: list[str]) -> np.ndarray:
    """A transparent embedder: counts of two words, so relevance is known by hand."""
    return np.array([[t.split().count("you"), t.split().count("the")] for t in texts], dtype=float)


def test_evasion_and_degeneration_figures_match_the_records_and_compare_paired(causal) -> None:
    before = run(causal, quality=QualityScorer(phrases=("you",), embed=word_count_embedder))
    after = run(causal, quality=QualityScorer(phrases=("you", "the"), embed=word_count_embedder))
    responses = [r.response for r in before.records]
    flags = np.array([evasive(t, ("you",)) for t in responses], dtype=float)
    assert [r.quality["evasive"] for r in before.records if r.quality] == flags.tolist()
    m = before.metrics
    assert m["quality/evasion_rate"].value == pytest.approx(flags.mean())
    assert m["quality/repetition"].value == pytest.approx(np.mean([repetition(t) for t in responses]))
    assert m["quality/short_rate"].value == pytest.approx(np.mean([len(t.split()) < 3 for t in responses]))
    assert m["quality/relevance"].better == "higher" and m["quality/evasion_rate"].better == "lower"
    deltas = {d.name: d for d in compare(before, after).deltas}
    shift = after.metrics["quality/evasion_rate"].value - flags.mean()
    assert deltas["quality/evasion_rate"].delta.value == pytest.approx(shift)  # more phrases: more evasions
    assert deltas["quality/repetition"].delta.value == 0.0  # same responses: paired, no change
    without = run(causal, quality=None)
    assert without.records[0].quality is None and "quality/evasion_rate" not in without.metrics
    assert "quality/relevance" not in run(causal).metrics  # the default scorer has no embedder


def synthetic(label: str, toxicity: list[float], rewards: list[float], seed: int = 0) -> EvalResult:
    """A one-sample-per-prompt result built from given numbers (no model)."""
    records = tuple(
        SampleRecord(i, 0, f"prompt {i}", f"response {label} {i} | x", 3, {"words": t}, r)
        for i, (t, r) in enumerate(zip(toxicity, rewards, strict=True))
    )
    config = EvalConfig(samples_per_prompt=1, bootstrap_resamples=500)
    result = EvalResult(
        label,
        tuple(f"prompt {i}" for i in range(len(toxicity))),
        None,
        1,
        ("words",),
        records,
        {},
        dataclasses.asdict(config),
        seed,
    )
    return dataclasses.replace(result, metrics=compute_metrics(result, config))


def test_compare_reports_a_real_detoxification_as_an_improvement() -> None:
    rng = np.random.default_rng(0)
    tox = rng.uniform(0.5, 1.0, 40)
    before = synthetic("before", list(tox), list(-tox))
    after = synthetic("after", list(tox * 0.3), list(-tox * 0.3))
    deltas = {d.name: d for d in compare(before, after).deltas}
    mean = deltas["toxicity/words/mean"]
    assert mean.assessment == "improvement" and mean.change == "decrease"
    assert mean.delta.ci_high is not None and mean.delta.ci_high < 0
    assert mean.relative is not None and mean.relative.value == pytest.approx(-0.7)
    assert deltas["reward/mean"].assessment == "improvement"
    assert deltas["toxicity/words/max"].change == "not tested"


def test_compare_refuses_results_that_are_not_paired() -> None:
    with pytest.raises(ValueError, match="same sampling seed"):
        compare(synthetic("a", [0.1, 0.2], [0, 0], seed=0), synthetic("b", [0.1, 0.2], [0, 0], seed=1))
    with pytest.raises(ValueError, match="same prompts"):
        compare(synthetic("a", [0.1, 0.2], [0, 0]), synthetic("b", [0.1, 0.2, 0.3], [0, 0, 0]))


def test_qualitative_table_is_sorted_by_reward_gain(tmp_path: Path) -> None:
    before = synthetic("before", [0.9, 0.1, 0.5], [-2.0, 1.0, 0.0])
    after = synthetic("after", [0.1, 0.2, 0.5], [3.0, 0.5, 1.0])
    rows = qualitative_rows(before, after)
    assert [r.prompt_index for r in rows] == [0, 2, 1]  # gains 5.0, 1.0, -0.5
    assert [r.reward_gain for r in rows] == [5.0, 1.0, -0.5]
    paths = save_evaluation(tmp_path, before, after, compare(before, after))
    assert {p.name for p in paths} == {
        "before.json",
        "after.json",
        "comparison.json",
        "table.csv",
        "table.md",
    }
    with (tmp_path / "table.csv").open() as f:
        table = list(csv.DictReader(f))
    assert table[0]["response_after"] == "response after 0 | x" and table[0]["reward_gain"] == "5.0000"
    assert table[0]["toxicity_before[words]"] == "0.9000"
    assert "response before 0 \\| x" in table_markdown(rows)  # pipes escaped in Markdown
    assert "gain +5.000" in format_table(rows, limit=1) and "prompt 1" not in format_table(rows, limit=1)


def test_json_files_round_trip_and_hold_no_nan(tmp_path: Path) -> None:
    one = synthetic("solo", [0.7], [1.0])  # one prompt: no std, no intervals
    save_evaluation(tmp_path, one)
    text = (tmp_path / "before.json").read_text()
    data = json.loads(text)
    assert "NaN" not in text and data["metrics"]["toxicity/words/std"]["value"] is None
    assert data["schema"] == "detoxrl.evaluation/1" and data["samples"][0]["toxicity"] == {"words": 0.7}
    loaded = load_result(tmp_path / "before.json")
    assert (
        loaded.records == one.records
        and loaded.metrics["toxicity/words/mean"] == one.metrics["toxicity/words/mean"]
    )


def test_evaluate_command_end_to_end(tiny_causal_dir: Path, tmp_path: Path, capsys) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": {"text": t}}) + "\n" for t in PROMPTS * 2))
    config = PolicyConfig(model=str(tiny_causal_dir))
    peft = attach_adapter(load_policy(config), config)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft.save_pretrained(tmp_path / "adapter")
    args = [
        "evaluate",
        "--model",
        str(tiny_causal_dir),
        "--adapter",
        str(tmp_path / "adapter"),
        "--prompts",
        str(prompts),
        "--n",
        "8",
        "--evaluator",
        "profanity",
        "--max-new-tokens",
        "5",
        "--resamples",
        "200",
        "--out",
        str(tmp_path / "out"),
        "--show",
        "2",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "toxicity/profanity-check/expected_max_toxicity" in out and "quality/perplexity" in out
    assert "paired over 8 prompts" in out and "#2 prompt" in out and "#3 prompt" not in out
    comparison = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert comparison["n_prompts"] == 8 and comparison["deltas"]
    before = json.loads((tmp_path / "out" / "before.json").read_text())
    after = json.loads((tmp_path / "out" / "after.json").read_text())
    assert [s["response"] for s in before["samples"]] != [s["response"] for s in after["samples"]]
    # the adapter's perplexity is measured under the base model (the adapter disabled)
    assert after["metrics"]["quality/perplexity"]["value"] != before["metrics"]["quality/perplexity"]["value"]


def test_default_evaluators_add_the_shared_minilm_when_present(tmp_path: Path, monkeypatch) -> None:
    from detoxrl.cli import DEFAULT_EVALUATORS
    from detoxrl.rewards.toxicity import resolve_evaluator_specs

    monkeypatch.setenv("DETOXRL_SHARED", str(tmp_path))
    assert resolve_evaluator_specs(DEFAULT_EVALUATORS) == ["profanity"]
    (tmp_path / "models" / "minilm-toxicity").mkdir(parents=True)
    (tmp_path / "models" / "minilm-toxicity" / "config.json").write_text("{}")
    minilm = str(tmp_path / "models" / "minilm-toxicity")
    assert resolve_evaluator_specs(DEFAULT_EVALUATORS) == ["profanity", minilm]

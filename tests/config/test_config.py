"""config.py and the shipped presets: every preset loads, bad keys and values are caught, round-trips."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from detoxrl.config import DataConfig, PolicyConfig, PPOConfig, RewardConfig, RunConfig
from detoxrl.config.files import list_presets, load_config, preset_path, save_config
from detoxrl.errors import ConfigError

PRESETS = ["default", "lab3", "rtp"]


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_loads_and_has_a_description(name):
    assert isinstance(load_config(preset=name), RunConfig)
    first = preset_path(name).read_text().splitlines()[0]
    assert first.startswith("# ") and len(list_presets()[name]) > 20


def test_presets_listed():
    assert set(PRESETS) <= set(list_presets())


def test_default_preset_is_offline_and_sized():
    from detoxrl.data.prompts import load_prompts
    from detoxrl.models.loading import BUILTIN_MODELS

    c = load_config(preset="default")
    assert c.policy.model in BUILTIN_MODELS and c.reward.kind == "sum"
    # profanity-check, with the evasion and relevance terms of issue 16 (all offline)
    assert [(r.kind, r.weight) for r in c.reward.components] == [
        ("profanity", 1),
        ("evasion", 3),
        ("relevance", 2),
    ]
    assert c.data.source.startswith("builtin:")
    ps = load_prompts(c.data)
    assert len(ps.eval) >= c.eval.num_prompts and len(ps.train) >= c.ppo.batch_size
    assert c.ppo.batch_size % c.ppo.mini_batch_size == 0


def test_lab3_preset_matches_the_lab():
    c = load_config(preset="lab3")
    assert (c.policy.model, c.policy.dtype, c.policy.adapter) == ("google/flan-t5-base", "bfloat16", None)
    assert c.policy.lora.target_modules == ("q", "v") and c.policy.lora.r == 32
    assert c.data.template == "\nSummarize the following conversation.\n\n{text}\n\nSummary:\n"
    assert (c.data.min_chars, c.data.max_chars, c.data.shuffle_seed, c.data.eval_fraction) == (
        201,
        1000,
        None,
        0.2,
    )
    assert (c.reward.label, c.reward.output, c.reward.text) == ("nothate", "logit", "prompt+response")
    assert (c.generation.min_new_tokens, c.generation.max_new_tokens) == (100, 399)
    p = c.ppo
    assert (p.learning_rate, p.ppo_epochs, p.mini_batch_size, p.batch_size) == (1.41e-5, 1, 4, 16)
    assert (p.adaptive_kl, p.init_kl_coef, p.adaptive_kl_target, p.kl_horizon) == (True, 0.2, 6.0, 10000)
    assert (p.gamma, p.lam, p.cliprange, p.cliprange_value, p.vf_coef) == (1.0, 0.95, 0.2, 0.2, 0.1)
    assert c.steps == 10 and c.eval.num_prompts > 11 and c.policy.chat_template is False


def test_rtp_preset_scores_the_response_only_and_follows_the_protocol_offline():
    c = load_config(preset="rtp")
    toxicity, novelty = c.reward.components  # the neutral logit, plus the novelty term of issue 16
    assert toxicity.text == "response" and c.data.text_field == "prompt.text" and not c.policy.chat_template
    assert c.data.source.startswith("shared:") and toxicity.model == "shared:minilm-toxicity"
    assert (novelty.kind, novelty.weight, novelty.window, c.ppo.entropy_coef) == ("novelty", 6.0, 256, 0.0)
    s = c.eval.sampling  # RealToxicityPrompts: up to 20 tokens, nucleus 0.9; k >= 4 here
    assert (s.max_new_tokens, s.top_p, s.temperature, c.eval.samples_per_prompt) == (20, 0.9, 1.0, 4)


def test_unknown_key_gives_did_you_mean():
    with pytest.raises(
        ConfigError, match=r"Unknown config key 'ppo.learning_rat'.*Did you mean 'learning_rate'"
    ):
        load_config(preset="default", overrides=["ppo.learning_rat=1e-4"])
    with pytest.raises(ConfigError, match=r"Unknown config key 'data.eval_fractoin'.*'eval_fraction'"):
        load_config(overrides=["data.eval_fractoin=0.1"])


def test_unknown_key_in_a_file(tmp_path):
    (tmp_path / "c.yaml").write_text("data:\n  text_feld: prompt.text\n")
    with pytest.raises(ConfigError, match=r"'data.text_feld'.*Did you mean 'text_field'"):
        load_config(file=tmp_path / "c.yaml")


def test_a_config_file_with_a_byte_order_mark_loads_and_one_not_in_utf8_names_its_byte(tmp_path):
    (tmp_path / "bom.yaml").write_bytes(
        b"\xef\xbb\xbfsteps: 3\ndata: {template: 'R\xc3\xa9sum\xc3\xa9: {text}'}\n"
    )
    config = load_config(file=tmp_path / "bom.yaml")
    assert config.steps == 3 and config.data.template == "Résumé: {text}"
    (tmp_path / "latin.yaml").write_bytes(b"steps: 3\ndata: {template: 'R\xe9sum\xe9: {text}'}\n")
    with pytest.raises(ConfigError) as e:
        load_config(file=tmp_path / "latin.yaml")
    assert str(e.value) == (
        f"Config file '{tmp_path / 'latin.yaml'}', line 2 (byte 28): byte 0xe9 is not UTF-8 (invalid "
        f"continuation byte); save it as UTF-8 (e.g. iconv -f latin1 -t utf-8 '{tmp_path / 'latin.yaml'}' > "
        "fixed.yaml)."
    )
    with pytest.raises(ConfigError, match="is a folder, not a YAML file"):
        load_config(file=tmp_path)


def test_unknown_preset_gives_did_you_mean():
    with pytest.raises(ConfigError, match=r"Unknown preset 'lab'.*Did you mean 'lab3'"):
        load_config(preset="lab")


def test_overrides_are_typed():
    c = load_config(
        preset="default",
        overrides=["ppo.learning_rate=1e-5", "steps=3", "data.shuffle_seed=null", "policy.use_lora=false",
                   "eval.evaluators=[profanity, some/model:toxic]", "data.source=x.jsonl",
                   "data.max_chars=100", "threads=1"],
    )  # fmt: skip
    assert c.ppo.learning_rate == 1e-5 and isinstance(c.ppo.learning_rate, float)
    assert c.steps == 3 and c.data.shuffle_seed is None and c.policy.use_lora is False
    assert c.eval.evaluators == ("profanity", "some/model:toxic")
    assert (c.data.source, c.data.max_chars, c.threads) == ("x.jsonl", 100, 1)


def test_overrides_win_over_file_over_preset(tmp_path):
    (tmp_path / "c.yaml").write_text("steps: 5\nppo:\n  batch_size: 8\n")
    c = load_config(preset="lab3", file=tmp_path / "c.yaml", overrides=["steps=7"])
    assert (c.steps, c.ppo.batch_size, c.ppo.mini_batch_size) == (7, 8, 4)


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("reward.kind=profanty", r"must be one of .*Did you mean 'profanity'"),
        ("policy.dtype=fp16", r"'policy.dtype' must be one of"),
        ("generation.length_sampling=per-prompt", r"Did you mean 'per_prompt'"),
        ("steps=many", r"'steps' must be int"),
        ("steps=1.5", r"'steps' must be int"),
        ("policy.use_lora=maybe", r"must be true or false"),
        ("data=builtin:heated", r"'data' must be a mapping"),
        ("ppo.entropy_floor=true", r"'ppo.entropy_floor' is true with ppo.entropy_coef 0.*entropy_coef=0.02"),
    ],
)
def test_bad_values_are_rejected(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(overrides=[override])


def test_override_without_equals():
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(overrides=["steps"])


@pytest.mark.parametrize("name", PRESETS)
def test_save_then_load_round_trips(tmp_path, name):
    c = load_config(preset=name, overrides=["data.max_examples=5"])
    save_config(c, tmp_path / "config.yaml")
    assert load_config(file=tmp_path / "config.yaml") == c


@pytest.mark.parametrize(
    ("override", "build", "words"),
    [
        ("ppo.mini_batch_size=0", lambda: PPOConfig(mini_batch_size=0), "a whole number >= 1, got 0."),
        ("ppo.learning_rate=nan", lambda: PPOConfig(learning_rate=math.nan), "number > 0, got nan."),
        ("ppo.batch_size=10", lambda: PPOConfig(batch_size=10), "4), got 10: set ppo.batch_size=8 or 12"),
        ("policy.dtype=fp16", lambda: PolicyConfig(dtype="fp16"), "must be one of ['float32', "),
        ("device=tpu9", lambda: RunConfig(device="tpu9"), "cuda:N (N: a GPU index) or mps, got 'tpu9'."),
        ("data.template=x", lambda: DataConfig(template="x"), "must be a text holding '{text}', got 'x'"),
    ],
)  # fmt: skip
def test_files_overrides_and_python_get_the_same_error(override, build, words):
    with pytest.raises(ConfigError) as from_override:
        load_config(overrides=[override])
    with pytest.raises(ConfigError) as from_python:
        build()
    message = str(from_override.value)
    assert message == str(from_python.value)
    assert f"'{override.split('=')[0]}'" in message and words in message
    assert isinstance(from_python.value, ValueError)  # what Python code that builds configs expects


def test_batch_size_divides_by_the_rows_of_one_optimizer_step():
    assert PPOConfig(batch_size=16, mini_batch_size=4, gradient_accumulation_steps=2).batch_size == 16
    with pytest.raises(ConfigError, match=r"\(4 \* 3 = 12\), got 16: set ppo.batch_size=12 or 24"):
        PPOConfig(batch_size=16, mini_batch_size=4, gradient_accumulation_steps=3)


def test_renamed_key_says_where_it_went_and_how_to_write_it(tmp_path):
    (tmp_path / "old.yaml").write_text("ppo:\n  target_kl_early_stop: 0.05\n")
    with pytest.raises(ConfigError) as info:
        load_config(file=tmp_path / "old.yaml")
    message = str(info.value)
    assert "'ppo.target_kl_early_stop' is now 'ppo.target_kl'" in message
    assert "Write ppo.target_kl=0.05 instead." in message and "\n" not in message
    assert load_config(overrides=["ppo.target_kl=0.05"]).ppo.target_kl == 0.05


def test_target_kl_is_the_early_stop_and_an_old_controller_target_is_refused():
    c = load_config(preset="lab3")
    assert (c.ppo.target_kl, c.ppo.adaptive_kl_target) == (None, 6.0)  # trl's and CleanRL's meaning
    with pytest.raises(
        ConfigError, match=r"'ppo.target_kl' .* got 6.0: .*early-stop.*ppo.adaptive_kl_target"
    ):
        load_config(preset="lab3", overrides=["ppo.target_kl=6.0"])
    assert load_config(overrides=["ppo.adaptive_kl_target=3"]).ppo.adaptive_kl_target == 3.0


def test_errors_inside_reward_components_name_the_component():
    with pytest.raises(ConfigError, match=r"'reward.components\[1\].batch_size' must be a whole number"):
        load_config(
            overrides=[
                "reward={kind: sum, components: [{kind: profanity}, {kind: profanity, batch_size: 0}]}"
            ]
        )


def test_cross_field_checks():
    with pytest.raises(ConfigError, match=r"'policy.adapter' \('a'\) needs policy.use_lora: true"):
        PolicyConfig(adapter="a", use_lora=False)
    with pytest.raises(ConfigError, match=r"'data.min_score' \(0.5\) needs data.score_field"):
        DataConfig(min_score=0.5)
    with pytest.raises(ConfigError, match=r"'reward.model' is not used by reward.kind: profanity"):
        RewardConfig(model="some/classifier")
    with pytest.raises(ConfigError, match=r"'reward.model' is not used by reward.kind: novelty"):
        RewardConfig(kind="novelty", model="some/classifier")
    with pytest.raises(ConfigError, match=r"'reward.model' must name the function .* got None"):
        RewardConfig(kind="callable")
    with pytest.raises(ConfigError, match=r"'ppo.init_kl_coef' must be > 0 with ppo.adaptive_kl: true"):
        PPOConfig(init_kl_coef=0.0)
    assert PPOConfig(init_kl_coef=0.0, adaptive_kl=False).init_kl_coef == 0.0


def test_algorithm_options_and_their_checks():
    """[D19] trl's names for the critic-free options; groups that fit; no option of another algorithm."""
    rloo = load_config(preset="default", overrides=["ppo.algorithm=rloo"]).ppo
    assert (rloo.algorithm, rloo.group_size, rloo.batch_size // rloo.group_size) == ("rloo", 4, 4)
    assert PPOConfig().group_size == 1 and PPOConfig(algorithm="grpo", num_generations=8).group_size == 8
    assert PPOConfig(num_generations=2).group_size == 2  # PPO may sample a prompt more than once too
    grpo = load_config(overrides=["ppo.algorithm=grpo", "ppo.loss_type=dr_grpo", "ppo.scale_rewards=none"])
    assert (grpo.ppo.loss_type, grpo.ppo.scale_rewards) == ("dr_grpo", "none")
    cases = [
        ("ppo.algorithm=a2c", r"'ppo.algorithm' must be one of \['ppo', 'rloo', 'grpo'\], got 'a2c'"),
        ("ppo.num_generations=1", r"'ppo.num_generations' must be >= 2 with ppo.algorithm: rloo, got 1"),
        ("ppo.num_generations=0", r"'ppo.num_generations' must be null or a whole number >= 1, got 0"),
        ("ppo.num_generations=3", r"'ppo.batch_size' must be a multiple of ppo.num_generations \(3\), "
         r"got 16: a step samples batch_size / num_generations prompts num_generations times each; set "
         r"ppo.batch_size=15 or 18\."),
        ("ppo.scale_rewards=group_std", r"'ppo.scale_rewards' must be one of \['group', 'batch', 'none'\]"),
        ("ppo.loss_type=dr_grpo", r"'ppo.loss_type' is grpo's option, got 'dr_grpo' with ppo.algorithm: "
         r"rloo: set ppo.algorithm=grpo, or drop ppo.loss_type\."),
        ("ppo.whiten_rewards=true", r"'ppo.whiten_rewards' is ppo's option, got true with ppo.algorithm"),
    ]  # fmt: skip
    for override, pattern in cases:
        with pytest.raises(ConfigError, match=pattern):
            load_config(preset="default", overrides=["ppo.algorithm=rloo", override])
    with pytest.raises(ConfigError, match=r"'ppo.normalize_advantages' is rloo's option, got true"):
        PPOConfig(algorithm="grpo", normalize_advantages=True)


def test_detoxrl_config_prints_every_key_with_its_comment_and_loads_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import dataclasses

    import yaml

    from detoxrl.cli import main
    from detoxrl.config import RunConfig, load_config
    from detoxrl.config.io import flatten, from_dict

    assert main(["config", "--preset", "rtp", "steps=7"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# detoxrl config --preset rtp steps=7\n")
    lines = text.splitlines()
    keys = [i for i, line in enumerate(lines) if not line.lstrip().startswith(("#", "-")) and ":" in line]
    assert all(lines[i - 1].lstrip().startswith("#") for i in keys), "every key has its doc above it"
    config = from_dict(RunConfig, yaml.safe_load(text))
    assert config == load_config("rtp", None, ["steps=7"])  # the printed config is the resolved one
    assert len(flatten(dataclasses.asdict(config))) <= len(keys) + 8  # components' keys sit in one line each
    assert main(["config", "--preset", "rtp", "--out", str(tmp_path / "mine.yaml")]) == 0
    assert load_config(None, tmp_path / "mine.yaml") == load_config("rtp")


def test_the_config_reference_in_docs_is_current() -> None:
    from detoxrl.config.docs import markdown

    docs = Path(__file__).resolve().parents[2] / "docs" / "config.md"
    assert docs.read_text() == markdown(), "regenerate: python -m detoxrl.config.docs > docs/config.md"
    fields = [line for line in markdown().splitlines() if line.startswith("| `")]
    assert all(not line.endswith("|  |") for line in fields), "every key has a doc"


def test_another_reward_kind_replaces_the_presets_reward_instead_of_merging_into_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from detoxrl.config import load_config
    from detoxrl.rewards.build import build_reward

    config = load_config("default", None, ["reward.kind=callable", "reward.model=mine:calm"])
    assert (config.reward.kind, config.reward.model, config.reward.components) == (
        "callable",
        "mine:calm",
        (),
    )
    same_kind = load_config("default", None, ["reward.components=[{kind: profanity}]"])
    assert same_kind.reward.kind == "sum" and len(same_kind.reward.components) == 1  # a same-kind edit merges
    (tmp_path / "mine.py").write_text("def calm(prompts, responses):\n    return [1.0 for _ in responses]\n")
    monkeypatch.chdir(tmp_path)  # a module in the working folder, as the user wrote it
    assert build_reward(config.reward)(["p"], ["r"]).tolist() == [1.0]


def test_train_and_run_start_from_the_same_defaults() -> None:
    from detoxrl.cli.parser import parse

    assert parse(["train"]).default_preset == parse(["run"]).default_preset == "default"
    args = parse(
        ["run", "--preset", "rtp", "steps=3", "--dry-run", "output_dir=x", "--num-processes", "1", "seed=2"]
    )
    assert (
        args.overrides == ["steps=3", "output_dir=x", "seed=2"] and args.dry_run and args.num_processes == 1
    )


def test_d30_a_preference_term_needs_groups_whole_in_a_mini_batch() -> None:
    with pytest.raises(ConfigError, match=r"ppo\.num_generations=4"):
        PPOConfig(preference_coef=1.0)
    with pytest.raises(ConfigError, match=r"ppo\.mini_batch_size=4"):
        PPOConfig(algorithm="rloo", num_generations=4, mini_batch_size=6, batch_size=24, preference_coef=1.0)

"""Presets, YAML files and ``a.b=c`` overrides -> a validated ``RunConfig``; a run directory's saved config
with the overrides a resume allows; the resolved config back to YAML. Knows nothing of models or data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from detoxrl.config.io import did_you_mean, flatten, from_dict, merge, parse_overrides, read_yaml, to_dict
from detoxrl.config.schema import RunConfig
from detoxrl.errors import ConfigError

PRESETS = Path(__file__).parent / "presets"


def preset_path(name: str) -> Path:
    return PRESETS / f"{name}.yaml"


def list_presets() -> dict[str, str]:
    """Preset name -> its one-line description (the YAML's first comment line)."""
    out = {}
    for p in sorted(PRESETS.glob("*.yaml")):
        first = p.read_text().splitlines()[0] if p.stat().st_size else ""
        out[p.stem] = first.lstrip("# ").strip()
    return out


def load_config(
    preset: str | None = None, file: str | Path | None = None, overrides: list[str] | None = None
) -> RunConfig:
    """Defaults <- preset <- file <- overrides, validated into a RunConfig."""
    data: dict[str, Any] = {}
    if preset is not None:
        if not preset_path(preset).is_file():
            names = list(list_presets())
            hint = did_you_mean(preset, names)
            raise ConfigError(f"Unknown preset '{preset}'.{hint} Available: {', '.join(names)}.")
        data = read_yaml(preset_path(preset))
    if file is not None:
        data = merge(data, read_yaml(file))
    data = merge(data, parse_overrides(overrides or []))
    return from_dict(RunConfig, data)


def save_config(config: RunConfig, path: str | Path, comment: str | None = None) -> None:
    """The config as YAML, ``comment`` (e.g. the engine this machine chose) as its first lines."""
    header = "".join(f"# {line}\n" for line in (comment or "").splitlines())
    Path(path).write_text(header + yaml.safe_dump(to_dict(config), sort_keys=False))


# What ``--resume RUN_DIR`` lets an override change: what cannot change what the run computes
# (another device or thread count may still round differently). Everything else is refused: the
# saved config is what the checkpoints and eval_before.json were made with. eval.batch_size is not
# here: evaluation seeds each batch, so another size would sample the "after" responses with other
# draws than the "before" ones they are paired with.
RESUME_OVERRIDES = ("steps", "save_every", "threads", "device", "reward.batch_size")


def resume_config(run_dir: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """RUN_DIR/config.yaml with RUN_DIR as output_dir, changed only by overrides of ``RESUME_OVERRIDES``."""
    saved = Path(run_dir) / "config.yaml"
    if not saved.is_file():
        raise ConfigError(
            f"'{run_dir}' holds no config.yaml: it is not a detoxrl run directory; give --resume the "
            "folder a run wrote (its output_dir, e.g. runs/default)."
        )
    data, changes = read_yaml(saved), parse_overrides(overrides or [])
    before = from_dict(RunConfig, data)
    after = from_dict(RunConfig, merge(merge(data, changes), {"output_dir": str(run_dir)}))
    for name, value in flatten(changes).items():
        why = _resume_refusal(name, before, after)
        if why:
            raise ConfigError(
                f"Override '{name}={value}' cannot be used with --resume: {why}; start a new run with "
                f"another output_dir instead. Allowed on resume: {', '.join(RESUME_OVERRIDES)}."
            )
    return after


def _resume_refusal(name: str, before: RunConfig, after: RunConfig) -> str | None:
    """Why an override would change a resumed run, or None. ``steps`` may grow, except under a linear
    learning-rate schedule, whose decay it sets."""
    if name == "output_dir":
        return "the run directory is the one given to --resume"
    if name not in RESUME_OVERRIDES:
        return "it would change the run"
    if name == "steps" and after.steps < before.steps:
        return f"steps can only grow (this run is set for {before.steps})"
    if name == "steps" and after.steps != before.steps and before.ppo.lr_scheduler_type == "linear":
        return "with ppo.lr_scheduler_type: linear, steps sets the learning-rate decay"
    return None

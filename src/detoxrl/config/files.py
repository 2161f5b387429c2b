"""Presets, YAML files and ``a.b=c`` overrides -> a validated ``RunConfig``, and the resolved config back
to YAML. Knows nothing of models or data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from detoxrl.config.io import did_you_mean, from_dict, merge, parse_overrides, read_yaml, to_dict
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

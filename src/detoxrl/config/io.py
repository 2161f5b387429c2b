"""Configs from and to plain dicts, YAML files and ``a.b=c`` overrides: type conversion, unknown and
renamed keys. Knows no field of any config (config.py does) and no model, data or tensor.

Every value is coerced to its field's annotated type here; what a value may be (ranges, choices,
consistency) is the dataclass's own ``__post_init__``, so a config built in Python meets the same
checks with the same words.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from detoxrl.errors import ConfigError

T = typing.TypeVar("T")


@dataclass(frozen=True)
class Renamed:
    """A key that moved: its dotted name now, and what changed (said in the error an old file gets)."""

    new: str
    change: str


# Old or moved dotted keys (list indices dropped: ``reward.components.x``) -> where they went. Consulted
# only when a key is unknown, so a file written before a rename fails with one line that says how to
# write it now, instead of a bare did-you-mean.
RENAMED: dict[str, Renamed] = {
    "ppo.target_kl_early_stop": Renamed(
        "ppo.target_kl",
        "the early-stop threshold on approximate KL now has trl's and CleanRL's name; the adaptive KL "
        "controller's target, which ppo.target_kl named before, is ppo.adaptive_kl_target",
    ),
    **{
        f"eval.{name}": Renamed(
            f"eval.sampling.{name}",
            "evaluation samples through the sampler that trains, with the same settings as generation: "
            "eval.sampling holds them (its default is a fixed limit of 48 tokens)",
        )
        for name in ("max_new_tokens", "temperature", "top_k", "top_p")
    },
}


def did_you_mean(value: str, options: list[str]) -> str:
    close = difflib.get_close_matches(value, options, n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


def literal_error(key: str, value: Any, allowed: tuple[Any, ...]) -> ConfigError:
    hint = did_you_mean(str(value), [str(a) for a in allowed])
    need = f"one of {list(allowed)}"
    return ConfigError(
        f"Config key '{key}' must be {need}, got {value!r}.{hint}", key=key, need=need, got=value
    )


def _unknown_key(key: str, value: Any, cls: type, where: str) -> ConfigError:
    dotted = re.sub(r"\[\d+\]", "", where + key)
    if dotted in RENAMED:
        moved = RENAMED[dotted]
        return ConfigError(
            f"Config key '{where}{key}' is now '{moved.new}': {moved.change}. "
            f"Write {moved.new}={json.dumps(value, default=str)} instead."
        )
    names = [f.name for f in dataclasses.fields(cls)]
    hint = did_you_mean(key, names)
    return ConfigError(f"Unknown config key '{where}{key}'.{hint} Valid keys here: {', '.join(names)}.")


def _convert_union(value: Any, tp: Any, where: str) -> Any:
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    errors = []
    for arg in (a for a in args if a is not type(None)):
        try:
            return _convert(value, arg, where)
        except ConfigError as e:
            errors.append(str(e))
    raise ConfigError(errors[0] if errors else f"Config key '{where}' cannot be {value!r}.")


def _convert_literal(value: Any, tp: Any, where: str) -> Any:
    allowed = typing.get_args(tp)
    if value not in allowed:
        raise literal_error(where, value, allowed)
    return value


def _convert_tuple(value: Any, tp: Any, where: str) -> Any:
    item = typing.get_args(tp)[0]
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list | tuple):
        raise ConfigError(f"Config key '{where}' must be a list, got {value!r}.")
    return tuple(_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value))


def _convert_scalar(value: Any, tp: Any, where: str) -> Any:
    kind = "true or false" if tp is bool else getattr(tp, "__name__", str(tp))
    wrong = ConfigError(f"Config key '{where}' must be {kind}, got {value!r}.")
    if tp is bool:
        words = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in words:
            return words[value.lower()]
        raise wrong
    if tp in (int, float):
        if isinstance(value, bool) or (tp is int and isinstance(value, float) and not value.is_integer()):
            raise wrong
        try:
            return tp(value)
        except (TypeError, ValueError, OverflowError):
            raise wrong from None
    if tp is str and isinstance(value, dict | list):
        raise wrong
    return str(value) if tp is str else value


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Coerce a YAML/CLI value to the annotated type ``tp``, or raise ConfigError."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise ConfigError(f"Config key '{where}' must be a mapping, got {value!r}.")
        return from_dict(tp, value, where + ".")
    if origin in (typing.Union, types.UnionType):
        return _convert_union(value, tp, where)
    if origin is Literal:
        return _convert_literal(value, tp, where)
    if origin is tuple:
        return _convert_tuple(value, tp, where)
    return _convert_scalar(value, tp, where)


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from a nested dict, checking every key and value.

    A class's own checks name its keys from its usual place (``reward.label``); built elsewhere (a
    ``reward.components`` item) their message is moved to where the value was written.
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise _unknown_key(key, value, cls, where)
        kwargs[key] = _convert(value, hints[key], where + key)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        home = f"'{getattr(cls, 'SECTION', '')}."
        if home == "'." or where in ("", home[1:]):
            raise
        raise ConfigError(str(e).replace(home, f"'{where}")) from None


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain nested dicts and lists, ready for YAML."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(config))


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["ppo.learning_rate=1e-5", "steps=3"]`` -> nested dict, values parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(
                f"Override '{item}' is not of the form key=value (e.g. ppo.learning_rate=1e-5)."
            )
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        try:
            node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            raise ConfigError(f"Override '{item}': the value is not valid YAML; quote it.") from None
    return out


def flatten(data: dict[str, Any], where: str = "") -> dict[str, Any]:
    """``{"ppo": {"batch_size": 8}}`` -> ``{"ppo.batch_size": 8}`` (lists are values)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{where}{key}."))
        else:
            out[where + key] = value
    return out


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``extra`` into a copy of ``base``. A section given another ``kind`` (``reward.kind=
    callable`` over a preset's ``sum``) starts from that kind's defaults: the base's keys belong to its
    own kind (a sum's components would otherwise stay and refuse a callable)."""
    out = dict(base)
    for k, v in extra.items():
        old = out.get(k)
        if isinstance(v, dict) and isinstance(old, dict) and not _other_kind(old, v):
            out[k] = merge(old, v)
        else:
            out[k] = v
    return out


def yaml_text(path: Path) -> str:
    """A config file's text: UTF-8, a leading byte-order mark dropped; a byte that is not UTF-8 is one line
    naming its line and offset."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"Config file '{path}' cannot be read ({e.strerror}).") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(
            f"Config file '{path}', line {line} (byte {e.start}): byte 0x{raw[e.start : e.end].hex(' ')} is "
            f"not UTF-8 ({e.reason}); save it as UTF-8 (e.g. iconv -f latin1 -t utf-8 '{path}' > fixed.yaml)."
        ) from None


def _other_kind(base: dict[str, Any], extra: dict[str, Any]) -> bool:
    return "kind" in base and "kind" in extra and base["kind"] != extra["kind"]


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"Config file '{p}' is a folder, not a YAML file."
            if p.is_dir()
            else f"Config file '{p}' does not exist."
        )
    try:
        data = yaml.safe_load(yaml_text(p)) or {}
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise ConfigError(f"Config file '{p}' is not valid YAML{line}: {problem}; fix that line.") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"Config file '{p}' must hold a mapping of keys (e.g. 'steps: 20'), got a {type(data).__name__}."
        )
    return data

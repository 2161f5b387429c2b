"""The config explained by its own fields (each a ``param`` with its doc): a resolved config as YAML with a
comment above every key (``detoxrl config``), and the Markdown reference of every key (docs/config.md).
Knows nothing of models or data."""

from __future__ import annotations

import dataclasses
import textwrap
import typing
from typing import Any

import yaml

from detoxrl.config.io import to_dict
from detoxrl.config.schema import RunConfig

WIDTH = 100


def _doc(field: dataclasses.Field[Any], hint: Any) -> str:
    """What a field means, and a ``Literal`` field's choices after it."""
    doc = str(field.metadata.get("doc", ""))
    choices = [str(v) for v in typing.get_args(hint)] if typing.get_origin(hint) is typing.Literal else []
    return f"{doc} ({' | '.join(choices)})" if choices and doc else doc


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_section(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def _scalar(value: Any) -> str:
    """One value as a YAML flow (``[a, b]``, ``null``, ``0.0005``), on one line."""
    text: str = yaml.safe_dump(value, default_flow_style=True, width=10**6, sort_keys=False).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def commented_yaml(config: Any, indent: int = 0) -> list[str]:
    """The lines of ``config`` (a config dataclass) as YAML, each key preceded by its doc as comments."""
    pad, lines = " " * indent, []
    hints = _hints(type(config))
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        doc = _doc(field, hints[field.name])
        lines += [pad + "# " + line for line in textwrap.wrap(doc, WIDTH - indent - 2)]
        if _is_section(value):
            lines += [f"{pad}{field.name}:", *commented_yaml(value, indent + 2)]
        elif isinstance(value, tuple) and value and _is_section(value[0]):  # reward.components
            lines.append(f"{pad}{field.name}:")
            lines += [f"{pad}  - {_scalar(_changed(part))}" for part in value]
        else:
            lines.append(
                f"{pad}{field.name}: {_scalar(to_dict(value) if _is_section(value) else _plain(value))}"
            )
    return lines


def _changed(part: Any) -> dict[str, Any]:
    """A nested config's keys that differ from its defaults (a reward component as one would write it)."""
    defaults = to_dict(type(part)())
    return {k: v for k, v in to_dict(part).items() if v != defaults.get(k)}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def render(config: RunConfig, header: str = "") -> str:
    """The whole config as commented YAML, loadable with ``--config`` (it holds every key)."""
    head = [f"# {line}" for line in header.splitlines()]
    return "\n".join([*head, *commented_yaml(config)]) + "\n"


def _default(field: dataclasses.Field[Any]) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return ""
    return "" if _is_section(value) else f"`{_scalar(_plain(value))}`"


def reference(cls: type = RunConfig, prefix: str = "", about: str = "") -> list[str]:
    """Markdown: a table per section (``about`` above it), a row per key: its default and what it means;
    the sections inside it after."""
    hints = _hints(cls)
    rows, sections = [], []
    for field in dataclasses.fields(cls):
        hint, name = hints[field.name], f"{prefix}{field.name}"
        doc = _doc(field, hint).replace("|", "\\|")
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            sections.append((name, hint, doc))
        else:
            rows.append(f"| `{name}` | {_default(field)} | {doc} |")
    title = f"## `{prefix.rstrip('.')}`" if prefix else "## The run"
    out = [
        title,
        "",
        *([about, ""] if about else []),
        "| key | default | what it means |",
        "| --- | --- | --- |",
    ]
    out += [*rows, ""]
    for name, section, doc in sections:
        out += reference(section, f"{name}.", doc)
    return out


def markdown() -> str:
    """docs/config.md: every key with its default and doc, as ``detoxrl config`` prints them."""
    intro = [
        "# Configuration reference",
        "",
        "Every key of a run, its default and what it means, generated from the fields themselves",
        "(`detoxrl config --preset NAME` prints a preset resolved, with these comments; a test keeps this",
        "page current). Set a key in a YAML file (`--config`) or on the command line as `key=value`",
        "(`ppo.learning_rate=1e-4`, `reward.components=[{kind: profanity}]`).",
        "",
    ]
    return "\n".join([*intro, *reference()]).rstrip() + "\n"


if __name__ == "__main__":  # python -m detoxrl.config.docs > docs/config.md
    print(markdown(), end="")

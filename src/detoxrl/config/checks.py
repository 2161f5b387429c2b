"""What a config value may be and what it means: a ``Check`` per field (the rule, the requirement as the
error states it, and why), the common ones, ``param`` (a field with its rule and its doc) and ``check``,
which a config dataclass calls from ``__post_init__``: one ``ConfigError`` line naming the key, the value
and what to do. Knows nothing of the sections."""

from __future__ import annotations

import functools
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from detoxrl.config.io import literal_error
from detoxrl.errors import ConfigError


@dataclass(frozen=True)
class Check:
    """A rule for one field: ``ok(value)``, the requirement as the error states it, and why (optional)."""

    ok: Callable[[Any], bool]
    need: str
    why: str = ""


def real(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def whole(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def count(low: int = 1) -> Check:
    return Check(lambda v: whole(v) and v >= low, f"a whole number >= {low}")


def optional(check: Check) -> Check:
    return Check(lambda v: v is None or check.ok(v), f"null or {check.need}", check.why)


POSITIVE = Check(lambda v: real(v) and v > 0, "a finite number > 0")
NON_NEGATIVE = Check(lambda v: real(v) and v >= 0, "a finite number >= 0")
FINITE = Check(real, "a finite number")
FRACTION = Check(lambda v: real(v) and 0 <= v < 1, "a number in [0, 1)")
UNIT = Check(lambda v: real(v) and 0 <= v <= 1, "a number in [0, 1]")
OPEN_UNIT = Check(lambda v: real(v) and 0 < v < 1, "a number in (0, 1)")
TEXT = Check(lambda v: isinstance(v, str) and bool(v.strip()), "a non-empty text")
TEXTS = Check(
    lambda v: isinstance(v, tuple | list) and all(TEXT.ok(x) for x in v), "a list of non-empty texts"
)
NON_EMPTY = Check(lambda v: TEXTS.ok(v) and len(v) > 0, "a non-empty list of non-empty texts")
SEED = Check(lambda v: whole(v) and 0 <= v < 2**32, "a whole number in [0, 2**32)")


@functools.cache
def _choices(cls: type) -> dict[str, tuple[Any, ...]]:
    """The fields annotated ``Literal[...]`` -> their allowed values."""
    hints = typing.get_type_hints(cls)
    return {name: typing.get_args(tp) for name, tp in hints.items() if typing.get_origin(tp) is Literal}


def param(default: Any = None, rule: Check | None = None, doc: str = "", *, factory: Any = None) -> Any:
    """A config field: its default (or a ``factory`` of it), the rule its value must meet (``check``, from
    ``__post_init__``) and what it means (``detoxrl config`` and docs/config.md print it)."""
    metadata = {"rule": rule, "doc": doc}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def doc(config_class: type, name: str) -> str:
    """What field ``name`` of a config class means (``param``'s doc)."""
    return str({f.name: f for f in fields(config_class)}[name].metadata.get("doc", ""))


def key(config: Any, name: str) -> str:
    """The dotted key of a field, from its section's usual place (``ppo.batch_size``)."""
    return f"{config.SECTION}.{name}" if config.SECTION else name


def check(config: Any) -> None:
    """Every ``Literal`` field against its choices, then each field's rule in field order; the first failure
    raises one ``ConfigError`` line naming the key, the value and what to do."""
    cls: type = type(config)
    for name, allowed in _choices(cls).items():
        if getattr(config, name) not in allowed:
            raise literal_error(key(config, name), getattr(config, name), allowed)
    for f in fields(config):
        rule, value = f.metadata.get("rule"), getattr(config, f.name)
        if rule is not None and not rule.ok(value):
            raise ConfigError(key=key(config, f.name), need=rule.need, got=value, fix=rule.why)

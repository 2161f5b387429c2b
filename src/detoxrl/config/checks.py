"""What a config value may be: a ``Check`` per field (the rule, the requirement as the error states it,
and why), the common ones, and ``check``, which a config dataclass calls from ``__post_init__``: one
``ConfigError`` line naming the key, the value and what to do. Knows nothing of the sections."""

from __future__ import annotations

import functools
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass
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


@functools.cache
def _choices(cls: type) -> dict[str, tuple[Any, ...]]:
    """The fields annotated ``Literal[...]`` -> their allowed values."""
    hints = typing.get_type_hints(cls)
    return {name: typing.get_args(tp) for name, tp in hints.items() if typing.get_origin(tp) is Literal}


def key(config: Any, name: str) -> str:
    """The dotted key of a field, from its section's usual place (``ppo.batch_size``)."""
    return f"{config.SECTION}.{name}" if config.SECTION else name


def check(config: Any, checks: dict[str, Check]) -> None:
    """Every ``Literal`` field against its choices, then ``checks`` in order; the first failure raises."""
    cls: type = type(config)
    for name, allowed in _choices(cls).items():
        if getattr(config, name) not in allowed:
            raise literal_error(key(config, name), getattr(config, name), allowed)
    for name, rule in checks.items():
        value = getattr(config, name)
        if not rule.ok(value):
            raise ConfigError(key=key(config, name), need=rule.need, got=value, fix=rule.why)

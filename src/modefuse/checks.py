"""Argument checks shared by the library and the command line: one wording for each kind of value.

Each check returns the value (converted where that is lossless) or raises `InvalidArgumentError`
with a one-line message, "lr must be a positive number, got -1.0". The command line's argparse
types (`modefuse.cliargs`) call the same checks, so a bad value reads the same from either side.
"""
from __future__ import annotations

import math
import numbers
from typing import Any

from .errors import InvalidArgumentError


def _fail(name: str | None, what: str, value: Any):
    raise InvalidArgumentError(f"{name + ' ' if name else ''}must be {what}, got {value!r}")


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def int_at_least(value, minimum: int, name: str | None = None) -> int:
    """An integer >= minimum (1: a positive integer; 0: a non-negative one)."""
    if not _is_int(value) or value < minimum:
        what = {0: "a non-negative integer", 1: "a positive integer"}.get(minimum, f"an integer >= {minimum}")
        _fail(name, what, value)
    return int(value)


def positive_int(value, name: str | None = None) -> int:
    return int_at_least(value, 1, name)


def nonneg_int(value, name: str | None = None) -> int:
    return int_at_least(value, 0, name)


def optional_positive_int(value, name: str | None = None) -> int | None:
    return None if value is None else positive_int(value, name)


def _real(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def positive_float(value, name: str | None = None) -> float:
    """A finite number > 0."""
    v = _real(value)
    if v is None or v <= 0:
        _fail(name, "a positive number", value)
    return v


def nonneg_float(value, name: str | None = None) -> float:
    """A finite number >= 0."""
    v = _real(value)
    if v is None or v < 0:
        _fail(name, "a non-negative number", value)
    return v


def probability(value, name: str | None = None) -> float:
    """A number in [0, 1]."""
    v = _real(value)
    if v is None or not 0 <= v <= 1:
        _fail(name, "a number in [0, 1]", value)
    return v


def fraction_below_one(value, name: str | None = None) -> float:
    """A number in [0, 1) (a momentum)."""
    v = _real(value)
    if v is None or not 0 <= v < 1:
        _fail(name, "a number in [0, 1)", value)
    return v


def one_of(value, choices, name: str | None = None):
    if value not in choices:
        raise InvalidArgumentError(f"{name + ' ' if name else ''}must be one of "
                                   f"{', '.join(map(repr, choices))}, got {value!r}")
    return value

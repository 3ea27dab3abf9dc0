"""The value checks BMOConfig, the tasks, the data helpers and the job spec share (no torch, no Optuna).

Each check returns the value it accepts, or raises ``CheckError`` with one message style::

    <field>: expected <what>, got <value!r>

A ``CheckError`` carries that message's parts (``field``, ``expected``, ``got``) and every field the
failure involves (``fields``: ``("truncate", "K")`` for truncate <= K), so that a caller which knows the
field by a longer name (the job spec's ``fixed.K``) can say so with ``at``, without reading the message.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


class CheckError(ValueError):
    """A value that fails a check: ``field: expected <expected>, got <got!r>``."""

    def __init__(self, field: str, expected: str, got: Any, *, also: Iterable[str] = ()):
        self.field, self.expected, self.got = field, expected, got
        self.fields = (field, *also)  # every field the failure involves, ``field`` first
        super().__init__(describe(field, expected, got))

    def __reduce__(self):  # pickled with its parts (Ray sends a trial's errors between processes)
        return type(self), (self.field, self.expected, self.got), self.__dict__

    def at(self, field: str) -> CheckError:
        """The same failure, with ``field`` named as the caller names it (e.g. ``fixed.K`` for ``K``)."""
        return CheckError(field, self.expected, self.got, also=self.fields[1:])


def describe(field: str, expected: str, got: Any) -> str:
    """The one message style: ``field: expected <expected>, got <got!r>``."""
    return f"{field}: expected {expected}, got {got!r}"


def is_int(value: Any) -> bool:
    """An int, not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """A finite int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_int(field: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` is an int (not a bool) in [minimum, maximum] (either bound optional)."""
    if not is_int(value) or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise CheckError(field, "an int" + _bounds(minimum, maximum, False, False), value)
    return value


def check_real(field: str, value: Any, low: float | None = None, high: float | None = None, *,
               low_open: bool = False, high_open: bool = False) -> float:
    """``value`` is a finite int or float (not a bool) between ``low`` and ``high`` (either optional), each end
    included unless ``low_open`` / ``high_open``."""
    ok = is_real(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        what = "a number" if low is not None and high is not None else "a finite number"
        raise CheckError(field, what + _bounds(low, high, low_open, high_open), value)
    return value


def check_choice(field: str, value: Any, choices: Iterable) -> Any:
    """``value`` is one of ``choices`` (by ==)."""
    choices = tuple(choices)
    if value not in choices:
        raise CheckError(field, "one of " + ", ".join(str(c) for c in choices), value)
    return value


def check_bool(field: str, value: Any) -> bool:
    """``value`` is True or False."""
    if not isinstance(value, bool):
        raise CheckError(field, "true or false", value)
    return value


def check_at_most(field: str, value: Any, bound_field: str, bound: Any) -> Any:
    """``value <= bound``, where ``bound`` is the value of another field (the error involves both)."""
    if not value <= bound:
        raise CheckError(field, f"at most {bound_field} = {bound!r}", value, also=(bound_field,))
    return value


def check_positive_ints(**values: Any) -> None:
    """Every value is an int >= 1 (bools refused); the keyword names the field."""
    for field, value in values.items():
        check_int(field, value, minimum=1)


def _bounds(low, high, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {low}"
    if high is not None:
        return f" {'<' if high_open else '<='} {high}"
    return ""

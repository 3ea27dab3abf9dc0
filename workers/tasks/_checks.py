"""Argument checks shared by the tasks: each raises one ValueError line naming the task and the argument."""

from __future__ import annotations


def check_choice(task: str, name: str, value, choices) -> None:
    """``value`` must be one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{task}: {name} must be one of {', '.join(choices)}, got {name}={value!r}")


def check_positive_ints(task: str, **values) -> None:
    """Every value must be an int >= 1 (bools refused)."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{task}: {name} must be a positive integer, got {name}={value!r}")

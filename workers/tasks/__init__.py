"""Task registry: names → Problem classes, loading a user's Problem by import path, and a task's arguments."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from typing import Any

from workers.problem import Problem
from workers.tasks.deconvolution import Deconvolution, DeconvolutionArgs
from workers.tasks.derain import Derain, DerainArgs
from workers.tasks.sparse_coding import SparseCoding, SparseCodingArgs

TASKS: dict[str, type[Problem]] = {
    "sparse_coding": SparseCoding,
    "deconvolution": Deconvolution,
    "derain": Derain,
}


def resolve_task(task: str) -> type[Problem]:
    """Return the Problem class named by a registry name or a ``module:Class`` import path."""
    if not isinstance(task, str) or not task:
        raise ValueError(f"task must be a registry name ({', '.join(TASKS)}) or 'module:Class', got task={task!r}")
    if task in TASKS:
        return TASKS[task]
    if ":" not in task:
        raise ValueError(f"unknown task {task!r}: not one of {', '.join(TASKS)} and not a 'module:Class' import path")
    module_name, _, attr = task.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"task {task!r}: cannot import module {module_name!r} ({e})") from None
    cls = getattr(module, attr, None)
    if not (inspect.isclass(cls) and issubclass(cls, Problem)):
        raise ValueError(f"task {task!r}: {attr!r} in {module_name!r} is not a workers.Problem subclass")
    return cls


class _Required:
    """The default of an argument that has none."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


def task_arguments(task: str | type[Problem]) -> dict[str, Any]:
    """A task's arguments, name → default (``REQUIRED`` when it has none), in their order.

    Read from the ``Args`` dataclass the task's class declares itself (every shipped task has one; see
    ``Problem.Args``): its init fields. A problem that declares none (a user's, or a user's subclass of a
    shipped task, whose constructor may take other arguments than its parent's) falls back to its
    constructor's signature: the parameters after ``self``, less ``*args`` and ``**kwargs``.
    """
    cls = resolve_task(task) if isinstance(task, str) else task
    args = vars(cls).get("Args")  # declared here: a subclass's constructor need not take its parent's Args
    if args is None:
        params = inspect.signature(cls.__init__).parameters
        return {name: REQUIRED if p.default is p.empty else p.default for name, p in params.items()
                if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    if not (inspect.isclass(args) and dataclasses.is_dataclass(args)):
        raise ValueError(f"task {cls.__name__}: Args must be a dataclass (its fields are the task's arguments), "
                         f"got {args!r}")
    out = {}
    for f in dataclasses.fields(args):
        if f.init:
            factory = f.default_factory  # type: ignore[misc]
            out[f.name] = (f.default if f.default is not dataclasses.MISSING
                           else factory() if factory is not dataclasses.MISSING else REQUIRED)
    return out


def make_problem(task: str, task_args: dict | None = None) -> Problem:
    """Build the Problem for ``task`` with ``task_args``; unknown arguments are a ValueError naming them."""
    task_args = dict(task_args or {})
    known = task_arguments(task)
    unknown = sorted(set(task_args) - set(known))
    if unknown:
        raise ValueError(f"task {task!r} has no argument {unknown[0]!r} (arguments: {', '.join(known)})")
    return resolve_task(task)(**task_args)


def split_settings(settings: dict) -> tuple[dict, dict]:
    """Split flat settings into (BMOConfig values, task arguments).

    ``task.NAME`` is always the task argument NAME; a bare BMOConfig field name
    goes to the config; any other bare name is a task argument.
    """
    from workers.bmo import BMOConfig

    fields = {f.name for f in dataclasses.fields(BMOConfig)}
    config, task_args = {}, {}
    for key, value in settings.items():
        if key.startswith("task."):
            task_args[key[len("task."):]] = value
        elif key in fields:
            config[key] = value
        else:
            task_args[key] = value
    return config, task_args


__all__ = ["REQUIRED", "TASKS", "Deconvolution", "DeconvolutionArgs", "Derain", "DerainArgs", "SparseCoding",
           "SparseCodingArgs", "make_problem", "resolve_task", "split_settings", "task_arguments"]

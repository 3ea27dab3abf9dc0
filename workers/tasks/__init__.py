"""Task registry: names → Problem classes, and loading a user's Problem by import path."""

from __future__ import annotations

import importlib
import inspect

from workers.problem import Problem
from workers.tasks.deconvolution import Deconvolution
from workers.tasks.derain import Derain
from workers.tasks.sparse_coding import SparseCoding

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


def task_parameters(task: str) -> dict[str, inspect.Parameter]:
    """The keyword arguments a task's constructor accepts."""
    params = inspect.signature(resolve_task(task).__init__).parameters
    return {name: p for name, p in params.items() if name != "self" and p.kind is not p.VAR_KEYWORD}


def make_problem(task: str, task_args: dict | None = None) -> Problem:
    """Build the Problem for ``task`` with ``task_args``; unknown arguments are a ValueError naming them."""
    task_args = dict(task_args or {})
    known = task_parameters(task)
    unknown = sorted(set(task_args) - set(known))
    if unknown:
        raise ValueError(f"task {task!r} has no argument {unknown[0]!r} (arguments: {', '.join(known)})")
    return resolve_task(task)(**task_args)


def split_settings(settings: dict) -> tuple[dict, dict]:
    """Split flat settings into (BMOConfig values, task arguments).

    ``task.NAME`` is always the task argument NAME; a bare BMOConfig field name
    goes to the config; any other bare name is a task argument.
    """
    import dataclasses

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


__all__ = ["TASKS", "Deconvolution", "Derain", "SparseCoding", "make_problem", "resolve_task", "split_settings", "task_parameters"]

"""A parsed job spec against BMOConfig and its task: what ``parse_spec`` cannot see without the task (imports torch).

Space and fixed keys must be BMOConfig fields or task arguments (the fields of the task's ``Args`` dataclass, or
the constructor's keyword arguments of a problem without one: ``workers.tasks.task_arguments``); fixed values
and each space range's ends must make a valid BMOConfig; the task must build with ``task_args`` (and each end of a searched argument's
range) and, if it is a ``module:Class``, pass the conformance checks (``workers.testing``); each objective
must be a metric the task reports. Errors are ``SpecError``s naming the spec's field: a ``CheckError`` of
BMOConfig or of a task is put at its field by its ``field`` (``fixed.K``, ``task_args.m``), never by its text.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hpo.errors import SpecError
from hpo.spec import TASK_PREFIX, TORCH_SEEDS, JobSpec, Param, Steps, fit_scheduler, one_line, outer_steps_range, spec_error
from workers.checks import CheckError

TRUNCATION = {"truncate", "K"}  # BMOConfig's truncate <= K (hypergrad=truncated): across the space, _check_truncate


def check_against_task(spec: JobSpec) -> list[str]:
    """Check the spec against BMOConfig and the task; return the task's metric names."""
    try:
        task_args = _load_task(spec.task)
        fields = _check_keys(spec, task_args)
        config = _config(spec, fields)
        problem = _problem(spec, task_args)
        searched_args = [p for p in spec.space if p.name not in fields]
        for p in searched_args:  # each end of a task argument's range must build the task (as fixed values must)
            _check_searched_argument(spec, p)
        _check_trains(spec, problem, searched_args)
        _check_conformance(spec, config)
        return _check_metrics(spec, problem, config)
    except CheckError as e:  # a check of the spec's own (the seeds, the scheduler's budget): it names the field
        raise SpecError(one_line(str(e))) from None


def _bare(name: str) -> str:
    """A searched task argument's name without ``task.``."""
    return name[len(TASK_PREFIX):] if name.startswith(TASK_PREFIX) else name


def _error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _with(message: str, values: dict) -> str:
    """``message`` (a task's, or torch's) and the values tried: the error does not say which of them it is about."""
    return f"{message} (with {', '.join(f'{k}={v!r}' for k, v in values.items())})" if values else message


def _load_task(task: str) -> dict[str, Any]:
    """The task's arguments (name → default), after importing it: its ``Args`` dataclass's fields, or for a problem
    without one its constructor's keyword arguments (``workers.tasks.task_arguments``)."""
    from workers import resolve_task
    from workers.tasks import task_arguments

    try:
        resolve_task(task)
    except ValueError as e:
        raise spec_error("task", str(e)) from None
    except Exception as e:  # a user's module that fails to import (not an ImportError), a relative module name
        raise spec_error("task", f"cannot load {task!r}: {_error_text(e)}") from None
    try:
        return task_arguments(task)
    except ValueError as e:  # an Args that is not a dataclass
        raise spec_error("task", str(e)) from None


def _check_keys(spec: JobSpec, task_args: dict) -> set[str]:
    """Fixed keys are BMOConfig fields, task_args keys the task's arguments, space keys either; the fields."""
    from workers import BMOConfig

    fields = {f.name for f in dataclasses.fields(BMOConfig)}
    for key in spec.fixed:
        if key not in fields:
            hint = " (task arguments go in task_args)" if key in task_args else ""
            raise spec_error(f"fixed.{key}", f"is not a BMOConfig field{hint}")
    for key in spec.task_args:
        if key not in task_args:
            raise spec_error(f"task_args.{key}", f"is not an argument of task {spec.task!r} (arguments: {', '.join(task_args)})")
    for p in spec.space:
        if p.name not in fields and _bare(p.name) not in task_args:
            raise spec_error(f"space.{p.name}", f"is neither a BMOConfig field nor an argument of task {spec.task!r}")
    return fields


def _config(spec: JobSpec, fields: set[str]):
    """The fixed values' BMOConfig, after checking every end of the searched fields, the seeds and ASHA's budget."""
    from workers import BMOConfig

    try:
        config = BMOConfig.from_dict(spec.fixed)
    except CheckError as e:
        raise e.at(f"fixed.{e.field}") from None
    except (ValueError, TypeError) as e:
        raise spec_error("fixed", str(e)) from None
    for p in spec.space:
        if p.name in fields:
            _check_ends(p, config)
    _check_truncate(spec, config)
    seeds = [("fixed.seed", config.seed)] + [("space.seed", v) for p in spec.space if p.name == "seed" for v in p.ends()]
    for where, value in seeds:
        if value >= TORCH_SEEDS:
            raise CheckError(where, "a seed < 2**64 (torch.manual_seed takes no larger seed)", value)
    if spec.scheduler.name == "asha":  # the trial budget, now with BMOConfig's default outer_steps
        steps = outer_steps_range(spec.fixed, spec.space) or Steps(
            config.outer_steps, config.outer_steps, "fixed.outer_steps", *["BMOConfig's default outer_steps"] * 2)
        fit_scheduler(spec.scheduler.grace_period, True, spec.scheduler.max_t, steps)
    return config


def _check_ends(p: Param, config) -> None:
    """Each end of a searched BMOConfig field's range makes a valid BMOConfig with the fixed values."""
    for value in p.ends():
        try:
            dataclasses.replace(config, **{p.name: value})
        except CheckError as e:
            if set(e.fields) == TRUNCATION:
                continue  # truncate <= K depends on both: _check_truncate
            if e.field == p.name:
                raise e.at(f"space.{p.name}") from None
            raise spec_error(f"space.{p.name}", str(e)) from None
        except (ValueError, TypeError) as e:
            raise spec_error(f"space.{p.name}", str(e)) from None


def _range(spec: JobSpec, name: str, default) -> tuple[Any, Any, str, str, bool]:
    """(lowest, highest, where the lowest is set, where the highest is, searched) of a BMOConfig field."""
    for p in spec.space:
        if p.name == name:
            if p.type == "categorical":
                return min(p.choices), max(p.choices), f"min(space.{name}.choices)", f"max(space.{name}.choices)", True
            return p.low, p.high, f"space.{name}.low", f"space.{name}.high", True
    where = f"fixed.{name}" if name in spec.fixed else f"BMOConfig's default {name}"
    return default, default, where, where, False


def _check_truncate(spec: JobSpec, config) -> None:
    """BMOConfig's truncate <= K (hypergrad=truncated) across the space. Both searched: some pair must fit (Optuna
    cannot tie them; a trial drawn outside fails); one searched: its whole range must fit the other's fixed value."""
    hypergrads = next((p.choices for p in spec.space if p.name == "hypergrad"), (config.hypergrad,))
    if "truncated" not in hypergrads:
        return
    t_low, t_high, t_low_at, t_high_at, t_searched = _range(spec, "truncate", config.truncate)
    k_low, k_high, k_low_at, k_high_at, k_searched = _range(spec, "K", config.K)
    if t_low > k_high:
        where = "space.truncate" if t_searched else "space.K" if k_searched else "space.hypergrad"
        raise spec_error(where, f"expected truncate <= K for hypergrad=truncated, got truncate >= {t_low} ({t_low_at}) "
                                f"and K <= {k_high} ({k_high_at})")
    if t_searched and not k_searched and t_high > k_high:
        raise spec_error("space.truncate", f"expected <= K = {k_high} ({k_high_at}) for hypergrad=truncated, "
                                           f"got {t_high_at} = {t_high}")
    if k_searched and not t_searched and k_low < t_low:
        raise spec_error("space.K", f"expected >= truncate = {t_low} ({t_low_at}) for hypergrad=truncated, "
                                    f"got {k_low_at} = {k_low}")


def _build(spec: JobSpec, args: dict, where: str, tried: dict, at: dict[str, str]):
    """The task built with ``args``. An error the task puts at one of its arguments goes to that argument's field
    in the spec (``at``); any other error goes to ``where``, with the values ``tried``."""
    from workers import make_problem

    try:
        return make_problem(spec.task, args)
    except CheckError as e:
        if e.field in at:
            raise e.at(at[e.field]) from None
        raise spec_error(where, _with(str(e), tried)) from None
    except (ValueError, TypeError) as e:
        raise spec_error(where, _with(str(e), tried)) from None
    except Exception as e:  # e.g. torch refusing a size or a seed: the task cannot be built with these arguments
        raise spec_error(where, _with(f"task {spec.task!r} cannot be built: {_error_text(e)}", tried)) from None


def _problem(spec: JobSpec, task_args: dict):
    return _build(spec, spec.task_args, "task_args", spec.task_args, {name: f"task_args.{name}" for name in task_args})


def _check_searched_argument(spec: JobSpec, p: Param) -> None:
    name = _bare(p.name)
    for value in p.ends():
        _build(spec, {**spec.task_args, name: value}, f"space.{p.name}", {name: value}, {name: f"space.{p.name}"})


def _check_trains(spec: JobSpec, problem, searched_args: list[Param]) -> None:
    if spec.objectives[0].value == "averaged" and not searched_args and not any(q.requires_grad for q in problem.parameters()):
        raise spec_error("objective.value", f"averaged needs ω to train, but task {spec.task!r} with these task_args has "
                                            "no trainable parameters")


def _check_conformance(spec: JobSpec, config) -> None:
    """A user's own problem passes the conformance checks (the shipped tasks have their tests)."""
    from workers import TASKS, make_problem
    from workers.testing import interface_error

    if spec.task not in TASKS:
        error = interface_error(lambda: make_problem(spec.task, spec.task_args), config)
        if error is not None:
            raise spec_error("task", f"{spec.task} fails the conformance check {error} (`hpo check {spec.task}` runs every check)")


def _check_metrics(spec: JobSpec, problem, config) -> list[str]:
    """The metrics of a first solve on a validation batch; each objective must be one of them."""
    from workers import evaluate_solve

    try:
        batch = next(iter(problem.batches("val")))
        u, _ = evaluate_solve(problem, batch, config, K=1)
        metrics = sorted([*problem.metrics(u, batch), "fp_residual"])
    except Exception as e:  # what every trial would meet at its first validation
        raise spec_error("task", f"{spec.task!r} fails a first solve with these task_args and fixed values: {_error_text(e)}") from None
    for i, o in enumerate(spec.objectives):
        if o.metric not in metrics:
            where = "objective" if len(spec.objectives) == 1 else f"objective[{i}]"
            raise spec_error(f"{where}.metric", f"task {spec.task!r} does not report {o.metric!r} (it reports: {', '.join(metrics)})")
    return metrics

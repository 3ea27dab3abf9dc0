"""Job spec (YAML) → validated dataclasses, without I/O (``load_spec`` reads the file).

A spec names a task, fixed BMOConfig values, a search space in Optuna's short
form, the objective, the sampler and scheduler, and where results go. Every
error is a ``SpecError`` whose one-line message names the field and the value,
in the style of ``workers.checks``: ``field: expected ..., got ...``.
Checks that need the task itself (space keys against BMOConfig and the task's
arguments, the objective metric) are in ``hpo.task_check``.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from hpo.errors import SpecError
from workers.checks import CheckError, check_bool, check_choice, check_int, check_real, is_int, is_real

SAMPLERS = ("tpe", "random", "gp", "cmaes", "nsga2")
STARTUP_SAMPLERS = ("tpe", "gp", "cmaes")  # samplers that start with random trials
SCHEDULERS = ("asha", "none")
PARAM_TYPES = ("float", "int", "categorical")
MODES = ("min", "max")
OBJECTIVE_VALUES = ("last", "best", "averaged")
DEFAULT_STORAGE = "sqlite:///hpo-results/studies.db"
DEFAULT_RESULTS_DIR = "hpo-results/ray"
TASK_PREFIX = "task."  # a space key "task.seed" names the task argument, not BMOConfig.seed

TOP_LEVEL = (
    "study", "task", "task_args", "fixed", "space", "objective", "sampler", "scheduler",
    "trials", "concurrency", "resources", "time_budget", "storage", "results_dir", "artifacts", "max_retries",
    "checkpoint_every", "keep_models", "init_from", "driver_lease", "storage_retry_window", "seed_from",
)
KEEP_MODELS = ("all", "best", "none")
GP_MAX_VALUES = 10_000_000  # values of one discrete parameter Optuna's GPSampler can list (8 bytes each)
TORCH_SEEDS = 2**64  # torch.manual_seed takes seeds below this
STUDY_MAX_BYTES = 200  # Ray Tune names a directory "<study>-<date>-<time>[-partN]", at most 255 bytes


@dataclass(frozen=True)
class Param:
    """One search-space entry in Optuna's short form, optionally conditional (``when``)."""

    name: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()
    when: dict[str, tuple] = field(default_factory=dict)

    def ends(self) -> list:
        """The values a check tries: the choices, or the ends of the range (as Optuna suggests them: a float
        parameter's are floats, also where the spec wrote 0 and 4)."""
        if self.type == "categorical":
            return list(self.choices)
        return [float(self.low), float(self.high)] if self.type == "float" else [self.low, self.high]


@dataclass(frozen=True)
class Objective:
    """A metric the task reports on the validation split, its direction, and which value of it counts.

    ``value``: ``last`` (at the last step), ``best`` (the best validation seen; the trial keeps the
    solver of that step) or ``averaged`` (of the moving average of ω, ``fixed.average``).
    """

    metric: str
    mode: str
    value: str = "last"

    @property
    def reported(self) -> str:
        """The key under which trials report this metric."""
        return {"last": "val_", "best": "val_best_", "averaged": "val_avg_"}[self.value] + self.metric


@dataclass(frozen=True)
class Sampler:
    name: str = "tpe"
    seed: int | None = 0
    n_startup_trials: int | None = None  # random trials before the model-based ones (tpe, gp, cmaes); None: Optuna's default


@dataclass(frozen=True)
class Scheduler:
    name: str = "asha"
    grace_period: int = 10
    max_t: int | None = None  # None: the trial's outer_steps
    reduction_factor: float = 3.0


@dataclass(frozen=True)
class Resources:
    cpu: float = 1.0
    gpu: float = 0.0


@dataclass(frozen=True)
class JobSpec:
    """A validated tuning job."""

    study: str
    task: str
    task_args: dict[str, Any]
    fixed: dict[str, Any]
    space: tuple[Param, ...]
    objectives: tuple[Objective, ...]
    sampler: Sampler = Sampler()
    scheduler: Scheduler = Scheduler()
    trials: int = 16
    concurrency: int = 1
    resources: Resources = Resources()
    time_budget: float | None = None
    storage: str = DEFAULT_STORAGE
    results_dir: str = DEFAULT_RESULTS_DIR
    artifacts: bool = True  # per-trial figures (convergence; restorations for image tasks) for the dashboard
    max_retries: int = 3  # times a trial is restarted when its worker or node is lost (never for errors in the task)
    checkpoint_every: int = 0  # outer steps between a trial's checkpoints (0: at a quarter, half, ... of outer_steps)
    keep_models: str = "all"  # which finished trials keep their trained solver as an artifact: all, best, none
    init_from: str | dict | None = None  # a solver file, or {study, trial}, whose ω every trial starts from
    driver_lease: float = 30.0  # seconds a dead driver's study stays locked against another driver
    storage_retry_window: float = 300.0  # seconds writes to an unreachable storage are retried before the job stops
    seed_from: dict | None = None  # {study, k, storage}: a new study starts with the best k trials of another

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def to_dict(self) -> dict:
        """A plain-data form (for the study's user attributes and resume checks)."""
        import dataclasses

        return dataclasses.asdict(self)


# --- small checkers: the value checks are workers.checks' (CheckError); parse_spec makes each a SpecError -----------


def spec_error(where: str, message: str) -> SpecError:
    """``where: message``, on one line."""
    return SpecError(one_line(f"{where}: {message}"))


def one_line(message: str) -> str:
    """``message`` on one line, also for a task's or a library's own message."""
    if "\n" in message or "\r" in message:
        message = " ".join(line.strip() for line in message.splitlines() if line.strip())
    return message


def _scalar(v) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def _number(where: str, v, low: float | None = None, *, low_open: bool = False) -> float:
    """A finite number (from a string too: YAML 1.1 reads 1e-4, without a dot, as one) above ``low``."""
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            pass
    return check_real(where, v, low, low_open=low_open)


def _mapping(where: str, v, allowed: tuple[str, ...] | None = None) -> dict:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise CheckError(where, "a mapping", v)
    for key in v:
        if not isinstance(key, str):
            raise CheckError(where or "spec", "string keys", key)
        if allowed is not None and key not in allowed:
            raise spec_error(f"{where}.{key}" if where else key, f"unknown field (allowed: {', '.join(allowed)})")
    return v


def _name(where: str, v, what: str) -> str:
    if not isinstance(v, str) or not v:
        raise CheckError(where, what, v)
    return v


# --- sections ----------------------------------------------------------------------


def _study(v) -> str:
    if not isinstance(v, str) or not v.strip():
        raise CheckError("study", "a non-empty name", v)
    if any(unicodedata.category(c) == "Cc" for c in v):  # a NUL cannot be in Ray Tune's directory name
        raise CheckError("study", "a name without control characters", v)
    size = len(v.strip().encode())
    if size > STUDY_MAX_BYTES:  # Ray Tune's experiment directory is named after it
        raise CheckError("study", f"at most {STUDY_MAX_BYTES} bytes (UTF-8; it names the Ray Tune experiment's "
                                  "directory)", size)
    return v.strip()


def _conditions(where: str, raw) -> dict[str, tuple]:
    when = {}
    for parent, values in _mapping(f"{where}.when", raw).items():
        when[parent] = tuple(values) if isinstance(values, list) else (values,)
        if not all(_scalar(v) for v in when[parent]):  # compared with sampled values, and put in sets
            raise CheckError(f"{where}.when.{parent}", "a value or a list of values", values)
    return when


def _categorical(name: str, raw: dict, when: dict) -> Param:
    where = f"space.{name}"
    extra = sorted(set(raw) & {"low", "high", "log", "step"})
    if extra:
        raise spec_error(f"{where}.{extra[0]}", "does not apply to a categorical parameter")
    choices = raw.get("choices")
    if not isinstance(choices, list) or not choices:
        raise CheckError(f"{where}.choices", "a non-empty list", choices)
    for c in choices:
        if not _scalar(c):
            raise CheckError(f"{where}.choices", "scalars", c)
    for i, c in enumerate(choices):  # Optuna finds a choice by ==, so 1, 1.0 and true are one choice to it
        if any(c == d for d in choices[:i]):
            raise CheckError(f"{where}.choices", "distinct values (1, 1.0 and true count as the same)", choices)
    return Param(name, "categorical", choices=tuple(choices), when=when)


def _bounds(where: str, kind: str, raw: dict) -> tuple:
    """(low, high, step) of an int or float parameter."""
    for key in ("low", "high"):
        if key not in raw:
            raise spec_error(where, f"missing '{key}'")
    step = raw.get("step")
    if kind == "int":
        low, high = check_int(f"{where}.low", raw["low"]), check_int(f"{where}.high", raw["high"])
        step = check_int(f"{where}.step", step, minimum=1) if step is not None else None
    else:
        low, high = _number(f"{where}.low", raw["low"]), _number(f"{where}.high", raw["high"])
        step = _number(f"{where}.step", step, 0, low_open=True) if step is not None else None
    if low > high:
        raise spec_error(where, f"expected low <= high, got low={low!r}, high={high!r}")
    if kind == "float" and not math.isfinite(high - low):  # Optuna's samplers draw in [low, high): overflow
        raise spec_error(where, f"expected a finite high - low, got low={low!r}, high={high!r}")
    return low, high, step


def _range_param(name: str, kind: str, raw: dict, when: dict) -> Param:
    where = f"space.{name}"
    if "choices" in raw:
        raise spec_error(f"{where}.choices", f"does not apply to a {kind} parameter")
    low, high, step = _bounds(where, kind, raw)
    log = check_bool(f"{where}.log", raw.get("log", False))
    if log and low <= 0:
        raise spec_error(where, f"expected low > 0 on a log scale, got low={low!r}")
    if log and step is not None:
        raise spec_error(where, "log and step cannot be combined")
    return Param(name, kind, low=low, high=high, log=log, step=step, when=when)


def _param(name: str, raw) -> Param:
    where = f"space.{name}"
    raw = _mapping(where, raw, ("type", "low", "high", "log", "step", "choices", "when"))
    if "type" not in raw:
        raise spec_error(where, "missing 'type' (float, int or categorical)")
    kind = check_choice(f"{where}.type", raw["type"], PARAM_TYPES)
    when = _conditions(where, raw.get("when"))
    if kind == "categorical":
        return _categorical(name, raw, when)
    return _range_param(name, kind, raw, when)


def _check_conditions(space: tuple[Param, ...], fixed: dict) -> None:
    """Each condition's parent is a parameter listed before it, or a fixed value; none is a key both ways."""
    names = [p.name for p in space]
    for p in space:
        for parent, values in p.when.items():
            if parent in names[: names.index(p.name)]:
                parent_param = space[names.index(parent)]
                possible = parent_param.choices if parent_param.type == "categorical" else None
                if possible is not None and not set(values) & set(possible):
                    raise spec_error(f"space.{p.name}.when.{parent}", f"{list(values)!r} is never among the choices {list(possible)!r}")
            elif parent not in fixed:
                raise spec_error(f"space.{p.name}.when", f"{parent!r} must be a parameter listed before it or a fixed value")
    overlap = sorted(set(names) & set(fixed))
    if overlap:
        raise spec_error(f"fixed.{overlap[0]}", "is also in space; a key is either fixed or searched")


class Steps(NamedTuple):
    """The fewest and most outer steps a trial can have, and where the spec says so."""

    low: int
    high: int
    field: str
    low_where: str
    high_where: str


def outer_steps_range(fixed: dict, space: tuple[Param, ...]) -> Steps | None:
    """The trials' outer_steps as the driver reads them (``hpo.driver._outer_steps``), when they are integers
    in the spec; None when the spec leaves them to BMOConfig's default or gives no integer (BMOConfig says why)."""
    for p in space:
        if p.name != "outer_steps":
            continue
        if p.type == "int":
            return Steps(p.low, p.high, "space.outer_steps", "space.outer_steps.low", "space.outer_steps.high")
        if p.type == "categorical" and all(is_int(c) for c in p.choices):
            return Steps(min(p.choices), max(p.choices), "space.outer_steps",
                         "min(space.outer_steps.choices)", "max(space.outer_steps.choices)")
        return None
    v = fixed.get("outer_steps")
    return Steps(v, v, "fixed.outer_steps", "fixed.outer_steps", "fixed.outer_steps") if is_int(v) else None


def _trial_steps(fixed: dict, space: tuple[Param, ...]) -> Steps | None:
    steps = outer_steps_range(fixed, space)  # None: BMOConfig's default (checked in check_against_task) or not an int
    if steps is not None and steps.low < 1:  # BMOConfig takes 0, but a trial of 0 steps has no result to report
        raise spec_error(steps.field, f"expected >= 1 (a trial trains at least one outer step), got {steps.low_where} = {steps.low}")
    return steps


def fit_scheduler(grace: int, grace_set: bool, max_t: int | None, steps: Steps | None) -> int:
    """ASHA's grace period within the trial budget (max_t, else the most outer steps a trial has): Ray asserts
    grace_period <= max_t. A default grace period is lowered to the budget; one the user set is an error."""
    if max_t is not None and steps is not None and max_t < steps.low:
        raise CheckError("scheduler.max_t", f">= the trials' outer_steps ({steps.low_where} = {steps.low}; ASHA stops "
                                            "a trial at max_t, before its last step, so none would complete)", max_t)
    if max_t is not None:
        budget, where = max_t, "scheduler.max_t"
    elif steps is not None:
        budget, where = steps.high, steps.high_where
    else:
        return grace  # BMOConfig's default outer_steps: check_against_task
    if grace <= budget:
        return grace
    if grace_set:
        raise CheckError("scheduler.grace_period", f"<= the trial budget ({where} = {budget})", grace)
    return budget


def _sampler(raw, trials, space: tuple[Param, ...]) -> Sampler:
    raw = _mapping("sampler", raw, ("name", "seed", "n_startup_trials"))
    seed = raw.get("seed", 0)
    if seed is not None:
        check_int("sampler.seed", seed, minimum=0)
        trials = trials if is_int(trials) and trials >= 1 else 1
        if seed > 2**32 - trials:  # numpy's seeds are < 2**32; a resumed run seeds with seed + the trials done
            raise CheckError("sampler.seed", f"<= 2**32 - trials = {2**32 - trials} (Optuna's samplers take seeds "
                                             "below 2**32, and a resumed run adds the trials done)", seed)
    name = check_choice("sampler.name", raw.get("name", "tpe"), SAMPLERS)
    startup = raw.get("n_startup_trials")
    if startup is not None:
        check_int("sampler.n_startup_trials", startup, minimum=0)
        if name not in STARTUP_SAMPLERS:
            raise spec_error("sampler.n_startup_trials", f"applies to {', '.join(STARTUP_SAMPLERS)}, not to {name!r}")
    if name == "gp":
        _check_gp_space(space)
    return Sampler(name, seed, startup)


def _check_gp_space(space: tuple[Param, ...]) -> None:
    """Optuna's GPSampler lists every value of a discrete parameter (an array of that size)."""
    for p in space:
        if p.type == "int" or p.step is not None:
            count = math.floor((p.high - p.low) / (p.step or 1)) + 1
            if count > GP_MAX_VALUES:
                raise CheckError(f"space.{p.name}", f"at most {GP_MAX_VALUES} values, as the gp sampler lists every "
                                                    "value of an int or stepped parameter (a larger step, or another "
                                                    "sampler)", count)


def _scheduler(raw, steps: Steps | None) -> Scheduler:
    raw = _mapping("scheduler", raw, ("name", "grace_period", "max_t", "reduction_factor"))
    name = check_choice("scheduler.name", raw.get("name", "asha"), SCHEDULERS)
    grace_set = raw.get("grace_period") is not None  # a default grace period adapts to a shorter budget
    grace = check_int("scheduler.grace_period", raw.get("grace_period", Scheduler.grace_period), minimum=1)
    max_t = raw.get("max_t")
    if max_t is not None:
        max_t = check_int("scheduler.max_t", max_t, minimum=1)
        if max_t < grace and grace_set:
            raise spec_error("scheduler", f"expected grace_period <= max_t, got grace_period={grace}, max_t={max_t}")
    rf = _number("scheduler.reduction_factor", raw.get("reduction_factor", 3), 1, low_open=True)
    if name == "asha":
        grace = fit_scheduler(grace, grace_set, max_t, steps)
    elif max_t is not None and not grace_set:
        grace = min(grace, max_t)
    return Scheduler(name, grace, max_t, rf)


def _objective(where: str, item) -> Objective:
    item = _mapping(where, item, ("metric", "mode", "value"))
    metric = _name(f"{where}.metric", item.get("metric"), "a metric name")
    metric = metric[len("val_"):] if metric.startswith("val_") else metric
    value = check_choice(f"{where}.value", item.get("value", "last"), OBJECTIVE_VALUES)
    return Objective(metric, check_choice(f"{where}.mode", item.get("mode"), MODES), value)


def _objectives(raw) -> tuple[Objective, ...]:
    items = raw if isinstance(raw, list) else [raw]
    if raw is None or not items:
        raise spec_error("objective", "missing (e.g. {metric: nmse_db, mode: min})")
    out = [_objective("objective" if not isinstance(raw, list) else f"objective[{i}]", item) for i, item in enumerate(items)]
    if len({o.metric for o in out}) != len(out):
        raise spec_error("objective", "lists a metric twice")
    if len({o.value for o in out}) > 1:  # the solver a trial keeps follows it
        raise spec_error("objective", f"expected one value for every objective, got {', '.join(o.value for o in out)}")
    return tuple(out)


def _check_averaged(fixed: dict, space: tuple[Param, ...]) -> None:
    """Objective value ``averaged`` needs a moving average of ω: 0 < average (a trial with 0 reports no val_avg_*)."""
    names = [p.name for p in space]
    if not ("average" in fixed or "average" in names):
        raise spec_error("objective.value", "averaged needs the decay of ω's moving average: set fixed.average (e.g. 0.99)")
    ends = [fixed["average"]] if "average" in fixed else space[names.index("average")].ends()
    zero = next((v for v in ends if is_real(v) and v <= 0), None)
    if zero is not None:
        where = "fixed.average" if "average" in fixed else "space.average"
        raise CheckError(where, "0 < average < 1 for objective value averaged (a moving average of ω, e.g. 0.99)", zero)


def _check_study_kind(objectives: tuple[Objective, ...], sampler: Sampler, scheduler: Scheduler) -> None:
    if len(objectives) > 1 and scheduler.name != "none":
        raise spec_error("scheduler", "a multi-objective study cannot be pruned by ASHA; set scheduler: {name: none}")
    if len(objectives) > 1 and sampler.name in ("gp", "cmaes"):
        raise spec_error("sampler.name", f"{sampler.name!r} supports one objective only; use tpe, nsga2 or random")


def _resources(raw) -> Resources:
    raw = _mapping("resources", raw, ("cpu", "gpu"))
    cpu = _number("resources.cpu", raw.get("cpu", 1), 0, low_open=True)
    gpu = _number("resources.gpu", raw.get("gpu", 0), 0)
    if gpu > 1 and gpu != int(gpu):  # Ray shares a GPU between trials (a fraction <= 1) or gives whole GPUs
        raise CheckError("resources.gpu", "a share of one GPU (<= 1) or a whole number of GPUs", gpu)
    if 0 < gpu < 1e-4:
        raise CheckError("resources.gpu", "0 or at least 0.0001 (Ray counts GPU shares in steps of 0.0001)", gpu)
    if cpu < 1e-4:
        raise CheckError("resources.cpu", "at least 0.0001 (Ray counts CPU shares in steps of 0.0001)", cpu)
    return Resources(cpu, gpu)


def _storage_url(v) -> str:
    if not isinstance(v, str) or "://" not in v:
        raise CheckError("storage", "a database URL such as sqlite:///path.db or postgresql://host/db", v)
    scheme = v.split("://", 1)[0].split("+", 1)[0]
    if scheme not in ("sqlite", "postgresql", "mysql"):
        raise spec_error("storage", f"expected the scheme sqlite, postgresql or mysql, got {scheme!r} in {v!r}")
    return v


def _results_dir(data: dict) -> str:
    from hpo.storage import default_results_dir  # here: hpo.storage imports optuna, and `hpo --help` stays fast

    results_dir = data.get("results_dir", default_results_dir(str(data.get("storage", DEFAULT_STORAGE))))
    return _name("results_dir", results_dir, "a path or URI")


def _init_from(v) -> str | dict | None:
    if v is None or (isinstance(v, str) and v):
        return v
    if isinstance(v, dict):
        v = _mapping("init_from", v, ("study", "trial", "storage"))
        _name("init_from.study", v.get("study"), "a study name")
        if v.get("trial") is not None:
            check_int("init_from.trial", v["trial"], minimum=0)
        return dict(v)
    raise CheckError("init_from", "a solver file or {study: NAME, trial: N}", v)


def _seed_from(v) -> dict | None:
    if v is None:
        return None
    if isinstance(v, str) and v:
        v = {"study": v}
    v = _mapping("seed_from", v, ("study", "k", "storage"))
    _name("seed_from.study", v.get("study"), "a study name")
    k = check_int("seed_from.k", v.get("k", 5), minimum=1)
    if v.get("storage") is not None:
        _storage_url(v["storage"])
    return {"study": v["study"], "k": k, **({"storage": v["storage"]} if v.get("storage") else {})}


def _run_settings(data: dict) -> dict:
    """The JobSpec fields of how a run goes: its time, its results, its trials' checkpoints and retries."""
    time_budget = data.get("time_budget")
    return dict(
        time_budget=None if time_budget is None else _number("time_budget", time_budget, 0, low_open=True),
        results_dir=_results_dir(data),
        checkpoint_every=check_int("checkpoint_every", data.get("checkpoint_every", 0), minimum=0),
        keep_models=check_choice("keep_models", data.get("keep_models", "all"), KEEP_MODELS),
        init_from=_init_from(data.get("init_from")),
        driver_lease=_number("driver_lease", data.get("driver_lease", 30.0), 0, low_open=True),
        storage_retry_window=_number("storage_retry_window", data.get("storage_retry_window", 300.0), 0),
        seed_from=_seed_from(data.get("seed_from")),
        artifacts=check_bool("artifacts", data.get("artifacts", True)),
        max_retries=check_int("max_retries", data.get("max_retries", 3), minimum=0),
    )


def _check_top_level(data: Any, source: str) -> None:
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a job spec must be a YAML mapping, got {type(data).__name__}")
    if "report_interval" in data:
        raise spec_error("report_interval", "was removed: a trial reports at every validation (fixed.eval_every), "
                                       "so a scheduler sees the same steps on any machine")
    _mapping("", data, TOP_LEVEL)


def parse_spec(data: Any, *, source: str = "spec") -> JobSpec:
    """Validate a spec already read into Python data (a mapping) and return a ``JobSpec`` (no I/O)."""
    try:
        return _parse(data, source)
    except CheckError as e:  # the value checks name the spec's field
        raise SpecError(one_line(str(e))) from None


def _parse(data: Any, source: str) -> JobSpec:
    _check_top_level(data, source)
    study = _study(data.get("study"))
    task = _name("task", data.get("task"), "a registry name or 'module:Class'")
    space = tuple(_param(name, raw) for name, raw in _mapping("space", data.get("space")).items())
    fixed = dict(_mapping("fixed", data.get("fixed")))
    _check_conditions(space, fixed)
    steps = _trial_steps(fixed, space)
    sampler = _sampler(data.get("sampler"), data.get("trials", 16), space)
    scheduler = _scheduler(data.get("scheduler", {"name": "asha"}), steps)
    objectives = _objectives(data.get("objective"))
    if objectives[0].value == "averaged":
        _check_averaged(fixed, space)
    _check_study_kind(objectives, sampler, scheduler)
    return JobSpec(
        study=study, task=task, fixed=fixed, space=space, objectives=objectives, sampler=sampler, scheduler=scheduler,
        resources=_resources(data.get("resources")),
        **_run_settings(data),
        task_args=dict(_mapping("task_args", data.get("task_args"))),
        trials=check_int("trials", data.get("trials", 16), minimum=1),
        concurrency=check_int("concurrency", data.get("concurrency", 1), minimum=1),
        storage=_storage_url(data.get("storage", DEFAULT_STORAGE)),
    )


def load_spec(path: str | Path, overrides: dict[str, Any] | None = None) -> JobSpec:
    """Read and validate a YAML spec; ``overrides`` maps dotted keys (``fixed.K``, ``trials``) to values."""
    return parse_spec(read_spec_data(path, overrides), source=str(path))


def read_spec_data(path: str | Path, overrides: dict[str, Any] | None = None) -> Any:
    """The spec's YAML data with ``overrides`` applied, not yet validated."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise SpecError(f"{path}: cannot read the spec ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(f"{path}: not valid YAML{at}: {getattr(e, 'problem', e)}") from None
    if isinstance(data, dict):
        for dotted, value in (overrides or {}).items():
            apply_override(data, dotted, value)
    return data


def apply_override(data: dict, dotted: str, value) -> bool:
    """Set ``data[a][b] = value`` for ``dotted = "a.b"``, creating mappings on the way.

    ``fixed.NAME`` or ``task_args.NAME`` of a searched parameter pins it: NAME leaves the space
    (``task.NAME`` first, for a task argument), and the return value is True.
    """
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        if node.get(key) is None:
            node[key] = {}
        if not isinstance(node[key], dict):
            raise SpecError(f"--set {dotted}: {key!r} is not a mapping in the spec")
        node = node[key]
    node[keys[-1]] = value
    space = data.get("space")
    if len(keys) != 2 or keys[0] not in ("fixed", "task_args") or not isinstance(space, dict):
        return False
    for name in [keys[1]] if keys[0] == "fixed" else [TASK_PREFIX + keys[1], keys[1]]:
        if name in space:
            del space[name]
            return True
    return False

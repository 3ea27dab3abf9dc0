"""Job spec (YAML) → validated dataclasses.

A spec names a task, fixed BMOConfig values, a search space in Optuna's short
form, the objective, the sampler and scheduler, and where results go. Every
error is a ``SpecError`` whose one-line message names the field and the value.
Checks that need the task itself (space keys against BMOConfig and the task's
arguments, the objective metric) are in ``check_against_task``.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from hpo.errors import SpecError

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


# --- small checkers ------------------------------------------------------------------


def _fail(where: str, message: str) -> SpecError:
    if "\n" in message or "\r" in message:  # one line, also for a task's or a library's own message
        message = " ".join(line.strip() for line in message.splitlines() if line.strip())
    return SpecError(f"{where}: {message}")


def _scalar(v) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _number(where: str, v, *, positive=False, nonnegative=False) -> float:
    if isinstance(v, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            v = float(v)
        except ValueError:
            pass
    if not _is_number(v):
        raise _fail(where, f"must be a number, got {v!r}")
    if positive and v <= 0:
        raise _fail(where, f"must be > 0, got {v!r}")
    if nonnegative and v < 0:
        raise _fail(where, f"must be >= 0, got {v!r}")
    return v


def _integer(where: str, v, *, minimum: int | None = None) -> int:
    if not _is_int(v):
        raise _fail(where, f"must be an integer, got {v!r}")
    if minimum is not None and v < minimum:
        raise _fail(where, f"must be >= {minimum}, got {v!r}")
    return v


def _mapping(where: str, v, allowed: tuple[str, ...] | None = None) -> dict:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise _fail(where, f"must be a mapping, got {v!r}")
    for key in v:
        if not isinstance(key, str):
            raise _fail(where, f"keys must be strings, got {key!r}")
        if allowed is not None and key not in allowed:
            raise _fail(f"{where}.{key}" if where else key, f"unknown field (allowed: {', '.join(allowed)})")
    return v


def _choice(where: str, v, choices: tuple[str, ...]) -> str:
    if v not in choices:
        raise _fail(where, f"must be one of {', '.join(choices)}, got {v!r}")
    return v


# --- sections ----------------------------------------------------------------------


def _param(name: str, raw) -> Param:
    where = f"space.{name}"
    raw = _mapping(where, raw, ("type", "low", "high", "log", "step", "choices", "when"))
    if "type" not in raw:
        raise _fail(where, "missing 'type' (float, int or categorical)")
    kind = _choice(f"{where}.type", raw["type"], PARAM_TYPES)
    when = {}
    for parent, values in _mapping(f"{where}.when", raw.get("when")).items():
        when[parent] = tuple(values) if isinstance(values, list) else (values,)
        if not all(_scalar(v) for v in when[parent]):  # compared with sampled values, and put in sets
            raise _fail(f"{where}.when.{parent}", f"must be a value or a list of values, got {values!r}")
    if kind == "categorical":
        extra = sorted(set(raw) & {"low", "high", "log", "step"})
        if extra:
            raise _fail(f"{where}.{extra[0]}", "does not apply to a categorical parameter")
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices:
            raise _fail(f"{where}.choices", f"must be a non-empty list, got {choices!r}")
        for c in choices:
            if not (c is None or isinstance(c, (bool, int, float, str))):
                raise _fail(f"{where}.choices", f"must hold scalars, got {c!r}")
        for i, c in enumerate(choices):  # Optuna finds a choice by ==, so 1, 1.0 and true are one choice to it
            if any(c == d for d in choices[:i]):
                raise _fail(f"{where}.choices", f"must be distinct (1, 1.0 and true count as the same), got {choices!r}")
        return Param(name, kind, choices=tuple(choices), when=when)
    if "choices" in raw:
        raise _fail(f"{where}.choices", f"does not apply to a {kind} parameter")
    for key in ("low", "high"):
        if key not in raw:
            raise _fail(where, f"missing '{key}'")
    if kind == "int":
        low, high = _integer(f"{where}.low", raw["low"]), _integer(f"{where}.high", raw["high"])
        step = _integer(f"{where}.step", raw["step"], minimum=1) if raw.get("step") is not None else None
    else:
        low, high = _number(f"{where}.low", raw["low"]), _number(f"{where}.high", raw["high"])
        step = _number(f"{where}.step", raw["step"], positive=True) if raw.get("step") is not None else None
    if low > high:
        raise _fail(where, f"low <= high must hold, got low={low!r}, high={high!r}")
    if kind == "float" and not math.isfinite(high - low):  # Optuna's samplers draw in [low, high): overflow
        raise _fail(where, f"high - low must be a finite number, got low={low!r}, high={high!r}")
    log = raw.get("log", False)
    if not isinstance(log, bool):
        raise _fail(f"{where}.log", f"must be true or false, got {log!r}")
    if log and low <= 0:
        raise _fail(where, f"log scale needs low > 0, got low={low!r}")
    if log and step is not None:
        raise _fail(where, "log and step cannot be combined")
    return Param(name, kind, low=low, high=high, log=log, step=step, when=when)


def _ends(p: Param) -> list:
    """The values of ``p`` a check tries: its choices, or the ends of its range (as Optuna suggests them: a float
    parameter's are floats, also where the spec wrote 0 and 4)."""
    if p.type == "categorical":
        return list(p.choices)
    return [float(p.low), float(p.high)] if p.type == "float" else [p.low, p.high]


class _Steps(NamedTuple):
    """The fewest and most outer steps a trial can have, and where the spec says so."""

    low: int
    high: int
    field: str
    low_where: str
    high_where: str


def _outer_steps_range(fixed: dict, space: tuple[Param, ...]) -> _Steps | None:
    """The trials' outer_steps as the driver reads them (``hpo.driver._outer_steps``), when they are integers
    in the spec; None when the spec leaves them to BMOConfig's default or gives no integer (BMOConfig says why)."""
    for p in space:
        if p.name != "outer_steps":
            continue
        if p.type == "int":
            return _Steps(p.low, p.high, "space.outer_steps", "space.outer_steps.low", "space.outer_steps.high")
        if p.type == "categorical" and all(_is_int(c) for c in p.choices):
            return _Steps(min(p.choices), max(p.choices), "space.outer_steps",
                          "min(space.outer_steps.choices)", "max(space.outer_steps.choices)")
        return None
    v = fixed.get("outer_steps")
    return _Steps(v, v, "fixed.outer_steps", "fixed.outer_steps", "fixed.outer_steps") if _is_int(v) else None


def _fit_scheduler(grace: int, grace_set: bool, max_t: int | None, steps: _Steps | None) -> int:
    """ASHA's grace period within the trial budget (max_t, else the most outer steps a trial has): Ray asserts
    grace_period <= max_t. A default grace period is lowered to the budget; one the user set is an error."""
    if max_t is not None and steps is not None and max_t < steps.low:
        raise _fail("scheduler.max_t", f"must be >= the trials' outer_steps ({steps.low_where} = {steps.low}): ASHA stops "
                                       f"a trial at max_t, before its last step, so none would complete; got {max_t}")
    if max_t is not None:
        budget, where = max_t, "scheduler.max_t"
    elif steps is not None:
        budget, where = steps.high, steps.high_where
    else:
        return grace  # BMOConfig's default outer_steps: check_against_task
    if grace <= budget:
        return grace
    if grace_set:
        raise _fail("scheduler.grace_period", f"must be <= the trial budget ({where} = {budget}), got {grace}")
    return budget


def _objectives(raw) -> tuple[Objective, ...]:
    items = raw if isinstance(raw, list) else [raw]
    if raw is None or not items:
        raise _fail("objective", "missing (e.g. {metric: nmse_db, mode: min})")
    out = []
    for i, item in enumerate(items):
        where = "objective" if not isinstance(raw, list) else f"objective[{i}]"
        item = _mapping(where, item, ("metric", "mode", "value"))
        metric = item.get("metric")
        if not isinstance(metric, str) or not metric:
            raise _fail(f"{where}.metric", f"must be a metric name, got {metric!r}")
        metric = metric[len("val_"):] if metric.startswith("val_") else metric
        value = _choice(f"{where}.value", item.get("value", "last"), OBJECTIVE_VALUES)
        out.append(Objective(metric, _choice(f"{where}.mode", item.get("mode"), MODES), value))
    if len({o.metric for o in out}) != len(out):
        raise _fail("objective", "lists a metric twice")
    if len({o.value for o in out}) > 1:  # the solver a trial keeps follows it
        raise _fail("objective", f"the objectives' value must be the same, got {', '.join(o.value for o in out)}")
    return tuple(out)


def _storage_url(v) -> str:
    if not isinstance(v, str) or "://" not in v:
        raise _fail("storage", f"must be a database URL such as sqlite:///path.db or postgresql://host/db, got {v!r}")
    scheme = v.split("://", 1)[0].split("+", 1)[0]
    if scheme not in ("sqlite", "postgresql", "mysql"):
        raise _fail("storage", f"unsupported scheme {scheme!r} (sqlite, postgresql, mysql), got {v!r}")
    return v


def _init_from(v) -> str | dict | None:
    if v is None or (isinstance(v, str) and v):
        return v
    if isinstance(v, dict):
        v = _mapping("init_from", v, ("study", "trial", "storage"))
        if not isinstance(v.get("study"), str) or not v["study"]:
            raise _fail("init_from.study", f"must be a study name, got {v.get('study')!r}")
        if v.get("trial") is not None:
            _integer("init_from.trial", v["trial"], minimum=0)
        return dict(v)
    raise _fail("init_from", f"must be a solver file or {{study: NAME, trial: N}}, got {v!r}")


def _seed_from(v) -> dict | None:
    if v is None:
        return None
    if isinstance(v, str) and v:
        v = {"study": v}
    v = _mapping("seed_from", v, ("study", "k", "storage"))
    if not isinstance(v.get("study"), str) or not v["study"]:
        raise _fail("seed_from.study", f"must be a study name, got {v.get('study')!r}")
    k = _integer("seed_from.k", v.get("k", 5), minimum=1)
    if v.get("storage") is not None:
        _storage_url(v["storage"])
    return {"study": v["study"], "k": k, **({"storage": v["storage"]} if v.get("storage") else {})}


def parse_spec(data: Any, *, source: str = "spec") -> JobSpec:
    """Validate a spec already read into Python data (a mapping) and return a ``JobSpec``."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a job spec must be a YAML mapping, got {type(data).__name__}")
    if "report_interval" in data:
        raise _fail("report_interval", "was removed: a trial reports at every validation (fixed.eval_every), "
                                       "so a scheduler sees the same steps on any machine")
    _mapping("", data, TOP_LEVEL)
    study = data.get("study")
    if not isinstance(study, str) or not study.strip():
        raise _fail("study", f"must be a non-empty name, got {study!r}")
    if any(unicodedata.category(c) == "Cc" for c in study):  # a NUL cannot be in Ray Tune's directory name
        raise _fail("study", f"must not hold control characters, got {study!r}")
    if len(study.strip().encode()) > STUDY_MAX_BYTES:  # Ray Tune's experiment directory is named after it
        raise _fail("study", f"must be at most {STUDY_MAX_BYTES} bytes (UTF-8; it names the Ray Tune experiment's "
                             f"directory), got {len(study.strip().encode())}")
    task = data.get("task")
    if not isinstance(task, str) or not task:
        raise _fail("task", f"must be a registry name or 'module:Class', got {task!r}")
    space_raw = _mapping("space", data.get("space"))
    space = tuple(_param(name, raw) for name, raw in space_raw.items())
    names = [p.name for p in space]
    fixed = dict(_mapping("fixed", data.get("fixed")))
    for p in space:
        for parent, values in p.when.items():
            if parent in names[: names.index(p.name)]:
                parent_param = space[names.index(parent)]
                possible = parent_param.choices if parent_param.type == "categorical" else None
                if possible is not None and not set(values) & set(possible):
                    raise _fail(f"space.{p.name}.when.{parent}", f"{list(values)!r} is never among the choices {list(possible)!r}")
            elif parent not in fixed:
                raise _fail(f"space.{p.name}.when", f"{parent!r} must be a parameter listed before it or a fixed value")
    overlap = sorted(set(names) & set(fixed))
    if overlap:
        raise _fail(f"fixed.{overlap[0]}", "is also in space; a key is either fixed or searched")
    steps = _outer_steps_range(fixed, space)  # None: BMOConfig's default (checked in check_against_task) or not an int
    if steps is not None and steps.low < 1:  # BMOConfig takes 0, but a trial of 0 steps has no result to report
        raise _fail(steps.field, f"must be >= 1 (a trial trains at least one outer step), got {steps.low_where} = {steps.low}")

    sampler_raw = _mapping("sampler", data.get("sampler"), ("name", "seed", "n_startup_trials"))
    seed = sampler_raw.get("seed", 0)
    if seed is not None:
        _integer("sampler.seed", seed, minimum=0)
        n_trials = data.get("trials", 16)
        n_trials = n_trials if _is_int(n_trials) and n_trials >= 1 else 1
        if seed > 2**32 - n_trials:  # numpy's seeds are < 2**32; a resumed run seeds with seed + the trials done
            raise _fail("sampler.seed", f"must be <= 2**32 - trials = {2**32 - n_trials} (Optuna's samplers take seeds "
                                        f"below 2**32, and a resumed run adds the trials done), got {seed}")
    sampler_name = _choice("sampler.name", sampler_raw.get("name", "tpe"), SAMPLERS)
    startup = sampler_raw.get("n_startup_trials")
    if startup is not None:
        _integer("sampler.n_startup_trials", startup, minimum=0)
        if sampler_name not in STARTUP_SAMPLERS:
            raise _fail("sampler.n_startup_trials", f"applies to {', '.join(STARTUP_SAMPLERS)}, not to {sampler_name!r}")
    sampler = Sampler(sampler_name, seed, startup)
    if sampler_name == "gp":  # Optuna's GPSampler lists every value of a discrete parameter (an array of that size)
        for p in space:
            if p.type == "int" or p.step is not None:
                count = math.floor((p.high - p.low) / (p.step or 1)) + 1
                if count > GP_MAX_VALUES:
                    raise _fail(f"space.{p.name}", f"the gp sampler lists every value of an int or stepped parameter: "
                                                   f"at most {GP_MAX_VALUES}, got {count} (a larger step, or another "
                                                   f"sampler)")

    sched_raw = data.get("scheduler", {"name": "asha"})
    sched_raw = _mapping("scheduler", sched_raw, ("name", "grace_period", "max_t", "reduction_factor"))
    sched_name = _choice("scheduler.name", sched_raw.get("name", "asha"), SCHEDULERS)
    grace_set = sched_raw.get("grace_period") is not None  # a default grace period adapts to a shorter budget
    grace = _integer("scheduler.grace_period", sched_raw.get("grace_period", Scheduler.grace_period), minimum=1)
    max_t = sched_raw.get("max_t")
    if max_t is not None:
        max_t = _integer("scheduler.max_t", max_t, minimum=1)
        if max_t < grace and grace_set:
            raise _fail("scheduler", f"grace_period <= max_t must hold, got grace_period={grace}, max_t={max_t}")
    rf = _number("scheduler.reduction_factor", sched_raw.get("reduction_factor", 3), positive=True)
    if rf <= 1:
        raise _fail("scheduler.reduction_factor", f"must be > 1, got {rf!r}")
    if sched_name == "asha":
        grace = _fit_scheduler(grace, grace_set, max_t, steps)
    elif max_t is not None and not grace_set:
        grace = min(grace, max_t)
    scheduler = Scheduler(sched_name, grace, max_t, rf)

    objectives = _objectives(data.get("objective"))
    if objectives[0].value == "averaged" and not ("average" in fixed or "average" in names):
        raise _fail("objective.value", "averaged needs the decay of ω's moving average: set fixed.average (e.g. 0.99)")
    if objectives[0].value == "averaged":  # average = 0 keeps no average, so a trial would report no val_avg_*
        ends = [fixed["average"]] if "average" in fixed else _ends(space[names.index("average")])
        zero = next((v for v in ends if _is_number(v) and v <= 0), None)
        if zero is not None:
            where = "fixed.average" if "average" in fixed else "space.average"
            raise _fail(where, f"objective value averaged needs a moving average of ω (0 < average < 1, e.g. 0.99), got {zero!r}")
    if len(objectives) > 1 and scheduler.name != "none":
        raise _fail("scheduler", "a multi-objective study cannot be pruned by ASHA; set scheduler: {name: none}")
    if len(objectives) > 1 and sampler.name in ("gp", "cmaes"):
        raise _fail("sampler.name", f"{sampler.name!r} supports one objective only; use tpe, nsga2 or random")

    res_raw = _mapping("resources", data.get("resources"), ("cpu", "gpu"))
    resources = Resources(
        cpu=_number("resources.cpu", res_raw.get("cpu", 1), positive=True),
        gpu=_number("resources.gpu", res_raw.get("gpu", 0), nonnegative=True),
    )
    if resources.gpu > 1 and resources.gpu != int(resources.gpu):
        # Ray shares a GPU between trials (a fraction <= 1) or gives whole GPUs, never 1.5 of them
        raise _fail("resources.gpu", f"a share of one GPU (<= 1) or a whole number of GPUs, got {resources.gpu!r}")
    if 0 < resources.gpu < 1e-4:
        raise _fail("resources.gpu", f"Ray counts GPU shares in steps of 0.0001, got {resources.gpu!r}")
    if resources.cpu < 1e-4:
        raise _fail("resources.cpu", f"Ray counts CPU shares in steps of 0.0001, got {resources.cpu!r}")
    time_budget = data.get("time_budget")
    if time_budget is not None:
        time_budget = _number("time_budget", time_budget, positive=True)
    from hpo.storage import default_results_dir  # here: hpo.storage imports optuna, and `hpo --help` stays fast
    results_dir = data.get("results_dir", default_results_dir(str(data.get("storage", DEFAULT_STORAGE))))
    if not isinstance(results_dir, str) or not results_dir:
        raise _fail("results_dir", f"must be a path or URI, got {results_dir!r}")
    checkpoint_every = _integer("checkpoint_every", data.get("checkpoint_every", 0), minimum=0)
    keep_models = _choice("keep_models", data.get("keep_models", "all"), KEEP_MODELS)
    init_from = _init_from(data.get("init_from"))
    driver_lease = _number("driver_lease", data.get("driver_lease", 30.0), positive=True)
    retry_window = _number("storage_retry_window", data.get("storage_retry_window", 300.0), nonnegative=True)
    seed_from = _seed_from(data.get("seed_from"))
    artifacts = data.get("artifacts", True)
    if not isinstance(artifacts, bool):
        raise _fail("artifacts", f"must be true or false, got {artifacts!r}")
    max_retries = _integer("max_retries", data.get("max_retries", 3), minimum=0)
    return JobSpec(
        artifacts=artifacts,
        max_retries=max_retries,
        checkpoint_every=checkpoint_every,
        keep_models=keep_models,
        init_from=init_from,
        driver_lease=driver_lease,
        storage_retry_window=retry_window,
        seed_from=seed_from,
        study=study.strip(),
        task=task,
        task_args=dict(_mapping("task_args", data.get("task_args"))),
        fixed=fixed,
        space=space,
        objectives=objectives,
        sampler=sampler,
        scheduler=scheduler,
        trials=_integer("trials", data.get("trials", 16), minimum=1),
        concurrency=_integer("concurrency", data.get("concurrency", 1), minimum=1),
        resources=resources,
        time_budget=time_budget,
        storage=_storage_url(data.get("storage", DEFAULT_STORAGE)),
        results_dir=results_dir,
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


def _error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _naming(message: str, values: dict) -> str:
    """``message`` (a task's, or torch's), with the values tried when it names none of them."""
    if not values or any(f"{k}=" in message for k in values):
        return message
    return f"{message} (with {', '.join(f'{k}={v!r}' for k, v in values.items())})"


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
        raise _fail(where, f"truncate <= K must hold for hypergrad=truncated, got truncate >= {t_low} ({t_low_at}) "
                           f"and K <= {k_high} ({k_high_at})")
    if t_searched and not k_searched and t_high > k_high:
        raise _fail("space.truncate", f"must be <= K = {k_high} ({k_high_at}) for hypergrad=truncated, "
                                      f"got {t_high_at} = {t_high}")
    if k_searched and not t_searched and k_low < t_low:
        raise _fail("space.K", f"must be >= truncate = {t_low} ({t_low_at}) for hypergrad=truncated, "
                               f"got {k_low_at} = {k_low}")


def check_against_task(spec: JobSpec) -> list[str]:
    """Check the spec against BMOConfig and the task (imports torch); return the task's metric names.

    Space and fixed keys must be BMOConfig fields or task arguments; fixed values
    and each space range's ends must make a valid BMOConfig; the task must build
    with ``task_args`` and, if it is a ``module:Class``, pass the conformance checks
    (``workers.testing``); each objective must be a metric the task reports.
    """
    import dataclasses

    from workers import TASKS, BMOConfig, evaluate_solve, make_problem, resolve_task
    from workers.tasks import task_parameters
    from workers.testing import interface_error

    try:
        resolve_task(spec.task)
    except ValueError as e:
        raise _fail("task", str(e)) from None
    except Exception as e:  # a user's module that fails to import (not an ImportError), a relative module name
        raise _fail("task", f"cannot load {spec.task!r}: {_error_text(e)}") from None
    task_args = task_parameters(spec.task)
    fields = {f.name for f in dataclasses.fields(BMOConfig)}
    for key in spec.fixed:
        if key not in fields:
            hint = " (task arguments go in task_args)" if key in task_args else ""
            raise _fail(f"fixed.{key}", f"is not a BMOConfig field{hint}")
    for key in spec.task_args:
        if key not in task_args:
            raise _fail(f"task_args.{key}", f"is not an argument of task {spec.task!r} (arguments: {', '.join(task_args)})")
    for p in spec.space:
        bare = p.name[len(TASK_PREFIX):] if p.name.startswith(TASK_PREFIX) else p.name
        if p.name not in fields and bare not in task_args:
            raise _fail(f"space.{p.name}", f"is neither a BMOConfig field nor an argument of task {spec.task!r}")
    try:
        config = BMOConfig.from_dict(spec.fixed)
    except (ValueError, TypeError) as e:
        raise _fail("fixed", str(e)) from None
    for p in spec.space:
        if p.name not in fields:
            continue
        for value in _ends(p):
            try:
                dataclasses.replace(config, **{p.name: value})
            except (ValueError, TypeError) as e:
                if p.name == "truncate" and "truncate must be <=" in str(e):
                    continue  # against K: _check_truncate
                raise _fail(f"space.{p.name}", str(e)) from None
    _check_truncate(spec, config)
    seeds = [("fixed.seed", config.seed)] + [("space.seed", v) for p in spec.space if p.name == "seed" for v in _ends(p)]
    for where, value in seeds:
        if value >= TORCH_SEEDS:
            raise _fail(where, f"must be < 2**64 (torch.manual_seed takes no larger seed), got {value}")
    if spec.scheduler.name == "asha":  # the trial budget, now with BMOConfig's default outer_steps
        steps = _outer_steps_range(spec.fixed, spec.space) or _Steps(
            config.outer_steps, config.outer_steps, "fixed.outer_steps", *["BMOConfig's default outer_steps"] * 2)
        _fit_scheduler(spec.scheduler.grace_period, True, spec.scheduler.max_t, steps)
    try:
        problem = make_problem(spec.task, spec.task_args)
    except (ValueError, TypeError) as e:
        raise _fail("task_args", _naming(str(e), spec.task_args)) from None
    except Exception as e:  # e.g. torch refusing a size or a seed: the task cannot be built with these arguments
        raise _fail("task_args", _naming(f"task {spec.task!r} cannot be built: {_error_text(e)}", spec.task_args)) from None
    searched_args = [p for p in spec.space if p.name not in fields]
    for p in searched_args:  # each end of a task argument's range must build the task (as fixed values must)
        bare = p.name[len(TASK_PREFIX):] if p.name.startswith(TASK_PREFIX) else p.name
        for value in _ends(p):
            try:
                make_problem(spec.task, {**spec.task_args, bare: value})
            except (ValueError, TypeError) as e:
                raise _fail(f"space.{p.name}", _naming(str(e), {bare: value})) from None
            except Exception as e:
                message = f"task {spec.task!r} cannot be built: {_error_text(e)}"
                raise _fail(f"space.{p.name}", _naming(message, {bare: value})) from None
    if spec.objectives[0].value == "averaged" and not searched_args and not any(q.requires_grad for q in problem.parameters()):
        raise _fail("objective.value", f"averaged needs ω to train, but task {spec.task!r} with these task_args has no "
                                       "trainable parameters")
    if spec.task not in TASKS:  # a user's own problem (the shipped tasks have their tests): the conformance checks
        error = interface_error(lambda: make_problem(spec.task, spec.task_args), config)
        if error is not None:
            raise _fail("task", f"{spec.task} fails the conformance check {error} (`hpo check {spec.task}` runs every check)")
    try:
        batch = next(iter(problem.batches("val")))
        u, _ = evaluate_solve(problem, batch, config, K=1)
        metrics = sorted([*problem.metrics(u, batch), "fp_residual"])
    except Exception as e:  # what every trial would meet at its first validation
        raise _fail("task", f"{spec.task!r} fails a first solve with these task_args and fixed values: {_error_text(e)}") from None
    for i, o in enumerate(spec.objectives):
        if o.metric not in metrics:
            where = "objective" if len(spec.objectives) == 1 else f"objective[{i}]"
            raise _fail(f"{where}.metric", f"task {spec.task!r} does not report {o.metric!r} (it reports: {', '.join(metrics)})")
    return metrics

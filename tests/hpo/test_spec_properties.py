"""Property-based checks of spec validation (Hypothesis): no spec ends in a traceback or a partly written study.

Specs are BASE_SPEC (tests/hpo/conftest.py) with a few fields changed to values drawn from valid and
invalid ones: types, ranges, distributions, scheduler numbers, objective, sampler, resources, trials...

- ``test_validation_is_one_line_or_a_spec_that_runs`` (fast, no Ray): ``parse_spec`` and
  ``check_against_task`` either accept the spec or raise ``SpecError`` with one line; an accepted
  spec builds what the driver builds (Optuna's distributions and sampler, Ray's ASHA scheduler)
  and its first trial's settings make a BMOConfig and the task.
- ``test_a_run_writes_nothing_or_finishes_its_trials`` (slow, a few tiny runs on the session's
  Ray): ``run_job`` either stops with an ``HPOError`` before any study is written, or finishes
  with no trial left RUNNING.

The ``spec-ci`` profiles keep CI fast and deterministic; ``BMO_HPO_HYPOTHESIS=thorough`` draws
many more (random) examples.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hpo.errors import HPOError, SpecError
from hpo.spec import SAMPLERS, parse_spec
from hpo.task_check import check_against_task
from tests.hpo.conftest import BASE_SPEC
from workers.checks import CheckError

settings.register_profile("spec-ci", max_examples=500, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("spec-thorough", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("spec-run-ci", max_examples=8, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("spec-run-thorough", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
THOROUGH = os.environ.get("BMO_HPO_HYPOTHESIS") == "thorough"
FAST = settings.get_profile("spec-thorough" if THOROUGH else "spec-ci")
RUN = settings.get_profile("spec-run-thorough" if THOROUGH else "spec-run-ci")

DELETE = object()  # a change that removes the key

# --- values, valid and not ------------------------------------------------------------------

JUNK = st.one_of(
    st.none(), st.booleans(), st.text(max_size=3), st.just("1e-4"), st.just("nan"),
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**70), 2**70),
    st.lists(st.integers(0, 3), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(0, 2), max_size=1),
).map(lambda v: v)  # one branch of a one_of (Hypothesis flattens nested one_of), not nine
NOT_AN_INT = JUNK.filter(lambda v: isinstance(v, bool) or not isinstance(v, int))
SMALL_INT = st.integers(-2, 30)
NUMBER = st.one_of(SMALL_INT, st.floats(-2.0, 40.0), st.sampled_from([0, 1e-6, 1e308, -1e308, 2**40, 2**70, "1e-3"]))
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-2, 20), st.floats(-1, 2, allow_nan=False),
                   st.sampled_from(["unroll", "truncated", "jfb", "implicit", "adam", "sgd", "cpu", "cuda", "x"]))

PARAM_NAMES = ["mu", "gamma", "K", "truncate", "hypergrad", "outer_steps", "eval_every", "average", "seed", "s0",
               "optimizer", "device", "restarts", "task.m", "task.seed", "task.lam", "task.operator", "bogus"]

# Parameters a user would write (mostly valid), and arbitrary ones
GOOD_PARAMS = {
    "mu": st.just({"type": "float", "low": 0.0, "high": 0.3}),
    "gamma": st.just({"type": "float", "low": 1e-3, "high": 3e-2, "log": True}),
    "K": st.builds(lambda lo, span: {"type": "int", "low": lo, "high": lo + span}, st.integers(0, 4), st.integers(0, 4)),
    "truncate": st.builds(lambda hi: {"type": "int", "low": 1, "high": hi, "when": {"hypergrad": "truncated"}},
                          st.integers(0, 6)),
    "hypergrad": st.lists(st.sampled_from(["unroll", "truncated", "jfb", "implicit"]), min_size=1, max_size=3,
                          unique=True).map(lambda c: {"type": "categorical", "choices": c}),
    "outer_steps": st.builds(lambda lo, hi: {"type": "int", "low": lo, "high": hi}, st.integers(-1, 12), st.integers(0, 25)),
    "eval_every": st.builds(lambda hi: {"type": "int", "low": 1, "high": hi}, st.integers(0, 12)),
    "average": st.builds(lambda lo: {"type": "float", "low": lo, "high": 0.9}, st.sampled_from([0.0, 0.5])),
    "seed": st.builds(lambda hi: {"type": "int", "low": 0, "high": hi}, st.sampled_from([3, 2**63, 2**64])),
    "s0": st.just({"type": "float", "low": 0.5, "high": 2.0, "step": 0.5}),
    "optimizer": st.just({"type": "categorical", "choices": ["adam", "sgd"]}),
    "device": st.sampled_from([["cpu"], ["cpu", "auto"], ["cuda"]]).map(lambda c: {"type": "categorical", "choices": c}),
    "restarts": st.just({"type": "int", "low": 0, "high": 1}),
    "task.m": st.builds(lambda lo, hi: {"type": "int", "low": lo, "high": hi}, st.integers(-1, 16), st.integers(8, 24)),
    "task.seed": st.builds(lambda hi: {"type": "int", "low": 0, "high": hi}, st.sampled_from([5, 2**64, 2**70])),
    "task.lam": st.builds(lambda lo: {"type": "float", "low": lo, "high": 0.5}, st.sampled_from([-0.1, 0.0, 0.05])),
    "task.operator": st.lists(st.sampled_from(["ista", "tied_coupled", "lista_tied", "nope"]), min_size=1, max_size=2,
                              unique=True).map(lambda c: {"type": "categorical", "choices": c}),
    "bogus": st.just({"type": "float", "low": 0.0, "high": 1.0}),
}
WHEN = st.dictionaries(st.sampled_from(["hypergrad", "K", "optimizer", "nope"]),
                      st.one_of(SCALAR, st.lists(st.one_of(SCALAR, st.just([1])), max_size=2)), max_size=2)
ANY_PARAM = st.one_of(
    st.fixed_dictionaries(  # a range
        {"type": st.sampled_from(["float", "int"]), "low": NUMBER, "high": NUMBER},
        optional={"log": st.one_of(st.booleans(), JUNK), "step": st.one_of(st.none(), NUMBER), "when": WHEN},
    ),
    st.fixed_dictionaries(  # choices
        {"type": st.just("categorical"), "choices": st.one_of(st.lists(SCALAR, max_size=4), st.just([[1], {"a": 1}]), JUNK)},
        optional={"when": WHEN, "low": NUMBER},
    ),
    st.fixed_dictionaries(  # anything
        {},
        optional={"type": st.one_of(st.sampled_from(["float", "int", "categorical"]), JUNK), "low": NUMBER,
                  "high": NUMBER, "log": JUNK, "step": JUNK, "choices": JUNK, "when": st.one_of(WHEN, JUNK), "sigma": JUNK},
    ),
    JUNK,
).map(lambda v: v)


@st.composite
def spaces(draw):
    names = draw(st.lists(st.sampled_from(PARAM_NAMES), max_size=4, unique=True))
    return {name: draw(st.one_of(GOOD_PARAMS[name], GOOD_PARAMS[name], GOOD_PARAMS[name], ANY_PARAM)
                       if name in GOOD_PARAMS else ANY_PARAM) for name in names}


OBJECTIVE = st.fixed_dictionaries(
    {"metric": st.sampled_from(["nmse_db", "val_nmse_db", "fp_residual", "psnr", ""]),
     "mode": st.sampled_from(["min", "max", "lowest"])},
    optional={"value": st.sampled_from(["last", "best", "averaged", "median"])},
)

# (path, values): a change of BASE_SPEC at a dotted path
CHANGES = [
    (("study",), st.one_of(st.text(max_size=12), st.sampled_from(["a/b c", "a\x00b", "é" * 101, "s" * 201]), JUNK)),
    (("task",), st.one_of(st.sampled_from(["sparse_coding", "nope", "os:path", ":", ".x:C", "tests.hpo:BASE"]), JUNK)),
    (("task_args", "m"), st.one_of(st.integers(-1, 20), st.just(2**70), NOT_AN_INT)),  # no sizes that fill the memory
    (("task_args", "n"), st.one_of(st.integers(-1, 40), st.just(2**70), NOT_AN_INT)),
    (("task_args", "operator"), st.sampled_from(["ista", "fista", "lista_untied", "tied_coupled", "nope"])),
    (("task_args", "lam"), st.one_of(st.floats(-0.1, 1.0), JUNK)),
    (("task_args", "seed"), st.one_of(st.integers(0, 5), st.sampled_from([2**64, 2**70]), JUNK)),
    (("task_args", "colour"), JUNK),
    (("task_args",), st.one_of(st.just(DELETE), JUNK)),
    (("fixed", "K"), st.one_of(st.integers(-1, 8), JUNK)),
    (("fixed", "outer_steps"), st.one_of(st.integers(-1, 25), st.just(DELETE), JUNK)),
    (("fixed", "eval_every"), st.one_of(st.integers(0, 30), JUNK)),
    (("fixed", "truncate"), st.one_of(st.integers(0, 8), JUNK)),
    (("fixed", "hypergrad"), st.one_of(st.sampled_from(["unroll", "truncated", "jfb", "implicit", "magic"]), JUNK)),
    (("fixed", "average"), st.one_of(st.sampled_from([0, 0.0, 0.5, 0.99, 1.0]), JUNK)),
    (("fixed", "device"), st.sampled_from(["cpu", "auto", "cuda", "tpu"])),
    (("fixed", "seed"), st.one_of(st.integers(0, 3), st.sampled_from([2**64, 2**70]), JUNK)),
    (("fixed", "mu"), st.one_of(st.floats(-0.5, 1.5), JUNK)),
    (("fixed", "warm_start"), st.one_of(st.booleans(), JUNK)),
    (("fixed", "bogus"), JUNK),
    (("fixed",), st.one_of(st.just(DELETE), JUNK)),
    (("space",), st.one_of(spaces(), spaces(), spaces(), st.just(DELETE), JUNK)),
    (("objective",), st.one_of(OBJECTIVE, st.lists(OBJECTIVE, max_size=3), st.just(DELETE), JUNK)),
    (("sampler", "name"), st.one_of(st.sampled_from([*SAMPLERS, "bayes"]), JUNK)),
    (("sampler", "seed"), st.one_of(st.integers(-1, 5), st.sampled_from([2**32 - 2, 2**32 - 1, 2**32, 2**64]), JUNK)),
    (("sampler", "n_startup_trials"), st.one_of(st.integers(-1, 3), JUNK)),
    (("scheduler", "name"), st.one_of(st.sampled_from(["asha", "asha", "none", "pbt"]), JUNK)),
    (("scheduler", "grace_period"), st.one_of(st.integers(-1, 60), st.just(2000), JUNK)),
    (("scheduler", "max_t"), st.one_of(st.integers(-1, 60), st.just(5000), JUNK)),
    (("scheduler", "reduction_factor"), st.one_of(st.floats(0.0, 5.0), st.integers(0, 4), JUNK)),
    (("scheduler",), st.one_of(st.just(DELETE), JUNK)),
    (("trials",), st.one_of(st.integers(-1, 3), JUNK)),
    (("concurrency",), st.one_of(st.integers(-1, 3), JUNK)),
    (("resources", "cpu"), st.one_of(st.sampled_from([0, 1e-5, 0.5, 1, 2, 64]), JUNK)),
    (("resources", "gpu"), st.one_of(st.sampled_from([0, 1e-5, 0.5, 1, 1.5]), JUNK)),
    (("resources",), st.one_of(st.just(DELETE), JUNK)),
    (("time_budget",), st.one_of(st.sampled_from([1e-9, 0.5, 30, 0, -1]), JUNK)),
    (("checkpoint_every",), st.one_of(st.integers(-1, 30), JUNK)),
    (("keep_models",), st.one_of(st.sampled_from(["all", "best", "none", "some"]), JUNK)),
    (("artifacts",), st.one_of(st.booleans(), JUNK)),
    (("max_retries",), st.one_of(st.integers(-1, 3), JUNK)),
    (("driver_lease",), st.one_of(st.sampled_from([0, 1e-3, 5, 30]), JUNK)),
    (("storage_retry_window",), st.one_of(st.sampled_from([0, 1, 300]), JUNK)),
    (("init_from",), st.one_of(st.sampled_from(["/nonexistent/solver.pt", {"trial": 3}, {"study": "other"}]), JUNK)),
    (("seed_from",), st.one_of(st.sampled_from(["other", {"study": "other", "k": 0}]), JUNK)),
    (("report_interval",), JUNK),
    (("trails",), JUNK),
]

# what validation has most to say about comes up more often
CHANGES += [c for c in CHANGES if c[0] in (("sampler", "name"), ("scheduler", "name"), ("scheduler", "grace_period"),
                                           ("scheduler", "max_t"), ("fixed", "outer_steps"), ("objective",))] * 2


def _apply(spec: dict, path: tuple, value) -> None:
    node = spec
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    if value is DELETE:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = copy.deepcopy(value)


@st.composite
def spec_data(draw, max_changes: int = 4) -> dict:
    """BASE_SPEC with up to ``max_changes`` fields changed (storage and results_dir are the test's)."""
    spec = copy.deepcopy(BASE_SPEC)
    if draw(st.booleans()):  # a space of its own, half of the time
        spec["space"] = draw(spaces())
    for path, values in draw(st.lists(st.sampled_from(CHANGES), max_size=max_changes)):
        _apply(spec, path, draw(values))
    return spec


@st.composite
def well_typed_spec_data(draw) -> dict:
    """Specs whose every value has the right type, so that the checks across fields (a budget against the
    scheduler, truncate against K, a distribution against its sampler, a range against the task) get their turn."""
    spec = copy.deepcopy(BASE_SPEC)
    names = draw(st.lists(st.sampled_from(sorted(GOOD_PARAMS)), max_size=4, unique=True))
    names.sort(key=lambda name: name != "hypergrad")  # a condition's parent comes first
    spec["space"] = {name: draw(GOOD_PARAMS[name]) for name in names}
    if "truncate" in names and "hypergrad" not in names:
        spec["space"]["truncate"].pop("when")
    fixed = {"K": draw(st.integers(1, 6)), "eval_every": draw(st.integers(1, 12))}
    for name, values in (("outer_steps", st.integers(0, 30)), ("truncate", st.integers(1, 8)),
                         ("hypergrad", st.sampled_from(["unroll", "truncated", "jfb"])), ("average", st.sampled_from([0.0, 0.9])),
                         ("seed", st.sampled_from([0, 2**64])), ("device", st.sampled_from(["cpu", "auto"]))):
        if draw(st.booleans()):
            fixed[name] = draw(values)
    spec["fixed"] = {k: v for k, v in fixed.items() if k not in spec["space"]}
    spec["scheduler"] = draw(st.fixed_dictionaries(
        {"name": st.sampled_from(["asha", "asha", "none"])},
        optional={"grace_period": st.integers(1, 40), "max_t": st.integers(1, 40), "reduction_factor": st.sampled_from([2, 3.5])}))
    spec["sampler"] = draw(st.fixed_dictionaries(
        {"name": st.sampled_from(SAMPLERS)}, optional={"seed": st.sampled_from([0, 2**32 - 2, 2**32 - 1])}))
    spec["objective"] = {"metric": draw(st.sampled_from(["nmse_db", "fp_residual"])), "mode": "min",
                         "value": draw(st.sampled_from(["last", "best", "averaged"]))}
    return spec


def _one_line(e: BaseException) -> None:
    message = str(e)
    assert message and "\n" not in message and "\r" not in message, repr(message)


def _builds_what_the_driver_builds(spec) -> None:
    """Optuna's sampler and distributions, Ray's ASHA (as hpo.driver does), and a first trial's BMOConfig and task."""
    import optuna

    from hpo.driver import _outer_steps
    from hpo.space import define_by_run, make_sampler
    from workers import BMOConfig, make_problem
    from workers.tasks import split_settings

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. a step that does not divide the range: Optuna narrows it and says so
        directions = ["minimize" if o.mode == "min" else "maximize" for o in spec.objectives]
        last_seed = None if spec.sampler.seed is None else spec.sampler.seed + spec.trials - 1
        make_sampler(spec.sampler.name, last_seed, spec.sampler.n_startup_trials)
        study = optuna.create_study(directions=directions,
                                    sampler=make_sampler(spec.sampler.name, spec.sampler.seed, spec.sampler.n_startup_trials))
        trial = study.ask()
        define_by_run(spec)(trial)
    if spec.scheduler.name == "asha":
        from ray.tune.schedulers import ASHAScheduler

        ASHAScheduler(time_attr="outer_step", metric=spec.objectives[0].reported, mode=spec.objectives[0].mode,
                      grace_period=spec.scheduler.grace_period, max_t=spec.scheduler.max_t or _outer_steps(spec),
                      reduction_factor=spec.scheduler.reduction_factor)
        assert spec.scheduler.max_t is None or spec.scheduler.max_t >= 1
    # the trainable's first steps, with the drawn parameters
    config_values, searched_args = split_settings({**spec.fixed, **trial.params})
    searched = {p.name for p in spec.space}
    try:
        config = BMOConfig.from_dict(config_values)
    except CheckError as e:  # truncate <= K is checked per trial only when both are searched (Optuna cannot tie them)
        assert e.fields == ("truncate", "K") and {"truncate", "K"} <= searched, e
    else:
        assert config.outer_steps >= 1
        assert not (spec.objectives[0].value == "averaged" and config.average == 0)
    make_problem(spec.task, {**spec.task_args, **searched_args})


@FAST
@given(data=st.one_of(spec_data(), well_typed_spec_data()))
def test_validation_is_one_line_or_a_spec_that_runs(data):
    try:
        spec = parse_spec(copy.deepcopy(data))
        check_against_task(spec)
    except SpecError as e:
        _one_line(e)
        event(f"rejected: {str(e).split(':')[0]}")  # pytest --hypothesis-show-statistics shows what was covered
        return
    event("accepted")
    _builds_what_the_driver_builds(spec)


def test_a_grace_period_adapts_to_the_budget_unless_it_was_set():
    """The known case: outer_steps below ASHA's grace period (Ray asserts grace_period <= max_t)."""
    short = {**copy.deepcopy(BASE_SPEC), "fixed": {"K": 4, "outer_steps": 5, "eval_every": 1}, "scheduler": {"name": "asha"}}
    spec = parse_spec(copy.deepcopy(short))
    assert spec.scheduler.grace_period == 5  # the default (10) lowered to the budget
    check_against_task(spec)
    with pytest.raises(SpecError, match=r"^scheduler\.grace_period: expected <= the trial budget "
                                        r"\(fixed\.outer_steps = 5\), got 10$"):
        parse_spec({**short, "scheduler": {"name": "asha", "grace_period": 10}})
    searched = {**short, "fixed": {"K": 4, "eval_every": 1}, "space": {"outer_steps": {"type": "int", "low": 2, "high": 6}}}
    assert parse_spec(copy.deepcopy(searched)).scheduler.grace_period == 6
    assert parse_spec({**short, "scheduler": {"name": "asha", "max_t": 5, "grace_period": 3}}).scheduler.grace_period == 3
    default_steps = {**short, "fixed": {"K": 4}, "scheduler": {"name": "asha", "grace_period": 2000}}
    with pytest.raises(SpecError, match=r"BMOConfig's default outer_steps = 1000\), got 2000"):
        check_against_task(parse_spec(default_steps))


# --- runs ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_run_shorter_than_the_default_grace_period(ray_address, tmp_path):
    """The known case, run: outer_steps below ASHA's default grace period stopped with Ray's AssertionError
    (grace_period <= max_t) and left an empty study; the grace period now adapts and the trials complete."""
    import optuna
    from optuna.trial import TrialState

    from hpo.driver import run_job

    spec = parse_spec({**copy.deepcopy(BASE_SPEC), "fixed": {"K": 4, "outer_steps": 5, "eval_every": 1},
                       "scheduler": {"name": "asha"}, "storage": f"sqlite:///{tmp_path / 's.db'}",
                       "results_dir": str(tmp_path / "ray")})
    run_job(spec, out=lambda line: None)
    trials = optuna.load_study(study_name=spec.study, storage=spec.storage).get_trials()
    assert len(trials) == 2 and all(t.state == TrialState.COMPLETE for t in trials)


TINY = {("trials",): 2, ("concurrency",): 2, ("fixed", "outer_steps"): 20, ("fixed", "K"): 6, ("task_args", "m"): 24,
        ("task_args", "n"): 32, ("time_budget",): 60}


def _tiny(spec: dict) -> dict:
    """Tiny budgets for a run: at most 2 trials of at most 20 outer steps on a small problem."""
    for path, most in TINY.items():
        node = spec
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(path[-1]), (int, float)) and not isinstance(node[path[-1]], bool):
            node[path[-1]] = min(node[path[-1]], most)
    space = spec.get("space")
    for name, most in (("outer_steps", 20), ("K", 6), ("task.m", 24), ("eval_every", 20)):
        p = space.get(name) if isinstance(space, dict) else None
        if isinstance(p, dict):
            for key in ("low", "high"):
                if isinstance(p.get(key), (int, float)) and not isinstance(p[key], bool):
                    p[key] = min(p[key], most)
            if isinstance(p.get("choices"), list):
                p["choices"] = [min(c, most) if isinstance(c, int) and not isinstance(c, bool) else c for c in p["choices"]]
    if isinstance(spec.get("fixed"), dict) and not (isinstance(space, dict) and "outer_steps" in space):
        spec["fixed"].setdefault("outer_steps", 20)  # never BMOConfig's 1000
    return spec


@pytest.mark.slow
@RUN
@given(data=st.one_of(spec_data(max_changes=3), well_typed_spec_data(), well_typed_spec_data()).map(_tiny))
def test_a_run_writes_nothing_or_finishes_its_trials(ray_address, data):
    import optuna
    from optuna.trial import TrialState

    from hpo.driver import run_job

    directory = Path(tempfile.mkdtemp(prefix="bmo-spec-prop-"))
    db = directory / "studies.db"
    data = {**data, "storage": f"sqlite:///{db}", "results_dir": str(directory / "ray")}
    try:
        try:
            spec = parse_spec(copy.deepcopy(data))
            run_job(spec, out=lambda line: None)
        except HPOError as e:
            _one_line(e)
            event(f"stopped: {type(e).__name__}: {str(e).split(':')[0]}")
            if db.exists():  # stopped before anything was written: no study
                assert optuna.get_all_study_summaries(f"sqlite:///{db}") == [], e
            return
        trials = optuna.load_study(study_name=spec.study, storage=spec.storage).get_trials()
        assert len(trials) <= spec.trials
        event(f"ran: {sorted(t.state.name for t in trials)}")
        assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) for t in trials), \
            [(t.number, t.state.name) for t in trials]
    finally:
        shutil.rmtree(directory, ignore_errors=True)

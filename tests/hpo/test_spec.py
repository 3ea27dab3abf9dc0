"""Job specs: valid ones parse; each kind of bad spec is one clear line, no traceback, nothing written."""

import sys

import pytest
import yaml

from hpo.cli import main
from hpo.errors import SpecError
from hpo.spec import load_spec, parse_spec
from hpo.task_check import check_against_task
from tests.hpo.conftest import BASE_SPEC, REPO, write_spec


@pytest.mark.parametrize("name", ["quickstart.yaml", "sparse_coding.yaml", "deconvolution.yaml", "derain.yaml"])
def test_shipped_specs_are_valid(name):
    spec = load_spec(REPO / "search_spaces" / name)
    metrics = check_against_task(spec)
    assert all(o.metric in metrics for o in spec.objectives)


def test_spec_fields_parse(tmp_path):
    spec = load_spec(write_spec(tmp_path, space={
        "hypergrad": {"type": "categorical", "choices": ["unroll", "truncated"]},
        "truncate": {"type": "int", "low": 1, "high": 3, "when": {"hypergrad": "truncated"}},
        "gamma": {"type": "float", "low": "1e-4", "high": 1.0e-2, "log": True},
    }, objective=[{"metric": "val_nmse_db", "mode": "min"}, {"metric": "fp_residual", "mode": "min"}],
        time_budget=60))
    assert [p.name for p in spec.space] == ["hypergrad", "truncate", "gamma"]
    assert spec.space[1].when == {"hypergrad": ("truncated",)}
    assert spec.space[2].low == 1e-4  # YAML 1.1 reads 1e-4 as a string; a number was meant
    assert [o.metric for o in spec.objectives] == ["nmse_db", "fp_residual"]
    assert spec.multi_objective and spec.time_budget == 60


def test_checkpoint_model_and_sampler_fields(tmp_path):
    spec = load_spec(write_spec(tmp_path))
    assert (spec.checkpoint_every, spec.keep_models, spec.init_from, spec.driver_lease) == (0, "all", None, 30.0)
    assert spec.sampler.n_startup_trials is None
    spec = load_spec(write_spec(tmp_path, checkpoint_every=50, keep_models="best", init_from={"study": "s", "trial": 2},
                                driver_lease=5, sampler={"name": "gp", "seed": 1, "n_startup_trials": 4}))
    assert (spec.checkpoint_every, spec.keep_models, spec.init_from) == (50, "best", {"study": "s", "trial": 2})
    assert spec.driver_lease == 5 and spec.sampler.n_startup_trials == 4


def test_retries_and_gpu_shares(tmp_path):
    assert load_spec(write_spec(tmp_path)).max_retries == 3  # the default: a lost node costs no trial
    spec = load_spec(write_spec(tmp_path, max_retries=0, resources={"cpu": 1, "gpu": 0.25}))
    assert spec.max_retries == 0 and spec.resources.gpu == 0.25
    assert load_spec(write_spec(tmp_path, resources={"cpu": 2, "gpu": 2})).resources.gpu == 2


def test_overrides_apply_dotted_keys(tmp_path):
    spec = load_spec(write_spec(tmp_path), {"fixed.K": 7, "trials": 5, "task_args.m": 20})
    assert spec.fixed["K"] == 7 and spec.trials == 5 and spec.task_args["m"] == 20


# (what is wrong, changes to the base spec, words the one-line message must contain)
BAD_SPECS = [
    ("unknown field", {"trails": 3}, ["trails", "unknown field"]),
    ("wrong type", {"trials": "many"}, ["trials", "'many'"]),
    ("non-positive trials", {"trials": 0}, ["trials", "0"]),
    ("low > high", {"space": {"mu": {"type": "float", "low": 0.5, "high": 0.1}}}, ["space.mu", "low=0.5", "high=0.1"]),
    ("unknown parameter type", {"space": {"mu": {"type": "uniform", "low": 0, "high": 1}}}, ["space.mu.type", "'uniform'"]),
    ("unknown sampler", {"sampler": {"name": "bayes"}}, ["sampler.name", "'bayes'"]),
    ("unknown scheduler", {"scheduler": {"name": "pbt"}}, ["scheduler.name", "'pbt'"]),
    ("bad mode", {"objective": {"metric": "nmse_db", "mode": "lowest"}}, ["objective.mode", "'lowest'"]),
    ("log with low <= 0", {"space": {"gamma": {"type": "float", "low": 0.0, "high": 1.0, "log": True}}}, ["space.gamma", "low=0.0"]),
    ("categorical without choices", {"space": {"hypergrad": {"type": "categorical"}}}, ["space.hypergrad.choices"]),
    ("condition on an unknown parent", {"space": {"truncate": {"type": "int", "low": 1, "high": 2, "when": {"mode": "x"}}}}, ["space.truncate.when", "'mode'"]),
    ("bad storage scheme", {"storage": "redis://127.0.0.1:6379"}, ["storage", "'redis'"]),
    ("multi-objective with ASHA", {"objective": [{"metric": "nmse_db", "mode": "min"}, {"metric": "fp_residual", "mode": "min"}],
                                   "scheduler": {"name": "asha"}}, ["scheduler", "multi-objective"]),
    ("key both fixed and searched", {"fixed": {"mu": 0.1, "K": 4, "outer_steps": 40}}, ["fixed.mu", "also in space"]),
    ("negative gpu", {"resources": {"cpu": 1, "gpu": -1}}, ["resources.gpu", "-1"]),
    ("more than one GPU, not whole", {"resources": {"cpu": 1, "gpu": 1.5}}, ["resources.gpu", "whole number", "1.5"]),
    ("GPU share finer than Ray counts", {"resources": {"cpu": 1, "gpu": 0.00001}}, ["resources.gpu", "0.0001"]),
    ("negative retries", {"max_retries": -1}, ["max_retries", "-1"]),
    ("retries not a number", {"max_retries": "always"}, ["max_retries", "'always'"]),
    ("report_interval, removed", {"report_interval": 1.0}, ["report_interval", "was removed", "eval_every"]),
    ("negative checkpoint_every", {"checkpoint_every": -5}, ["checkpoint_every", "-5"]),
    ("unknown keep_models", {"keep_models": "some"}, ["keep_models", "'some'", "all, best, none"]),
    ("init_from without a study", {"init_from": {"trial": 3}}, ["init_from.study", "None"]),
    ("init_from of another kind", {"init_from": 7}, ["init_from", "7"]),
    ("lease not positive", {"driver_lease": 0}, ["driver_lease", "0"]),
    ("startup trials for random search", {"sampler": {"name": "random", "n_startup_trials": 5}},
     ["sampler.n_startup_trials", "tpe, gp, cmaes", "'random'"]),
    ("unknown objective value", {"objective": {"metric": "nmse_db", "mode": "min", "value": "median"}},
     ["objective.value", "'median'", "last, best, averaged"]),
    ("averaged without an average", {"objective": {"metric": "nmse_db", "mode": "min", "value": "averaged"}},
     ["objective.value", "fixed.average"]),
    ("objectives of different values", {"objective": [{"metric": "nmse_db", "mode": "min", "value": "best"},
                                                      {"metric": "fp_residual", "mode": "min"}], "scheduler": {"name": "none"}},
     ["objective", "best, last"]),
    ("negative startup trials", {"sampler": {"name": "tpe", "n_startup_trials": -1}}, ["sampler.n_startup_trials", "-1"]),
]

# Spec errors only the task can reveal.
BAD_FOR_TASK = [
    ("unknown task", {"task": "deblur_everything"}, ["task", "'deblur_everything'"]),
    ("unimportable task path", {"task": "no_such_module:Thing"}, ["task", "no_such_module"]),
    ("unknown space key", {"space": {"Kay": {"type": "int", "low": 1, "high": 3}}}, ["space.Kay", "neither a BMOConfig field"]),
    ("invalid fixed value", {"fixed": {"K": 0}}, ["fixed.K: expected an int >= 1, got 0"]),
    ("range outside BMOConfig's domain", {"space": {"mu": {"type": "float", "low": 0.0, "high": 1.5}}},
     ["space.mu: expected a number in [0, 1], got 1.5"]),
    ("metric the task does not produce", {"objective": {"metric": "psnr", "mode": "max"}}, ["objective.metric", "'psnr'", "nmse_db"]),
    ("unknown task argument", {"task_args": {"m": 16, "n": 32, "colour": "red"}}, ["task_args.colour"]),
    ("task argument out of range", {"task_args": {"m": -3}}, ["task_args.m: expected an int >= 1, got -3"]),
    ("fixed truncate longer than fixed K", {"fixed": {"K": 4, "hypergrad": "truncated", "truncate": 5, "outer_steps": 40}},
     ["fixed.truncate: expected at most K = 4, got 5"]),
    ("searched K below a fixed truncate", {"fixed": {"hypergrad": "truncated", "truncate": 3, "outer_steps": 40},
                                           "space": {"K": {"type": "int", "low": 2, "high": 8}}},
     ["space.K: expected >= truncate = 3 (fixed.truncate) for hypergrad=truncated, got space.K.low = 2"]),
]


@pytest.mark.parametrize("what, changes, words", BAD_SPECS, ids=[b[0] for b in BAD_SPECS])
def test_bad_spec_is_one_clear_error(tmp_path, what, changes, words):
    with pytest.raises(SpecError) as info:
        load_spec(write_spec(tmp_path, **changes))
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, (what, message)


@pytest.mark.parametrize("what, changes, words", BAD_FOR_TASK, ids=[b[0] for b in BAD_FOR_TASK])
def test_spec_checked_against_the_task(tmp_path, what, changes, words):
    with pytest.raises(SpecError) as info:
        check_against_task(load_spec(write_spec(tmp_path, **changes)))
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, (what, message)


def test_not_yaml_and_not_a_mapping(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("study: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML at line"):
        load_spec(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(SpecError, match="must be a YAML mapping"):
        load_spec(bad)
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "missing.yaml")


def test_parse_spec_rejects_non_mapping_sections():
    with pytest.raises(SpecError, match=r"^space: expected a mapping, got \[1, 2\]$"):
        parse_spec({**yaml.safe_load("study: s\ntask: sparse_coding\nobjective: {metric: nmse_db, mode: min}"), "space": [1, 2]})


@pytest.mark.parametrize("what, changes, words", BAD_SPECS[:4] + BAD_FOR_TASK[:2] + [
    ("unreachable storage", {"storage": "postgresql://127.0.0.1:5999/test"}, ["storage", "unreachable"]),
    ("storage directory missing", {"storage": "sqlite:////nonexistent-dir/x.db"}, ["storage", "does not exist"]),
], ids=lambda v: v if isinstance(v, str) else "")
def test_cli_prints_one_line_exits_nonzero_and_writes_nothing(tmp_path, capsys, what, changes, words):
    path = write_spec(tmp_path, **changes)
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(["run", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("hpo: error: ") and "Traceback" not in err
    for word in words:
        assert word in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no database, no results folder


SMALL_IMAGES = {"size": 32, "patch": 16, "batch_size": 2, "width": 4, "depth": 2}


TASK_ARGUMENT_ERRORS = [
    ("sparse_coding", {"m": 16, "n": 0}, {}, "task_args.n: expected an int >= 1, got 0"),
    ("sparse_coding", {"m": 16, "n": 32, "operator": "lista"}, {},
     "task_args.operator: expected one of ista, fista, tied_coupled, untied_coupled, lista_tied, lista_untied, got 'lista'"),
    ("sparse_coding", {"m": 16, "n": 32}, {"task.lam": {"type": "float", "low": -0.1, "high": 0.5}},
     "space.task.lam: expected a finite number >= 0, got -0.1"),
    ("sparse_coding", {"m": 16, "n": 32}, {"task.seed": {"type": "int", "low": 0, "high": 2**64}},
     "space.task.seed: expected an int in [0, 9007199254740992], got 18446744073709551616"),
    ("deconvolution", {**SMALL_IMAGES, "kernel_size": 9, "scheme": "drs"}, {},
     "task_args.operator: expected 'pnp_convex' for scheme='drs' (its reflection is nonexpansive only for D = I - β∇R "
     "with R convex), got 'pnp_lipschitz'"),
    ("deconvolution", {**SMALL_IMAGES, "kernel_size": 9, "operator": "pnp_convex", "width": 5}, {},
     "task_args.width: expected an even int >= 2 for operator='pnp_convex' (its filters come in pairs), got 5"),
    ("deconvolution", {**SMALL_IMAGES}, {},  # kernel_size: the default 25, above the patch
     "task_args.kernel_size: expected at most patch = 16, got 25"),
    ("deconvolution", {**SMALL_IMAGES, "kernel_size": 9}, {"step": {"type": "float", "low": 0.5, "high": 2.5}},
     "space.step: expected τ·L in (0, 2) for scheme='fb', got 2.5"),
    ("derain", {**SMALL_IMAGES, "patch": 64}, {}, "task_args.patch: expected at most size = 32, got 64"),
    ("derain", {**SMALL_IMAGES, "size": 8, "patch": 8}, {}, "task_args.size: expected an int >= 16, got 8"),
    ("derain", SMALL_IMAGES, {"task.anchor": {"type": "float", "low": -1.0, "high": 1.0}},
     "space.task.anchor: expected a finite number >= 0, got -1.0"),
]


@pytest.mark.parametrize("task, task_args, space, message", TASK_ARGUMENT_ERRORS,
                         ids=[f"{c[0]}-{c[3].split(':')[0]}" for c in TASK_ARGUMENT_ERRORS])
def test_a_shipped_task_s_bad_argument_is_named_in_the_spec(tmp_path, task, task_args, space, message):
    """Each shipped task checks its arguments (its Args dataclass): the spec's error is the CheckError at its key."""
    spec = load_spec(write_spec(tmp_path, task=task, task_args=task_args, space=space or BASE_SPEC["space"]))
    with pytest.raises(SpecError) as info:
        check_against_task(spec)
    assert str(info.value) == message


def test_a_task_s_arguments_come_from_its_args_dataclass(tmp_path, monkeypatch):
    """A problem with ``Args`` has the dataclass's fields as its arguments (its ``**kwargs`` constructor says
    nothing), and a CheckError of ``Args`` goes to its field."""
    (tmp_path / "args_task.py").write_text(ARGS_TASK)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(SpecError) as info:
            check_against_task(load_spec(write_spec(tmp_path, task="args_task:Scaled", task_args={"colour": 1})))
        assert str(info.value) == "task_args.colour: is not an argument of task 'args_task:Scaled' (arguments: n, scale)"
        with pytest.raises(SpecError) as info:
            check_against_task(load_spec(write_spec(tmp_path, task="args_task:Scaled", task_args={"scale": 0})))
        assert str(info.value) == "task_args.scale: expected a finite number > 0, got 0"
        with pytest.raises(SpecError) as info:
            check_against_task(load_spec(write_spec(tmp_path, task="args_task:NotADataclass", task_args={})))
        assert str(info.value).startswith("task: task NotADataclass: Args must be a dataclass")
    finally:
        sys.modules.pop("args_task", None)


ARGS_TASK = """
from dataclasses import dataclass

from workers import Problem
from workers.checks import check_int, check_real


@dataclass(frozen=True)
class ScaledArgs:
    n: int = 8
    scale: float = 1.0

    def __post_init__(self):
        check_int("n", self.n, minimum=1)
        check_real("scale", self.scale, 0, low_open=True)


class Scaled(Problem):
    Args = ScaledArgs

    def __init__(self, **task_args):
        super().__init__()
        self.args = ScaledArgs(**task_args)


class NotADataclass(Problem):
    Args = dict
"""


CHECKED_TASK = """
from workers import Problem
from workers.checks import check_int


class Sized(Problem):
    def __init__(self, size: int = 8, depth: int = 1):
        super().__init__()
        check_int("size", size, minimum=4)
        if depth > 3:
            raise ValueError("too deep")
"""


@pytest.mark.parametrize("changes, message", [
    ({"task_args": {"size": 2}}, "task_args.size: expected an int >= 4, got 2"),
    ({"task_args": {}, "space": {"task.size": {"type": "int", "low": 2, "high": 8}}},
     "space.task.size: expected an int >= 4, got 2"),
    ({"task_args": {"size": 4, "depth": 5}}, "task_args: too deep (with size=4, depth=5)"),
    ({"task_args": {}, "space": {"depth": {"type": "int", "low": 1, "high": 5}}}, "space.depth: too deep (with depth=5)"),
], ids=["argument", "searched argument", "not a check", "searched, not a check"])
def test_a_task_s_check_error_goes_to_its_argument(tmp_path, monkeypatch, changes, message):
    """A CheckError of the task names the argument by its field: the spec puts it at that argument's key; any other
    error goes to task_args (or the searched key) with the values tried."""
    (tmp_path / "checked_task.py").write_text(CHECKED_TASK)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        spec = load_spec(write_spec(tmp_path, task="checked_task:Sized", **changes))
        with pytest.raises(SpecError) as info:
            check_against_task(spec)
        assert str(info.value) == message
    finally:
        sys.modules.pop("checked_task", None)

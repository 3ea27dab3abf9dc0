"""The conformance suite (``workers.testing``): it passes a good problem, names each mistake in one line, and
runs before `hpo run` / `hpo train` use a user's own problem, and as `hpo check`."""

import sys
import textwrap
import types

import pytest

import workers.problem
from tests.hpo.conftest import REPO, run_cli, write_spec
from workers import BMOConfig, train
from workers.testing import CHECKS, NonFiniteError, ProblemConformance, run_checks

# Small problems in a file of their own: one good, and one for each mistake the issue names.
PROBLEMS = '''
from dataclasses import dataclass

import torch
from workers import Problem


@dataclass
class Batch:
    y: torch.Tensor
    x: torch.Tensor


class Good(Problem):
    """T(u) = (1 - t) u + t y on batches of 8 vectors of 4."""

    nonexpansive = True

    def __init__(self, seed: int = 0):
        super().__init__()
        self.t = torch.nn.Parameter(torch.tensor(0.5))
        self.seed = seed

    def init(self, batch):
        return torch.zeros_like(batch.y)

    def operator(self, u, batch, k):
        return (1 - self.t) * u + self.t * batch.y

    def upper_loss(self, u, batch):
        return 0.5 * ((u - batch.x) ** 2).sum(-1).mean()

    def metrics(self, u, batch):
        return {"mse": float(((u - batch.x) ** 2).mean())}

    def batches(self, split):
        g = torch.Generator().manual_seed(3 * self.seed + ("train", "val", "test").index(split))
        while True:
            x = torch.randn(8, 4, generator=g)
            yield Batch(x + 0.1 * torch.randn(8, 4, generator=g), x)
            if split != "train":
                return


class NoK(Good):
    """The operator lacks the inner step k."""

    def operator(self, u, batch):
        return (1 - self.t) * u + self.t * batch.y


class TrainEnds(Good):
    """The train batches end after the first."""

    def batches(self, split):
        yield from super().batches("val" if split == "train" else split)


class NoBatchDimension(Good):
    """The iterate is one vector for the whole batch: the upper gradient would be scaled by its length."""

    def init(self, batch):
        return torch.zeros(batch.y.shape[1])

    def operator(self, u, batch, k):
        return (1 - self.t) * u + self.t * batch.y.mean(0)

    def upper_loss(self, u, batch):
        return 0.5 * ((u - batch.x.mean(0)) ** 2).sum()


class Diverges(Good):
    """T explodes from the second step on: a NaN or infinity, not an interface mistake."""

    def operator(self, u, batch, k):
        return super().operator(u, batch, k) * (float("inf") if k >= 2 else 1.0)


class Expands(Good):
    """Claims nonexpansive but doubles u."""

    def operator(self, u, batch, k):
        return 2 * u


class Unseeded(Good):
    """Draws its data from the global RNG."""

    def batches(self, split):
        while True:
            x = torch.randn(8, 4)
            yield Batch(x, x)
            if split != "train":
                return


class TensorMetric(Good):
    def metrics(self, u, batch):
        return {"mse": ((u - batch.x) ** 2).mean()}
'''


@pytest.fixture(scope="module")
def problems():
    module = types.ModuleType("conformance_problems")
    exec(compile(PROBLEMS, "conformance_problems.py", "exec"), module.__dict__)
    sys.modules[module.__name__] = module
    yield module
    del sys.modules[module.__name__]


def _failures(cls) -> dict:
    return {name: str(error) for name, error in run_checks(cls) if error is not None}


def test_a_good_problem_passes_every_check(problems):
    assert [name for name, _ in run_checks(problems.Good)] == list(CHECKS)
    assert _failures(problems.Good) == {}


def test_an_operator_without_k_is_named_by_the_signature_check(problems):
    failures = _failures(problems.NoK)
    assert list(failures)[0] == "signatures"
    assert failures["signatures"] == ("operator(u, batch) cannot be called as operator(u, batch, k): "
                                      "k is the inner step (1-based), which a stationary operator ignores")


def test_train_batches_that_end_get_a_clear_message(problems):
    failures = _failures(problems.TrainEnds)
    assert list(failures) == ["batches"]
    assert failures["batches"].startswith("batches('train') stopped after 1 batch(es): it must yield fresh batches without end")


def test_an_iterate_without_the_batch_dimension_is_caught(problems):
    failures = _failures(problems.NoBatchDimension)
    assert list(failures) == ["init"]
    assert failures["init"] == ("init(batch) must return the iterate with the batch first, (8, ...) for this train "
                                "batch of 8, got shape (4,)")


@pytest.mark.parametrize("cls, check, words", [
    ("Diverges", "evaluation_solve", "the evaluation solve (4 steps) diverged: u is not finite at step 2"),
    ("Expands", "nonexpansive", "nonexpansive is True, but"),
    ("Unseeded", "determinism", "different first train batches: seed their data"),
    ("TensorMetric", "metrics", "must map names to floats, got 'mse': Tensor (return float(...))"),
])
def test_each_mistake_is_one_line_naming_its_check(problems, cls, check, words):
    results = dict(run_checks(getattr(problems, cls)))
    assert words in str(results[check]) and "\n" not in str(results[check])


def test_nan_and_infinity_are_their_own_kind_of_failure(problems):
    results = dict(run_checks(problems.Diverges))
    assert isinstance(results["evaluation_solve"], NonFiniteError) and isinstance(results["hypergradient"], NonFiniteError)


def test_a_constructor_that_raises_is_the_one_check_build(problems):
    def broken():
        raise TypeError("__init__() missing 1 required positional argument: 'n'")

    assert [(name, str(error)) for name, error in run_checks(broken)] == [
        ("build", "raised TypeError: __init__() missing 1 required positional argument: 'n'")]


def test_the_pytest_base_class_has_a_test_per_check():
    assert {f"test_{name}" for name in CHECKS} <= set(dir(ProblemConformance))


class TestGoodProblemThroughTheBaseClass(ProblemConformance):
    """How a user's own tests use the suite."""

    config = BMOConfig(K=3, mu=0.2, hypergrad="jfb", device="cpu")

    @pytest.fixture(autouse=True)
    def _problems(self, problems):
        self.problems = problems

    def make_problem(self):
        return self.problems.Good(seed=1)


def test_the_problem_docstring_example_runs(monkeypatch):
    """The "write your own" example of workers/problem.py, as a user would copy it."""
    code = textwrap.dedent(workers.problem.__doc__.split("::\n", 1)[1].split("\nCheck it with")[0])
    module = types.ModuleType("denoise_example")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(code, "denoise_example.py", "exec"), module.__dict__)
    assert [error for _, error in run_checks(module.Denoise)] == [None] * len(CHECKS)
    result = train(module.Denoise(n=8), BMOConfig(K=4, outer_steps=5, eval_every=5, device="cpu"))
    assert set(result.final) == {"val_mse", "val_fp_residual"}


# --- the same checks as `hpo check`, and before `hpo run` / `hpo train` use a module:Class ----------------------


@pytest.fixture
def user_dir(tmp_path):
    (tmp_path / "my_mod.py").write_text(textwrap.dedent(PROBLEMS))
    return tmp_path


def test_hpo_check_prints_a_line_per_check(user_dir):
    proc = run_cli("check", "my_mod:Good", cwd=user_dir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"ok  {name}" for name in CHECKS]
    proc = run_cli("check", "my_mod:NoK", "--set", "K=3", cwd=user_dir)
    assert proc.returncode == 1 and proc.stdout.splitlines()[0].startswith("FAIL signatures: operator(u, batch) cannot")


@pytest.mark.parametrize("args, words", [
    (["my_mod:Nope"], "'Nope' in 'my_mod' is not a workers.Problem subclass"),
    (["no_such_task"], "unknown task 'no_such_task'"),
    (["my_mod:Good", "--set", "bogus=1"], "has no argument 'bogus'"),
    (["my_mod:Good", "--set", "K=0"], "hpo: error: K: expected an int >= 1, got 0\n"),
])
def test_hpo_check_usage_errors_are_one_line_and_exit_2(user_dir, args, words):
    proc = run_cli("check", *args, cwd=user_dir)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and words in proc.stderr, proc.stderr


def test_hpo_train_checks_a_user_problem_first(user_dir):
    proc = run_cli("train", "my_mod:TrainEnds", "--set", "outer_steps=5", cwd=user_dir)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("hpo: error: my_mod:TrainEnds fails the conformance check batches: batches('train') stopped")


def test_a_spec_with_a_broken_user_problem_is_refused_in_one_line(user_dir):
    spec = write_spec(user_dir, task="my_mod:NoBatchDimension", task_args={}, objective={"metric": "mse", "mode": "min"},
                      space={"mu": {"type": "float", "low": 0.0, "high": 0.3}})
    proc = run_cli("run", str(spec), cwd=user_dir)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("hpo: error: task: my_mod:NoBatchDimension fails the conformance check init: ")
    assert not (user_dir / "studies.db").exists()


def test_a_user_problem_that_diverges_at_its_defaults_is_not_refused(user_dir, monkeypatch):
    """Settings that diverge make PRUNED trials (the sampler learns from them), not a refused spec."""
    from hpo.spec import load_spec
    from hpo.task_check import check_against_task

    monkeypatch.syspath_prepend(str(user_dir))
    spec = load_spec(write_spec(user_dir, task="my_mod:Diverges", task_args={}, objective={"metric": "mse", "mode": "min"},
                                space={"mu": {"type": "float", "low": 0.0, "high": 0.3}}))
    try:
        assert "mse" in check_against_task(spec)
    finally:
        sys.modules.pop("my_mod", None)


def test_the_shipped_tasks_are_not_checked_again(monkeypatch):
    """The registry's tasks have their tests (tests/workers/test_conformance.py); a spec run does not repeat them."""
    import workers.testing
    from hpo.spec import load_spec
    from hpo.task_check import check_against_task

    monkeypatch.setattr(workers.testing, "run_checks", lambda *a, **k: pytest.fail("run_checks ran on a shipped task"))
    check_against_task(load_spec(REPO / "search_spaces" / "quickstart.yaml"))

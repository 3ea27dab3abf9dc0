"""The conformance suite (``workers.testing``) on every task in the registry, and what only the shipped
tasks promise besides: the problem's device and dtype, fresh train batches, a seed that changes the data,
training, running on an observation alone."""

import math

import pytest
import torch

from workers import BMOConfig, Problem, evaluate_solve, make_problem, train
from workers.testing import ProblemConformance

# Each registered task with its small test arguments, one entry per operator form.
CASES = [
    ("sparse_coding", {"operator": op, "m": 16, "n": 32, "layers": 4, "batch_size": 8, "val_size": 12, "test_size": 10})
    for op in ("ista", "fista", "tied_coupled", "untied_coupled", "lista_tied", "lista_untied")
] + [
    ("deconvolution", {"operator": op, "kernel": kernel, "kernel_size": 9, "size": 32, "patch": 16, "batch_size": 2,
                       "width": 4, "depth": 3})
    for op in ("pnp_lipschitz", "pnp_convex", "pnp_free") for kernel in ("gaussian", "motion")
] + [
    ("deconvolution", {"operator": op, "scheme": "hqs", "kernel_size": 9, "size": 32, "patch": 16, "batch_size": 2,
                       "width": 4, "depth": 3, "step": 3.0})
    for op in ("pnp_lipschitz", "pnp_convex", "pnp_free")
] + [
    ("deconvolution", {"operator": "pnp_convex", "scheme": "drs", "kernel_size": 9, "size": 32, "patch": 16, "batch_size": 2,
                       "width": 4, "adaptive": adaptive})
    for adaptive in (False, True)
] + [
    ("derain", {"operator": op, "model": model, "size": 32, "patch": 16, "batch_size": 2, "width": 4, "depth": 3})
    for op in ("lipschitz", "free") for model in ("prox", "pair")
]


def _ids(case):
    return "-".join(filter(None, [case[0], case[1].get("operator"), case[1].get("scheme"), case[1].get("model"), case[1].get("kernel"),
                                  "adaptive" if case[1].get("adaptive") else None]))


@pytest.fixture(params=CASES, ids=_ids)
def case(request):
    return request.param


def test_every_registered_task_is_covered():
    from workers import TASKS

    assert {name for name, _ in CASES} == set(TASKS)


class TestRegisteredTasks(ProblemConformance):
    """Every check of the suite on each case, on CPU and on CUDA when present."""

    @pytest.fixture(autouse=True, params=CASES, ids=_ids)
    def _case(self, request, device):
        self.case, self.device = request.param, device

    def make_problem(self):
        return make_problem(*self.case).to(self.device)


def test_iterates_are_on_the_problems_device_and_dtype(case, device):
    problem = make_problem(*case).to(device)
    assert isinstance(problem, Problem)
    for split in ("train", "val", "test"):
        batch = next(iter(problem.batches(split)))
        u0 = problem.init(batch)
        assert u0.device.type == device and u0.dtype == problem.dtype
        for k in (1, 2, 100):
            tu = problem.operator(u0, batch, k)
            assert tu.device == u0.device and tu.dtype == u0.dtype


def test_train_batches_are_fresh_and_val_differs_from_test(case):
    problem = make_problem(*case)
    stream = iter(problem.batches("train"))
    a, b = next(stream), next(stream)
    assert not torch.equal(a.y, b.y)
    assert not torch.equal(next(iter(problem.batches("val"))).y, next(iter(problem.batches("test"))).y)


def test_another_seed_gives_other_data(case):
    name, args = case
    one, other = make_problem(name, args), make_problem(name, {**args, "seed": 1})
    assert not torch.equal(next(iter(one.batches("val"))).y, next(iter(other.batches("val"))).y)


def test_a_short_training_run_stays_finite(case):
    problem = make_problem(*case)
    result = train(problem, BMOConfig(K=4, outer_steps=3, eval_every=3, device="cpu"))
    assert all(math.isfinite(v) for v in result.final.values())


def test_the_solver_runs_on_the_observation_alone(case):
    """``observation_batch(y)``: the evaluation solve on y without ground truth is the one on the test batch."""
    problem = make_problem(*case)
    config = BMOConfig(K=3, device="cpu")
    batch = next(iter(problem.batches("test")))
    alone = problem.observation_batch(batch.y)
    assert alone.x is None
    u, _ = evaluate_solve(problem, batch, config)
    v, _ = evaluate_solve(problem, alone, config)
    assert torch.equal(problem.estimate(v, alone), problem.estimate(u, batch))
    assert problem.observation_kind in ("image", "vector") and problem.degradation()


def test_unknown_task_argument_is_named():
    with pytest.raises(ValueError, match="'bogus'"):
        make_problem("sparse_coding", {"bogus": 1})

"""Trial packing (workers.packing): a packed member follows its solo ``train`` trajectory exactly."""

import math

import pytest
import torch

from workers.bmo import BMOConfig, DivergenceError, train
from workers.packing import PackedTrainer, PackingError, train_packed
from workers.tasks import make_problem

SPARSE = ("sparse_coding", {"m": 16, "n": 32, "batch_size": 8, "val_size": 16, "test_size": 16, "dtype": "float64"})
DECONV = ("deconvolution", {"size": 64, "patch": 16, "kernel_size": 5, "batch_size": 2, "operator": "pnp_convex",
                            "scheme": "drs", "width": 4, "dtype": "float64"})
# float64: the packed solve may reduce in another order than the solo one (batched FFT, norms); sparse coding
# comes out bit for bit, deconvolution within ~1e-14
TOL = 1e-11
# the implicit mode's BiCGSTAB stops on a tolerance test and amplifies rounding differences when it runs many
# iterations without converging (drs: ~1e-5 after 100); with 10 iterations they stay below ~1e-8
IMPLICIT_TOL = 1e-7


def _configs(hypergrad, **shared):
    base = {"K": 4, "outer_steps": 5, "hypergrad": hypergrad, "truncate": 2, "device": "cpu", **shared}
    return [
        BMOConfig(mu=0.0, gamma=1e-2, s0=1.0, **base),  # μ = 0: the plain fixed-point step, mixed in the pack
        BMOConfig(mu=0.3, gamma=3e-3, s0=0.5, s_power=0.8, seed=1, **base),
        BMOConfig(mu=0.7, gamma=1e-3, s0=2.0, **base),
    ]


def _solo(task, config):
    problem = make_problem(*task)
    result = train(problem, config)
    return result, {n: p.detach().clone() for n, p in problem.named_parameters() if p.requires_grad}


def _assert_same(packed, solo_result, solo_weights, tol=TOL):
    trace = solo_result.trace
    assert len(packed.trace) == len(trace)
    for a, b in zip(packed.trace, trace):
        assert set(a) == set(b)
        for key in ("upper_loss", "fp_residual", "adjoint_residual", *[k for k in b if k.startswith("val_")]):
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=tol, abs=tol), key
        assert a["val_step"] == b["val_step"]
    assert set(packed.weights) == set(solo_weights)
    for name, w in solo_weights.items():
        torch.testing.assert_close(packed.weights[name], w, rtol=tol, atol=tol)


CASES = [
    (SPARSE, "unroll", {}),
    (SPARSE, "implicit", {"restarts": 1}),
    (SPARSE, "truncated", {"restarts": 1}),
    (SPARSE, "jfb", {"grad_clip": 0.5}),
    (SPARSE, "unroll", {"optimizer": "sgd", "warm_start": True}),
    (DECONV, "unroll", {}),
    (DECONV, "truncated", {"restarts": 1, "grad_clip": 0.5}),
    (DECONV, "jfb", {"optimizer": "sgd"}),
    (DECONV, "implicit", {"implicit_maxiter": 10, "eval_every": 2}),
]


@pytest.mark.parametrize("task,hypergrad,shared", CASES, ids=lambda v: v[0] if isinstance(v, tuple) else str(v))
def test_a_packed_member_follows_its_solo_trajectory(task, hypergrad, shared):
    configs = _configs(hypergrad, **shared)
    reports = []
    results = train_packed(make_problem(*task), configs, report=lambda i, s, m: reports.append((i, s)))
    assert sorted(reports) == [(i, s) for i in range(3) for s in range(1, 6)]
    for config, packed in zip(configs, results):
        assert packed.status == "done" and packed.reason is None
        solo_result, solo_weights = _solo(task, config)
        _assert_same(packed, solo_result, solo_weights, tol=IMPLICIT_TOL if task is DECONV and hypergrad == "implicit" else TOL)
        assert packed.final.keys() == solo_result.final.keys()


@pytest.mark.parametrize("hypergrad,optimizer,change,where", [
    ("unroll", "sgd", {"gamma": 1e200}, "u is not finite at outer step 3, inner step"),
    ("jfb", "adam", {"gamma": 1e200}, "u is not finite at outer step 0"),  # in the validation after step 1
    ("implicit", "adam", {"gamma": 1e300}, "omega is not finite at outer step 1"),
    ("truncated", "adam", {"s0": 1e200}, "u is not finite at outer step 1, inner step"),  # in the inner solve
])
def test_a_diverging_member_fails_alone(hypergrad, optimizer, change, where):
    """Where train would raise DivergenceError: the member fails alone, with train's message."""
    configs = _configs(hypergrad, optimizer=optimizer)
    configs[1] = BMOConfig(**{**configs[1].__dict__, **change})
    results = train_packed(make_problem(*SPARSE), configs)
    with pytest.raises(DivergenceError) as solo_error:
        _solo(SPARSE, configs[1])
    failed = results[1]
    assert failed.status == "failed" and failed.reason == str(solo_error.value) and where in failed.reason
    assert len(failed.trace) == max(solo_error.value.outer_step - 1, 0)
    for i in (0, 2):
        assert results[i].status == "done"
        _assert_same(results[i], *_solo(SPARSE, configs[i]))


def test_dropping_a_member_leaves_the_others_unchanged():
    configs = _configs("unroll")
    trainer = PackedTrainer(make_problem(*SPARSE), configs)
    trainer.step()
    trainer.step()
    trainer.drop(0)
    assert trainer.members == [1, 2] and trainer.params["W"].shape[0] == 2
    with pytest.raises(ValueError, match="not in the pack"):
        trainer.drop(0)
    while not trainer.done:
        assert set(trainer.step()) == {1, 2}
    results = trainer.results()
    assert results[0].status == "dropped" and len(results[0].trace) == 2
    solo_result, solo_weights = _solo(SPARSE, BMOConfig(**{**configs[0].__dict__, "outer_steps": 2}))
    _assert_same(results[0], solo_result, solo_weights)
    for i in (1, 2):
        _assert_same(results[i], *_solo(SPARSE, configs[i]))


def test_a_problem_with_a_power_iteration_is_refused_in_one_line():
    problem = make_problem("deconvolution", {"size": 64, "patch": 16, "kernel_size": 5, "batch_size": 2,
                                             "operator": "pnp_lipschitz", "width": 2, "depth": 2})
    with pytest.raises(PackingError, match="cannot be packed: operator\\(\\) updates buffer") as error:
        PackedTrainer(problem, _configs("unroll"))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("change,field", [({"K": 5}, "K"), ({"hypergrad": "jfb"}, "hypergrad"),
                                          ({"optimizer": "sgd"}, "optimizer"), ({"grad_clip": 1.0}, "grad_clip")])
def test_mismatched_shared_fields_are_refused(change, field):
    configs = _configs("unroll")
    configs[2] = BMOConfig(**{**configs[2].__dict__, **change})
    with pytest.raises(PackingError, match=f"field '{field}' must be equal across a pack") as error:
        PackedTrainer(make_problem(*SPARSE), configs)
    assert "\n" not in str(error.value)


def test_average_and_empty_packs_are_refused():
    with pytest.raises(PackingError, match="average"):
        PackedTrainer(make_problem(*SPARSE), _configs("unroll", average=0.9))
    with pytest.raises(PackingError, match="at least one"):
        PackedTrainer(make_problem(*SPARSE), [])


def test_the_template_problem_is_not_changed():
    problem = make_problem(*SPARSE)
    before = {k: v.clone() for k, v in problem.state_dict().items()}
    train_packed(problem, _configs("jfb"))
    assert all(torch.equal(v, problem.state_dict()[k]) for k, v in before.items())
    assert all(math.isfinite(v) for v in before["theta"].tolist())


def _data_dependent_problem():
    from workers.problem import Problem

    class Batch:
        def __init__(self, y, x):
            self.y, self.x = y, x

    class DataDependent(Problem):
        """T branches on a value of ω in Python: fine alone, impossible under vmap."""

        def __init__(self):
            super().__init__()
            self.log_step = torch.nn.Parameter(torch.tensor(-1.0, dtype=torch.float64))

        def init(self, batch):
            return torch.zeros_like(batch.y)

        def operator(self, u, batch, k):
            t = torch.sigmoid(self.log_step)
            return (1 - t) * u + t * batch.y if float(t.detach()) < 0.9 else batch.y

        def upper_loss(self, u, batch):
            return 0.5 * ((u - batch.x) ** 2).sum(-1).mean()

        def metrics(self, u, batch):
            return {"mse": float(((u - batch.x) ** 2).mean())}

        def batches(self, split):
            g = torch.Generator().manual_seed(("train", "val", "test").index(split))
            while True:
                x = torch.randn(4, 8, generator=g, dtype=torch.float64)
                yield Batch(x + 0.1 * torch.randn(x.shape, generator=g, dtype=torch.float64), x)
                if split != "train":
                    return

    return DataDependent()


def test_a_problem_vmap_cannot_run_is_refused_in_one_line():
    problem = _data_dependent_problem()
    train(problem, BMOConfig(K=2, outer_steps=1, device="cpu"))  # alone it trains
    with pytest.raises(PackingError, match="cannot be packed: torch.func.vmap fails on its operator") as error:
        PackedTrainer(_data_dependent_problem(), _configs("unroll"))
    assert "\n" not in str(error.value)

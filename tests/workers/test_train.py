"""The outer loop: reports, learning, divergence, devices."""

import dataclasses
import io
import math

import pytest
import torch

from tests.reference_problems import SmoothContractive
from workers import BMOConfig, DivergenceError, TrainState, evaluate, inner_solve, make_problem, train


@pytest.mark.parametrize("hypergrad", ["unroll", "truncated", "implicit", "jfb"])
def test_train_lowers_the_upper_loss_and_reports_every_step(hypergrad, device):
    problem = make_problem("sparse_coding", {"batch_size": 50, "val_size": 200, "test_size": 10})
    config = BMOConfig(mu=0.1, K=8, gamma=1e-3, outer_steps=60, hypergrad=hypergrad, truncate=3, eval_every=20, device=device)
    reports = []
    result = train(problem, config, report=lambda step, m: reports.append((step, m)))
    assert [s for s, _ in reports] == list(range(1, 61))
    for _, m in reports:
        assert {"upper_loss", "fp_residual", "val_nmse_db", "val_fp_residual", "seconds"} <= set(m)
        assert all(math.isfinite(v) for v in m.values())
    first = sum(m["upper_loss"] for _, m in reports[:10])
    last = sum(m["upper_loss"] for _, m in reports[-10:])
    assert last < first
    assert result.final["val_nmse_db"] == reports[-1][1]["val_nmse_db"]
    assert result.device.startswith(device)


def test_training_is_seeded():
    def run():
        problem = make_problem("sparse_coding", {"batch_size": 20, "val_size": 50, "seed": 3})
        return train(problem, BMOConfig(K=4, outer_steps=5, device="cpu")).trace

    a, b = run(), run()
    assert [m["upper_loss"] for m in a] == [m["upper_loss"] for m in b]


class _Explodes(SmoothContractive):
    """T returns inf from inner step 3 on."""

    def operator(self, u, batch, k):
        out = super().operator(u, batch, k)
        return out * math.inf if k >= 3 else out


def test_divergent_inner_solve_names_outer_and_inner_step():
    with pytest.raises(DivergenceError) as info:
        train(_Explodes(), BMOConfig(K=5, outer_steps=3, device="cpu"))
    assert (info.value.outer_step, info.value.inner_step, info.value.where) == (1, 3, "u")
    assert "outer step 1, inner step 3" in str(info.value)


def test_divergent_outer_step_is_reported_as_omega():
    problem = SmoothContractive()
    with pytest.raises(DivergenceError) as info:
        train(problem, BMOConfig(K=3, outer_steps=5, optimizer="sgd", gamma=1e308, device="cpu"))
    assert info.value.where == "omega" and info.value.inner_step is None
    assert "omega is not finite at outer step" in str(info.value)


def test_inner_solve_trace_has_one_residual_per_step():
    problem = SmoothContractive()
    batch = next(problem.batches("val"))
    with torch.no_grad():
        sol = inner_solve(problem, batch, BMOConfig(mu=0.0, K=10), trace=True)
    assert len(sol.residuals) == 10
    assert sol.residuals[-1] < sol.residuals[0] * 0.5**5  # ρ = 0.5 contraction


def test_warm_start_reuses_the_previous_iterate():
    problem = SmoothContractive()
    cold = train(SmoothContractive(), BMOConfig(mu=0.0, K=2, outer_steps=3, gamma=1e-9, device="cpu")).trace
    warm = train(problem, BMOConfig(mu=0.0, K=2, outer_steps=3, gamma=1e-9, warm_start=True, device="cpu")).trace
    # From the second step on, the warm start begins nearer the fixed point.
    assert warm[2]["fp_residual"] < cold[2]["fp_residual"]


def test_cuda_request_without_cuda_is_an_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    with pytest.raises(ValueError, match="cuda"):
        train(SmoothContractive(), BMOConfig(outer_steps=1, device="cuda"))


def test_implicit_mode_reports_the_adjoint_residual():
    problem = SmoothContractive()
    trace = train(problem, BMOConfig(mu=0.0, K=30, outer_steps=2, hypergrad="implicit", device="cpu")).trace
    assert all(0 <= m["adjoint_residual"] <= 1e-6 for m in trace)


class _HalfStepOnC(SmoothContractive):
    def __init__(self, scale=0.5):
        super().__init__()
        self.scale = scale

    def lr_scale(self, name):
        return self.scale if name == "c" else 1.0


def test_lr_scale_multiplies_the_outer_step_of_the_named_parameters():
    """One SGD step: each parameter moves by γ · lr_scale(name) · its hypergradient."""
    from workers.bmo import hypergradient

    problem, config = _HalfStepOnC(), BMOConfig(mu=0.0, K=4, gamma=0.1, optimizer="sgd", outer_steps=1, device="cpu")
    W0, c0 = problem.W.detach().clone(), problem.c.detach().clone()
    grads = hypergradient(problem, problem.batch, config).grads
    train(problem, config)
    assert torch.allclose(problem.W.detach(), W0 - 0.1 * grads[0])
    assert torch.allclose(problem.c.detach(), c0 - 0.05 * grads[1])


@pytest.mark.parametrize("scale", [0.0, -1.0, math.inf, "big", True])
def test_a_bad_lr_scale_is_one_error_naming_the_parameter(scale):
    with pytest.raises(ValueError) as info:
        train(_HalfStepOnC(scale), BMOConfig(K=2, outer_steps=1, device="cpu"))
    assert str(info.value) == f"_HalfStepOnC.lr_scale('c'): expected a finite number > 0, got {scale!r}"


@pytest.mark.parametrize("task,args,extra", [
    ("sparse_coding", {"m": 16, "n": 32, "batch_size": 16, "val_size": 32, "test_size": 8}, {"warm_start": True}),
    ("deconvolution", {"size": 32, "patch": 16, "kernel_size": 9, "batch_size": 2, "width": 4, "depth": 2}, {}),
])
def test_a_run_resumed_from_a_checkpoint_follows_the_uninterrupted_trajectory(task, args, extra, device):
    config = BMOConfig(K=3, outer_steps=9, eval_every=2, gamma=1e-2, device=device, **extra)
    straight = train(make_problem(task, args), config)
    saved = []
    first = make_problem(task, args)
    train(first, dataclasses.replace(config, outer_steps=9), checkpoint=saved.append, checkpoint_every=4)
    assert [s.step for s in saved] == [4, 8, 9]  # and the last step
    buffer = io.BytesIO()  # through the file format a checkpoint uses
    torch.save(saved[0].to_dict(), buffer)
    buffer.seek(0)
    state = TrainState.from_dict(torch.load(buffer, weights_only=True))
    resumed_problem = make_problem(task, args)
    resumed = train(resumed_problem, config, start=state)
    assert [m["upper_loss"] for m in resumed.trace] == pytest.approx([m["upper_loss"] for m in straight.trace[4:]], rel=1e-6)
    assert resumed.final == pytest.approx(straight.final, rel=1e-6)
    expected = dict(first.named_parameters())
    for name, p in resumed_problem.named_parameters():
        torch.testing.assert_close(p, expected[name])


def test_evaluating_leaves_the_problem_unchanged():
    # the 1-Lipschitz CNN's spectral norms hold a power-iteration buffer that a forward pass in training mode advances
    problem = make_problem("deconvolution", {"size": 32, "patch": 16, "kernel_size": 9, "batch_size": 2, "width": 4, "depth": 2})
    config = BMOConfig(K=3, device="cpu")
    before = {k: v.clone() for k, v in problem.state_dict().items()}
    first, second = evaluate(problem, config, "test"), evaluate(problem, config, "test")
    assert first == second and problem.training
    for k, v in problem.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_the_moving_average_of_omega_is_kept_and_validated():
    args = {"m": 16, "n": 32, "batch_size": 16, "val_size": 32, "test_size": 8}
    config = BMOConfig(K=3, outer_steps=5, eval_every=5, gamma=1e-2, average=0.6, device="cpu")
    problem = make_problem("sparse_coding", args)
    params = [p for p in problem.parameters() if p.requires_grad]
    expected = [p.detach().clone() for p in params]  # the average starts at the initial ω

    def follow(step, metrics):  # the reference: the recursion written out, from the parameters after each step
        for e, p in zip(expected, params):
            e.mul_(0.6).add_(0.4 * p.detach())

    result = train(problem, config, report=follow)
    for got, want in zip(result.average, expected):
        torch.testing.assert_close(got, want)
    reference = make_problem("sparse_coding", args)  # a fresh problem holding the average
    with torch.no_grad():
        for p, w in zip([p for p in reference.parameters() if p.requires_grad], expected):
            p.copy_(w)
    assert result.final["val_avg_nmse_db"] == pytest.approx(evaluate(reference, config, "val")["nmse_db"], rel=1e-6)
    assert result.final["val_nmse_db"] == pytest.approx(evaluate(problem, config, "val")["nmse_db"], rel=1e-6)

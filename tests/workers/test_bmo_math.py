"""The solver against references: LASSO optimality, fixed-point selection, hypergradients vs finite differences."""

import math

import pytest
import torch

from tests.reference_problems import AffineProjection, SmoothContractive
from workers import BMOConfig, hypergradient, inner_solve, make_problem


def test_ista_with_mu_zero_reaches_the_lasso_solution(device):
    problem = make_problem("sparse_coding", {"operator": "ista", "lam": 0.1, "dtype": "float64"}).to(device)
    batch = next(problem.batches("val"))
    batch.y, batch.x = batch.y[:20], batch.x[:20]
    u = inner_solve(problem, batch, BMOConfig(mu=0.0, K=3000)).u
    grad = (u @ problem.A.T - batch.y) @ problem.A  # ∇ of ½‖Au - y‖²
    on = u != 0
    # KKT of the LASSO: ∇ + λ sign(u) = 0 on the support, |∇| <= λ off it.
    assert torch.allclose(grad[on] + problem.lam * torch.sign(u[on]), torch.zeros_like(grad[on]), atol=1e-8)
    assert (grad[~on].abs() <= problem.lam + 1e-8).all()
    assert on.any() and (~on).any()


def test_mu_in_open_interval_selects_the_projection_of_z():
    problem = AffineProjection()
    batch = next(problem.batches("val"))
    target = problem.project_affine(problem.z)
    errors = {}
    for K in (2000, 20000):
        with torch.no_grad():
            u = inner_solve(problem, batch, BMOConfig(mu=0.5, K=K, s0=1.0, s_power=0.5)).u
        errors[K] = float(torch.linalg.vector_norm(u - target) / torch.linalg.vector_norm(target))
    assert errors[20000] < 2e-2
    # The row-space error decays like s_K ~ K^-p: tenfold K, about sqrt(10) smaller.
    assert errors[20000] < errors[2000] / 2.5


def test_mu_zero_stays_at_an_init_dependent_fixed_point():
    problem = AffineProjection()
    target = problem.project_affine(problem.z)
    ends = []
    for seed in (1, 2):
        y = torch.randn(1, problem.A.shape[1], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        batch = type(next(problem.batches("val")))(y=y, x=problem.z)
        u = inner_solve(problem, batch, BMOConfig(mu=0.0, K=500)).u
        assert torch.allclose(problem.operator(u, batch, 1), u, atol=1e-12)  # a fixed point
        assert torch.allclose(u, problem.project_affine(y), atol=1e-12)  # the one next to u⁰
        assert torch.linalg.vector_norm(u - target) > 0.1
        ends.append(u)
    assert torch.linalg.vector_norm(ends[0] - ends[1]) > 0.1


def _flat(grads):
    return torch.cat([g.reshape(-1) for g in grads])


def _loss_at(problem, config, theta, u0=None):
    """ℓ(u^K(ω), ω) at the flat parameter vector ``theta`` (no gradient)."""
    params = [p for p in problem.parameters()]
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        offset = 0
        for p in params:
            p.copy_(theta[offset : offset + p.numel()].view_as(p))
            offset += p.numel()
        batch = next(problem.batches("train"))
        u = inner_solve(problem, batch, config, u0=u0).u
        loss = float(problem.upper_loss(u, batch))
        for p, s in zip(params, saved):
            p.copy_(s)
    return loss


def _central_difference(problem, config, direction, eps=1e-6, u0=None):
    theta = torch.cat([p.detach().reshape(-1) for p in problem.parameters()])
    return (_loss_at(problem, config, theta + eps * direction, u0) - _loss_at(problem, config, theta - eps * direction, u0)) / (2 * eps)


def _direction(problem, seed=7):
    n = sum(p.numel() for p in problem.parameters())
    d = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return d / torch.linalg.vector_norm(d)


@pytest.mark.parametrize("mu", [0.0, 0.3])
def test_unroll_matches_finite_differences(mu):
    problem = SmoothContractive()
    config = BMOConfig(mu=mu, K=12, s0=0.8, s_power=0.5, hypergrad="unroll")
    batch = next(problem.batches("train"))
    grads = hypergradient(problem, batch, config).grads
    d = _direction(problem)
    assert float(_flat(grads) @ d) == pytest.approx(_central_difference(problem, config, d), rel=1e-7, abs=1e-10)


def test_unroll_with_restarts_differentiates_only_the_last_block():
    problem = SmoothContractive()
    batch = next(problem.batches("train"))
    config = BMOConfig(mu=0.2, K=5, hypergrad="unroll", restarts=2)
    grads = hypergradient(problem, batch, config).grads
    # The same as unrolling K steps from the iterate the two untaped blocks reach.
    with torch.no_grad():
        u = inner_solve(problem, batch, config).u
        u = inner_solve(problem, batch, config, u0=u).u
    expected = hypergradient(problem, batch, BMOConfig(mu=0.2, K=5, hypergrad="unroll"), u0=u).grads
    assert torch.allclose(_flat(grads), _flat(expected), rtol=1e-12, atol=1e-14)


def test_implicit_matches_finite_differences_at_the_fixed_point():
    problem = SmoothContractive(rho=0.6)
    batch = next(problem.batches("train"))
    converged = BMOConfig(mu=0.0, K=200, hypergrad="implicit", implicit_tol=1e-12, implicit_maxiter=500)
    grads = hypergradient(problem, batch, converged).grads
    d = _direction(problem)
    # ρ^200 is far below float64 precision: the finite difference sees the fixed point itself.
    assert float(_flat(grads) @ d) == pytest.approx(_central_difference(problem, converged, d), rel=1e-6, abs=1e-9)


def test_truncated_error_from_the_fixed_point_shrinks_like_rho_to_the_truncation():
    rho = 0.5
    problem = SmoothContractive(rho=rho)
    batch = next(problem.batches("train"))
    implicit = hypergradient(
        problem, batch, BMOConfig(mu=0.0, K=200, hypergrad="implicit", implicit_tol=1e-14, implicit_maxiter=1000)
    ).grads
    reference = _flat(implicit)
    errors = {}
    for t in (1, 2, 4, 8, 12):
        # K - t untaped steps bring u to the fixed point (ρ^(K-t) ≈ 0), then t taped steps.
        g = hypergradient(problem, batch, BMOConfig(mu=0.0, K=100, hypergrad="truncated", truncate=t)).grads
        errors[t] = float(torch.linalg.vector_norm(_flat(g) - reference))
    for t in (2, 4, 8, 12):
        assert errors[t] <= errors[1] * rho ** (t - 1) * 1.01, errors
    assert errors[12] < 1e-4 * errors[1]
    jfb = hypergradient(problem, batch, BMOConfig(mu=0.0, K=100, hypergrad="jfb")).grads
    trunc1 = hypergradient(problem, batch, BMOConfig(mu=0.0, K=100, hypergrad="truncated", truncate=1)).grads
    assert torch.equal(_flat(jfb), _flat(trunc1))


def test_default_upper_grad_is_the_per_sample_gradient():
    problem = SmoothContractive()
    batch = next(problem.batches("train"))
    u = torch.randn_like(batch.y)
    assert torch.allclose(problem.upper_grad(u, batch), u - batch.x, atol=1e-14)


def test_step_size_schedule_is_s0_over_k_plus_one_to_the_p():
    from workers.bmo import step_size

    config = BMOConfig(s0=2.0, s_power=0.5)
    assert step_size(config, 3) == pytest.approx(2.0 / math.sqrt(4.0))


def test_implicit_adjoint_converges_quickly_when_T_contracts_slowly():
    # ρ = 0.97: a plain fixed-point adjoint iteration would need about 750 steps for 1e-10.
    problem = SmoothContractive(rho=0.97)
    batch = next(problem.batches("train"))
    config = BMOConfig(mu=0.0, K=3000, hypergrad="implicit", implicit_tol=1e-10, implicit_maxiter=60)
    result = hypergradient(problem, batch, config)
    assert result.adjoint_residual <= 1e-10
    d = _direction(problem)
    assert float(_flat(result.grads) @ d) == pytest.approx(_central_difference(problem, config, d), rel=1e-5, abs=1e-9)


def test_implicit_on_a_problem_without_trainable_parameters():
    problem = make_problem("sparse_coding", {"operator": "ista", "m": 8, "n": 16, "val_size": 4})
    batch = next(problem.batches("val"))
    result = hypergradient(problem, batch, BMOConfig(K=5, hypergrad="implicit"))
    assert result.grads == [] and torch.isfinite(result.loss)

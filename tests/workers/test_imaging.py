"""Imaging tasks: the data models, the splitting schemes and their fixed points, the derain models, and training."""

import math

import pytest
import torch

from workers import BMOConfig, evaluate, hypergradient, inner_solve, make_problem, train
from workers.baselines import directional_derain
from workers.bmo import _make_optimizer
from workers.checks import CheckError
from workers.metrics import psnr
from workers.models import ConvexRidgeDenoiser, ThresholdMap
from workers.tasks.deconvolution import ImageBatch
from workers.tasks.derain import RainBatch


@pytest.mark.parametrize("noise", [0.01, 0.03])
def test_observations_follow_the_model(noise):
    problem = make_problem("deconvolution", {"noise": noise, "size": 64, "dtype": "float64"})
    (batch,) = list(problem.batches("val"))
    residual = batch.y - problem.blur(batch.x)
    assert float(residual.std()) == pytest.approx(noise, rel=0.05)
    assert float(psnr(batch.y, batch.x)) < 30
    train_batch = next(problem.batches("train"))
    assert train_batch.x.shape == (8, 1, 48, 48) and 0 <= float(train_batch.x.min()) <= float(train_batch.x.max()) <= 1


def test_derain_data_adds_rain_to_clean_images():
    problem = make_problem("derain", {"size": 64})
    for batch in problem.batches("test"):
        assert torch.allclose(batch.y, batch.x + batch.rain)
        assert float(batch.rain.min()) >= 0 and float(batch.rain.mean()) > 0.005
    assert [b.names[0] for b in problem.batches("test")] == ["camera", "astronaut", "coffee"]


def test_hqs_data_step_is_the_prox_of_the_data_term():
    """p = prox_τf(u) for f = ½‖Au - y‖² solves (p - u)/τ + Aᵀ(Ap - y) = 0."""
    problem = make_problem("deconvolution", {"scheme": "hqs", "step": 4.0, "size": 32, "patch": 32, "kernel_size": 9,
                                             "dtype": "float64"})
    (batch,) = list(problem.batches("val"))
    u = torch.rand(batch.y.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        p = problem.data_step(u, batch)
        tau = problem.step_size()
        stationarity = (p - u) / tau + problem.blur.adjoint(problem.blur(p) - batch.y)
    assert float(tau) * problem.L == pytest.approx(4.0)
    assert float(stationarity.abs().max()) < 1e-10


def test_deconvolution_schemes_check_their_arguments():
    with pytest.raises(CheckError, match="^scheme: expected one of fb, hqs, drs, got 'admm'$"):
        make_problem("deconvolution", {"scheme": "admm", "size": 32, "patch": 32, "kernel_size": 9})
    with pytest.raises(CheckError, match="^boundary: expected 'circular' for scheme='hqs'"):
        make_problem("deconvolution", {"scheme": "hqs", "boundary": "zero", "size": 32, "patch": 32, "kernel_size": 9})
    with pytest.raises(CheckError, match=r"^step: expected τ·L in \(0, 2\) for scheme='fb', got 3.0$"):
        make_problem("deconvolution", {"scheme": "fb", "step": 3.0, "size": 32, "patch": 32, "kernel_size": 9})
    make_problem("deconvolution", {"scheme": "hqs", "step": 3.0, "size": 32, "patch": 32, "kernel_size": 9})
    with pytest.raises(CheckError, match="^operator: expected 'pnp_convex' for scheme='drs'"):
        make_problem("deconvolution", {"scheme": "drs", "operator": "pnp_lipschitz", "size": 32, "patch": 32, "kernel_size": 9})
    with pytest.raises(CheckError, match="^boundary: expected 'circular' for scheme='drs'"):
        make_problem("deconvolution", {"scheme": "drs", "operator": "pnp_convex", "boundary": "zero", "size": 32, "patch": 32,
                                       "kernel_size": 9})
    with pytest.raises(CheckError, match="^width: expected an even int >= 2 for operator='pnp_convex'"):
        make_problem("deconvolution", {"operator": "pnp_convex", "width": 5, "size": 32, "patch": 32, "kernel_size": 9})
    with pytest.raises(CheckError, match="^width: expected an even int >= 2 for operator='convex'"):
        make_problem("derain", {"operator": "convex", "width": 5, "size": 32, "patch": 16})
    with pytest.raises(ValueError, match=r"beta \(the gradient step\) must be in \(0, 2\)"):
        ConvexRidgeDenoiser(beta=2.0)


def test_derain_starts_from_the_filter_or_from_the_input():
    made = {(model, init): make_problem("derain", {"size": 32, "patch": 16, "model": model, "init": init})
            for model in ("prox", "pair") for init in ("filter", "rainy")}
    (batch, *_) = list(made["prox", "filter"].batches("val"))
    filtered = directional_derain(batch.y)
    assert torch.allclose(made["prox", "filter"].init(batch), filtered)
    assert torch.equal(made["prox", "rainy"].init(batch), batch.y)
    u = made["pair", "filter"].init(batch)
    assert torch.allclose(u[:, :1], filtered) and torch.allclose(u[:, :1] + u[:, 1:], batch.y)
    assert torch.equal(made["pair", "rainy"].init(batch), torch.cat((batch.y, torch.zeros_like(batch.y)), dim=1))
    with pytest.raises(CheckError, match="^init: expected one of filter, rainy, got 'zeros'$"):
        make_problem("derain", {"size": 32, "patch": 16, "init": "zeros"})
    with pytest.raises(CheckError, match="^model: expected one of prox, pair, got 'joint'$"):
        make_problem("derain", {"size": 32, "patch": 16, "model": "joint"})


@pytest.mark.parametrize("anchor", [0.0, 0.1, 2.0])
def test_derain_data_prox_is_the_prox_of_its_data_term(anchor):
    """prox_f(v) = argmin_B ½(B - v)² + c·(O - B) + (λ/2)(B - F)² subject to B ≤ O, per pixel, by grid search."""
    problem = make_problem("derain", {"size": 32, "patch": 16, "anchor": anchor, "dtype": "float64"})
    values = problem.learned_values()
    c, lam = values["offset"], values.get("anchor", 0.0)
    assert lam == pytest.approx(anchor) and c == pytest.approx(math.log1p(math.exp(-4.0)))
    assert set(values) == ({"offset", "anchor"} if anchor else {"offset"})
    o, v, f = (torch.tensor(t, dtype=torch.float64) for t in ([0.5, 0.5, 0.5, 0.2], [0.1, 0.49, 0.9, 0.3], [0.3, 0.6, 0.1, 0.2]))
    batch = RainBatch(y=o.view(1, 1, 2, 2), x=o.view(1, 1, 2, 2), rain=torch.zeros(1, 1, 2, 2, dtype=torch.float64),
                      filtered=f.view(1, 1, 2, 2))
    with torch.no_grad():
        got = problem.data_prox(v.view(1, 1, 2, 2), batch).flatten()
    grid = torch.linspace(-1, 1, 200_001, dtype=torch.float64)
    for oi, vi, fi, gi in zip(o, v, f, got):
        objective = 0.5 * (grid - vi) ** 2 + c * (oi - grid) + 0.5 * lam * (grid - fi) ** 2
        objective[grid > oi] = float("inf")
        assert float(grid[objective.argmin()]) == pytest.approx(float(gi), abs=2e-5)


@pytest.mark.parametrize("operator", ["lipschitz", "convex"])
def test_anchored_derain_operator_is_a_contraction(operator):
    problem = make_problem("derain", {"size": 32, "patch": 16, "anchor": 0.5, "operator": operator, "width": 4, "depth": 3,
                                      "dtype": "float64"})
    if operator == "convex":  # its gradient step pushed to the edge of the nonexpansive range
        with torch.no_grad():
            problem.background.beta_logit.fill_(6.0)
    (batch, *_) = list(problem.batches("val"))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(10):
            a = torch.rand(batch.y.shape, generator=g, dtype=torch.float64)
            b = torch.rand(batch.y.shape, generator=g, dtype=torch.float64)
            ratio = torch.linalg.vector_norm(problem.operator(a, batch, 0) - problem.operator(b, batch, 0)) / torch.linalg.vector_norm(a - b)
            assert float(ratio) <= 1 / 1.5 + 1e-9


def test_adaptive_deconvolution_starts_unweighted_and_computes_its_map_once_per_batch_and_weights():
    args = {"operator": "pnp_convex", "scheme": "drs", "width": 4, "size": 32, "patch": 16, "batch_size": 2, "kernel_size": 9,
            "dtype": "float64"}
    plain, adaptive = make_problem("deconvolution", args), make_problem("deconvolution", {**args, "adaptive": True})
    assert isinstance(adaptive.threshold_map, ThresholdMap) and plain.threshold_map is None
    batch = next(adaptive.batches("train"))
    calls = []
    adaptive.threshold_map.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        u = adaptive.init(batch)
        assert torch.equal(adaptive.operator(u, batch, 1), plain.operator(u, batch, 1))  # the map starts at 1
        for k in range(2, 6):
            adaptive.operator(u, batch, k)
    assert len(calls) == 1  # once for the batch without autograd
    taped = adaptive.operator(u, batch, 1)
    assert len(calls) == 2 and taped.requires_grad  # once more, on the tape
    (g,) = torch.autograd.grad(adaptive.upper_loss(taped, batch), adaptive.threshold_map.convs[-1].weight)
    assert float(g.abs().max()) > 0  # the map learns through T
    with torch.no_grad():
        before = adaptive.operator(u, batch, 1)
        adaptive.threshold_map.convs[-1].bias.add_(0.5)  # what an optimizer step does: an in-place update
        after = adaptive.operator(u, batch, 1)
    assert len(calls) == 3 and float((after - before).abs().max()) > 1e-6
    with pytest.raises(CheckError, match="^operator: expected 'pnp_convex' for adaptive=true"):
        make_problem("deconvolution", {**args, "scheme": "hqs", "operator": "pnp_free", "adaptive": True})
    with pytest.raises(CheckError, match="^adaptive: expected true or false, got 'yes'$"):
        make_problem("deconvolution", {**args, "adaptive": "yes"})


def test_adaptive_deconvolution_trains_its_map_at_map_lr_times_gamma():
    args = {"operator": "pnp_convex", "scheme": "drs", "width": 4, "size": 32, "patch": 16, "batch_size": 2, "kernel_size": 9}
    problem = make_problem("deconvolution", {**args, "adaptive": True, "map_lr": 0.25})
    optimizer = _make_optimizer(BMOConfig(gamma=0.004), problem)
    by_lr = {group["lr"]: {id(p) for p in group["params"]} for group in optimizer.param_groups}
    assert by_lr == {0.004: {id(p) for n, p in problem.named_parameters() if not n.startswith("threshold_map.")},
                     0.001: {id(p) for p in problem.threshold_map.parameters()}}
    assert make_problem("deconvolution", {**args, "adaptive": True}).map_lr == 0.3  # the default
    with pytest.raises(CheckError, match="^map_lr: expected no value without adaptive=true"):
        make_problem("deconvolution", {**args, "map_lr": 0.3})
    for bad in (0, -1.0, "fast", True):
        with pytest.raises(CheckError, match="^map_lr: expected a finite number > 0"):
            make_problem("deconvolution", {**args, "adaptive": True, "map_lr": bad})


def test_convex_hqs_fixed_point_solves_the_learned_variational_problem():
    """At the fixed point u* of T = D ∘ prox_τf (clamp inactive), v* = prox_τf(u*) satisfies
    τ·Aᵀ(Av* - y) + β∇R(v*) = 0: it minimises τ·f + β·R."""
    problem = make_problem("deconvolution", {"operator": "pnp_convex", "scheme": "hqs", "width": 4, "size": 32,
                                             "patch": 32, "kernel_size": 9, "dtype": "float64"})
    (val,) = list(problem.batches("val"))
    x = 0.3 + 0.4 * val.x  # keeps every iterate inside [0, 1], where the clamp does nothing
    batch = ImageBatch(problem.blur(x), x)
    with torch.no_grad():
        u = problem.init(batch)
        for k in range(3000):
            u = problem.operator(u, batch, k)
        assert float(((u > 0) & (u < 1)).float().min()) == 1.0
        v = problem.data_step(u, batch)
        beta_grad_r = v - problem.denoiser(v)  # D = I - β∇R
        stationarity = problem.step_size() * problem.blur.adjoint(problem.blur(v) - batch.y) + beta_grad_r
    assert float(stationarity.abs().max()) < 1e-8


def test_convex_drs_fixed_point_solves_the_learned_variational_problem():
    """At the fixed point z* of the relaxed Douglas–Rachford T, x* = prox_τf(z*) is a fixed point of the
    forward-backward step on the same problem, x* = F(x* - τ·Aᵀ(Ax* - y)) with F = I - ∇R the prox of φ:
    it minimises τ·f + φ. And x* is not HQS's Huber-smoothed solution."""
    args = {"operator": "pnp_convex", "width": 4, "size": 32, "patch": 32, "kernel_size": 9, "dtype": "float64"}
    problem = make_problem("deconvolution", {**args, "scheme": "drs"})
    (batch,) = list(problem.batches("val"))
    with torch.no_grad():
        z = problem.init(batch)
        for k in range(3000):
            z = problem.operator(z, batch, k)
        x = problem.data_step(z, batch)
        v = x - problem.step_size() * problem.blur.adjoint(problem.blur(x) - batch.y)
        beta = problem.denoiser.step()
        prox_phi = v - (v - problem.denoiser(v)) / beta  # F(v) = v - ∇R(v), with D(v) = v - β∇R(v)
        assert float((prox_phi - x).abs().max()) < 1e-8
        assert float((problem.operator(z, batch, 1) - z).abs().max()) < 1e-8
        hqs = make_problem("deconvolution", {**args, "scheme": "hqs", "step": float(problem.step_size() * problem.L)})
        hqs.denoiser.load_state_dict(problem.denoiser.state_dict())
        u = hqs.init(batch)
        for k in range(3000):
            u = hqs.operator(u, batch, k)
        assert float((hqs.data_step(u, batch) - x).abs().max()) > 1e-3  # a different problem: τf + βR


@pytest.mark.parametrize("adaptive", [False, True])
def test_convex_drs_unrolled_hypergradient_matches_finite_differences(adaptive):
    """The hypergradient through K relaxed Douglas–Rachford steps and the read-out x = prox_τf(z) (τ, β,
    filters, thresholds and the adaptive model's threshold map all move) against central differences of ℓ
    in float64."""
    problem = make_problem("deconvolution", {"operator": "pnp_convex", "scheme": "drs", "width": 4, "size": 32,
                                             "patch": 16, "batch_size": 2, "kernel_size": 9, "dtype": "float64",
                                             "adaptive": adaptive})
    config = BMOConfig(mu=0.0, K=6, hypergrad="unroll")
    batch = next(problem.batches("train"))
    params = [p for p in problem.parameters() if p.requires_grad]
    grads = hypergradient(problem, batch, config).grads
    g = torch.Generator().manual_seed(7)
    direction = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in params]

    def loss_at(eps: float) -> float:
        saved = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(eps * d)
            loss = float(problem.upper_loss(inner_solve(problem, batch, config).u, batch))
            for p, s in zip(params, saved):
                p.copy_(s)
        return loss

    analytic = sum(float((gr * d).sum()) for gr, d in zip(grads, direction))
    numeric = (loss_at(1e-6) - loss_at(-1e-6)) / 2e-6
    assert analytic == pytest.approx(numeric, rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("task, args, settings", [
    ("deconvolution", {"operator": "pnp_lipschitz", "size": 64, "patch": 32, "width": 8, "depth": 3}, {"mu": 0.1, "K": 4, "gamma": 1e-3}),
    ("deconvolution", {"operator": "pnp_convex", "scheme": "hqs", "size": 64, "patch": 32, "width": 8}, {"mu": 0.0, "K": 8}),
    ("derain", {"operator": "lipschitz", "size": 64, "patch": 32, "width": 8, "depth": 3}, {"mu": 0.1, "K": 4}),
    ("derain", {"operator": "convex", "size": 64, "patch": 32, "width": 8}, {"mu": 0.0, "K": 8}),
])
def test_short_training_improves_validation_psnr(task, args, settings):
    problem = make_problem(task, args)
    config = BMOConfig(**{"gamma": 3e-3, **settings}, outer_steps=60, eval_every=60, device="cpu")
    before = evaluate(problem, config, "val")["psnr"]
    observed = sum(float(psnr(b.y.clamp(0, 1), b.x)) for b in problem.batches("val"))
    result = train(problem, config)
    after = result.final["val_psnr"]
    assert math.isfinite(after) and after > before + 0.1, (before, after)
    assert after > observed + 1.0, (observed, after)  # well above the degraded input
    if args.get("operator") == "pnp_convex":  # started at Huber-TV, it also lifts past the Wiener estimate
        wiener_psnr = sum(float(psnr(problem.init(b), b.x)) for b in problem.batches("val"))
        assert after > wiener_psnr + 0.1, (wiener_psnr, after)

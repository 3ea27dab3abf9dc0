"""Imaging tasks: metrics on known values, the data model, the constrained denoiser, and training."""

import math

import pytest
import torch

from workers import BMOConfig, evaluate, make_problem, train
from workers.operators import LipschitzDenoiser
from workers.tasks.deconvolution import psnr, ssim


def test_psnr_and_ssim_on_known_values():
    x = torch.full((2, 1, 16, 16), 0.5, dtype=torch.float64)
    assert psnr(x + 0.1, x).tolist() == pytest.approx([20.0, 20.0])  # 10·log10(1 / 0.01)
    assert psnr(x + 0.01, x).tolist() == pytest.approx([40.0, 40.0])
    g = torch.Generator().manual_seed(0)
    img = torch.rand(1, 1, 32, 32, generator=g, dtype=torch.float64)
    assert ssim(img, img) == [pytest.approx(1.0)]
    assert ssim(img + 0.2 * torch.randn(img.shape, generator=g, dtype=torch.float64), img)[0] < 0.9


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


def test_lipschitz_denoiser_stays_nonexpansive_while_its_weights_are_pushed():
    torch.manual_seed(0)
    denoiser = LipschitzDenoiser(width=8, depth=3, seed=0).double()
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    for _ in range(30):  # drive the raw weights to grow
        x = torch.rand(4, 1, 24, 24, generator=g, dtype=torch.float64)
        loss = -(denoiser(x) ** 2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    denoiser.eval()
    assert max(float(torch.linalg.matrix_norm(c.weight.detach().flatten(1), ord=2)) for c in denoiser.convs) > 1.0  # pushed
    worst = 0.0
    with torch.no_grad():
        worst = _worst_ratio(denoiser, g)
    assert worst <= 1.0 + 1e-3


def _worst_ratio(denoiser, g) -> float:
    worst = 0.0
    for _ in range(20):
        a = torch.randn(2, 1, 32, 32, generator=g, dtype=torch.float64)
        b = a + 0.1 * torch.randn(a.shape, generator=g, dtype=torch.float64)
        ratio = torch.linalg.vector_norm(denoiser(a) - denoiser(b)) / torch.linalg.vector_norm(a - b)
        worst = max(worst, float(ratio))
    return worst


@pytest.mark.slow
@pytest.mark.parametrize("task, args", [
    ("deconvolution", {"operator": "pnp_lipschitz", "size": 64, "patch": 32, "width": 8, "depth": 3}),
    ("derain", {"operator": "lipschitz", "size": 64, "patch": 32, "width": 8, "depth": 3}),
])
def test_short_training_improves_validation_psnr(task, args):
    problem = make_problem(task, args)
    config = BMOConfig(mu=0.1, K=4, gamma=3e-3, outer_steps=60, eval_every=60, device="cpu")
    before = evaluate(problem, config, "val")["psnr"]
    observed = sum(float(psnr(b.y.clamp(0, 1), b.x)) for b in problem.batches("val"))
    result = train(problem, config)
    after = result.final["val_psnr"]
    assert math.isfinite(after) and after > before + 0.1, (before, after)
    assert after > observed + 1.0, (observed, after)  # well above the degraded input

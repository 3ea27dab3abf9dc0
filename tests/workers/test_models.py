"""The learned networks (workers.models): MaxMin, the Lipschitz denoiser under pushed weights, and the convex
ridge denoiser (a gradient step on a convex potential, averaged, started at Huber-TV)."""

import math

import pytest
import torch

from workers.models import ConvexRidgeDenoiser, LipschitzDenoiser
from workers.models.denoisers import _conv as conv
from workers.models.denoisers import _conv_adjoint as conv_adjoint
from workers.models.denoisers import max_min


def test_max_min_permutes_each_pair_so_it_keeps_norms_and_is_1_lipschitz():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 8, 8, generator=g, dtype=torch.float64)  # odd channel count: the last passes through
    y = x + 0.3 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    out = max_min(x)
    assert torch.equal(out[:, 4], x[:, 4])
    assert torch.equal(out[:, :2], torch.maximum(x[:, :2], x[:, 2:4]))
    assert torch.allclose(torch.linalg.vector_norm(out), torch.linalg.vector_norm(x))
    assert float(torch.linalg.vector_norm(max_min(x) - max_min(y))) <= float(torch.linalg.vector_norm(x - y))


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


def _pushed_convex_denoiser() -> ConvexRidgeDenoiser:
    """A convex ridge denoiser whose raw filters were driven far past norm 1 and thresholds moved."""
    denoiser = ConvexRidgeDenoiser(channels=6, kernel=5, tv_weight=0.03, seed=0).double()
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    for _ in range(30):
        x = torch.rand(4, 1, 24, 24, generator=g, dtype=torch.float64)
        loss = -((x - denoiser(x)) ** 2).sum()  # make the regularizer's gradient as large as it can be
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return denoiser


def test_convex_ridge_denoiser_is_a_gradient_step_on_its_potential():
    """D(x) = x - β∇R(x) against autograd of R in float64, and R is convex along random segments."""
    denoiser = _pushed_convex_denoiser()
    beta = float(denoiser.step().detach())
    assert 1.0 < beta < 2.0  # pushed past the firmly nonexpansive range
    g = torch.Generator().manual_seed(2)
    x = torch.rand(3, 1, 20, 20, generator=g, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(denoiser.potential(x).sum(), x)
    with torch.no_grad():
        assert float((denoiser(x) - (x - beta * grad)).abs().max()) < 1e-12
        y = torch.rand(x.shape, generator=g, dtype=torch.float64)
        for t in (0.2, 0.5, 0.9):
            mix = denoiser.potential(t * x + (1 - t) * y)
            assert bool((mix <= t * denoiser.potential(x) + (1 - t) * denoiser.potential(y) + 1e-12).all())


def test_pixelwise_thresholds_keep_the_denoiser_a_gradient_step_on_a_convex_potential_and_averaged():
    """With thresholds θ·scale varying per pixel: D(x, scale) = x - β∇R_scale(x) against autograd in float64,
    R_scale convex along segments, D β/2-averaged on random pairs, and a different map from the unweighted one."""
    denoiser = _pushed_convex_denoiser()
    beta = float(denoiser.step().detach())
    g = torch.Generator().manual_seed(8)
    scale = torch.exp(1.5 * torch.randn(3, 3, 20, 20, generator=g, dtype=torch.float64))  # 6 filters: 3 pairs
    x = torch.rand(3, 1, 20, 20, generator=g, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(denoiser.potential(x, scale).sum(), x)
    with torch.no_grad():
        assert float((denoiser(x, scale) - (x - beta * grad)).abs().max()) < 1e-12
        assert float((denoiser(x, scale) - denoiser(x)).abs().max()) > 1e-3
        y = torch.rand(x.shape, generator=g, dtype=torch.float64)
        for t in (0.2, 0.5, 0.9):
            mix = denoiser.potential(t * x + (1 - t) * y, scale)
            assert bool((mix <= t * denoiser.potential(x, scale) + (1 - t) * denoiser.potential(y, scale) + 1e-12).all())
        alpha = beta / 2
        for _ in range(20):
            a = torch.randn(3, 1, 20, 20, generator=g, dtype=torch.float64)
            b = a + 0.1 * torch.randn(a.shape, generator=g, dtype=torch.float64)
            da, db = denoiser(a, scale), denoiser(b, scale)
            bound = float(((a - b) ** 2).sum()) - (1 - alpha) / alpha * float((((a - da) - (b - db)) ** 2).sum())
            assert float(((da - db) ** 2).sum()) <= bound + 1e-12


def test_convex_ridge_filters_have_operator_norm_at_most_one_and_the_denoiser_is_averaged():
    denoiser = _pushed_convex_denoiser()
    assert float(torch.fft.rfft2(denoiser.weight.detach()[:, 0], s=(32, 32)).abs().pow(2).sum(0).max()) > 1.5  # pushed
    with torch.no_grad():
        weight = denoiser.filters((32, 32))
        v = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        for _ in range(500):  # power iteration on WᵀW, the circular convolution bank on the 32×32 grid
            v = conv_adjoint(conv(v, weight), weight)
            v = v / torch.linalg.vector_norm(v)
        assert float(torch.linalg.vector_norm(conv(v, weight))) == pytest.approx(1.0, abs=1e-6)  # scaled to exactly 1
        g = torch.Generator().manual_seed(4)
        for _ in range(20):
            a = torch.randn(2, 1, 32, 32, generator=g, dtype=torch.float64)
            b = a + 0.1 * torch.randn(a.shape, generator=g, dtype=torch.float64)
            da, db = denoiser(a), denoiser(b)
            # α-averaged, α = β/2: ‖Da - Db‖² <= ‖a - b‖² - (1 - α)/α ‖(I - D)a - (I - D)b‖²
            alpha = float(denoiser.step()) / 2
            ra, rb = a - da, b - db
            bound = float(((a - b) ** 2).sum()) - (1 - alpha) / alpha * float(((ra - rb) ** 2).sum())
            assert float(((da - db) ** 2).sum()) <= bound + 1e-12


def test_convex_ridge_fft_correlation_is_the_circular_convolution_it_replaces():
    """W x by FFT equals F.conv2d on circularly padded images (float64), and D = x - βWᵀclip(Wx) with both."""
    denoiser = _pushed_convex_denoiser()
    x = torch.rand(2, 1, 20, 24, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with torch.no_grad():
        weight = denoiser.filters((20, 24))
        z = conv(x, weight)
        assert float((denoiser._analysis(x)[0] - z).abs().max()) < 1e-12
        assert float((denoiser(x) - (x - denoiser.step() * conv_adjoint(denoiser.clip(z), weight))).abs().max()) < 1e-12
    with pytest.raises(ValueError, match="images must be at least 5x5"):
        denoiser(torch.zeros(1, 1, 4, 8, dtype=torch.float64))


@pytest.mark.parametrize("beta", [1.0, 1.9])
def test_convex_ridge_denoiser_starts_as_huber_tv_of_the_given_weight(beta):
    """With only the difference pair (no random filters), βR(x) = w·TV(x) - N·βθ²/2 when every pixel's
    gradient lies beyond the Huber zone: TV isotropic with circular forward differences, θ = w√8/β."""
    w = 0.003
    denoiser = ConvexRidgeDenoiser(channels=2, kernel=3, tv_weight=w, extra=0.0, beta=beta).double()
    i, j = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    x = (0.1 * i + 0.3 * j).to(torch.float64).view(1, 1, 16, 16)  # every difference is 0.1, 0.3 or a wrap jump
    dx, dy = x.roll(-1, dims=-1) - x, x.roll(-1, dims=-2) - x
    tv = float((dx**2 + dy**2).sqrt().sum())
    with torch.no_grad():
        theta, step = float(denoiser.thresholds()[0]), float(denoiser.step())  # stored in float32 before .double()
        assert step == pytest.approx(beta, rel=1e-6) and step * theta / math.sqrt(8) == pytest.approx(w, rel=1e-6)
        expected = step * theta / math.sqrt(8) * tv - 16 * 16 * step * theta**2 / 2
        assert float(step * denoiser.potential(x)) == pytest.approx(expected, rel=1e-9)


def _worst_ratio(denoiser, g) -> float:
    worst = 0.0
    for _ in range(20):
        a = torch.randn(2, 1, 32, 32, generator=g, dtype=torch.float64)
        b = a + 0.1 * torch.randn(a.shape, generator=g, dtype=torch.float64)
        ratio = torch.linalg.vector_norm(denoiser(a) - denoiser(b)) / torch.linalg.vector_norm(a - b)
        worst = max(worst, float(ratio))
    return worst

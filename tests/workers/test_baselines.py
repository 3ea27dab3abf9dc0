"""The classical baselines (workers.baselines): Wiener and TV deconvolution, the directional de-raining filter."""

import pytest
import torch
from skimage import data, transform

from workers.baselines import directional_derain, streak_angle, tv_deconvolve, tv_objective, wiener
from workers.baselines.tv import div2d, grad2d
from workers.checks import CheckError
from workers.data.rain import add_rain, rain_layer
from workers.metrics import psnr
from workers.physics import Blur, add_noise, gaussian_kernel, motion_kernel

LIGHT = dict(layers=1, density=0.004)  # light rain: one layer, about 12% of the pixels streaked


def _rand(*shape, seed, dtype=torch.float64, device="cpu"):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype).to(device)


def _tol(dtype) -> float:
    return 100 * torch.finfo(dtype).eps


def _shapes(n=64, dtype=torch.float64):
    """A piecewise-constant test image (1, 1, n, n): a square, a disc and a dark bar on grey."""
    x = torch.full((1, 1, n, n), 0.2, dtype=dtype)
    x[..., n // 8 : n // 2, n // 8 : n // 2] = 0.9
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    x[0, 0][(i - 0.65 * n) ** 2 + (j - 0.6 * n) ** 2 < (0.22 * n) ** 2] = 0.6
    x[..., n // 10 : n // 4, int(0.6 * n) : int(0.9 * n)] = 0.0
    return x


def _smooth(n=64, dtype=torch.float64):
    """A smooth periodic test image (1, 1, n, n) in [0, 1]."""
    t = torch.arange(n, dtype=dtype) * (2 * torch.pi / n)
    x = 0.5 + 0.2 * torch.sin(3 * t)[:, None] * torch.cos(5 * t)[None, :]
    x = x + 0.15 * torch.cos(7 * t + 1)[:, None] + 0.1 * torch.sin(6 * t + 2)[None, :]
    return x[None, None]


def _camera(batch: int, dtype=torch.float32, device="cpu") -> torch.Tensor:
    image = transform.resize(data.camera(), (128, 128), anti_aliasing=True)
    return torch.tensor(image, dtype=dtype, device=device)[None, None].repeat(batch, 1, 1, 1)


def test_wiener_recovers_smooth_images():
    x = _smooth()
    blur = Blur(gaussian_kernel(9, 1.5))
    y = blur(x)
    assert float(psnr(y, x)) < 30
    assert float(psnr(wiener(y, blur, 1e-8), x)) > 100  # noiseless: nearly exact

    noisy = add_noise(y, 0.01, seed=0)
    assert float(psnr(wiener(noisy, blur, 1e-2), x)) > float(psnr(noisy, x)) + 5


def test_wiener_rejects_bad_arguments():
    with pytest.raises(ValueError, match="reg=0"):
        wiener(torch.zeros(1, 1, 8, 8), Blur(gaussian_kernel(5, 1.0)), 0)
    with pytest.raises(ValueError, match="boundary='zero'"):
        wiener(torch.zeros(1, 1, 8, 8), Blur(gaussian_kernel(5, 1.0), "zero"), 0.1)


def test_grad_div_adjoint():
    x, p = _rand(2, 3, 11, 14, seed=6), _rand(2, 3, 2, 11, 14, seed=7)
    assert grad2d(x).shape == p.shape and div2d(p).shape == x.shape
    lhs, rhs = float((grad2d(x) * p).sum()), -float((x * div2d(p)).sum())
    assert abs(lhs - rhs) <= _tol(torch.float64) * abs(lhs)
    assert float(grad2d(torch.ones(1, 1, 5, 5)).abs().max()) == 0  # constants have no gradient


def test_tv_beats_wiener_on_a_piecewise_constant_image():
    x = _shapes()
    blur = Blur(motion_kernel(13, seed=0))
    y = add_noise(blur(x), 0.01, seed=1)
    lam = 3e-3
    tv20, tv200 = tv_deconvolve(y, blur, lam, iters=20), tv_deconvolve(y, blur, lam, iters=200)
    best_wiener = max(float(psnr(wiener(y, blur, reg), x)) for reg in (1e-3, 3e-3, 1e-2, 3e-2, 1e-1))
    assert best_wiener > float(psnr(y, x))
    assert float(psnr(tv200, x)) > best_wiener + 5
    assert float(tv_objective(tv200, y, blur, lam)) < float(tv_objective(tv20, y, blur, lam))
    assert float(tv_objective(tv200, y, blur, lam)) < float(tv_objective(y, y, blur, lam))


def test_tv_rejects_bad_arguments():
    y = torch.zeros(1, 1, 8, 8)
    with pytest.raises(ValueError, match="lam=0"):
        tv_deconvolve(y, Blur(gaussian_kernel(3, 1.0)), 0)
    with pytest.raises(ValueError, match="boundary='zero'"):
        tv_deconvolve(y, Blur(gaussian_kernel(3, 1.0), "zero"), 0.1)


@pytest.mark.parametrize("angle", [-40, -20, 0, 20, 45])
def test_structure_tensor_recovers_the_streak_angle(angle):
    layer = rain_layer((128, 128), 1, angle=angle, dtype=torch.float64)[None, None]
    assert abs(float(streak_angle(layer)[0]) - angle) < 3
    # ... and on rainy images, with the background present
    rainy, _ = add_rain(_camera(2, torch.float64), 1, layers=1, density=0.006, angle=angle)
    assert (streak_angle(rainy) - angle).abs().max() < 5


def test_directional_filter_improves_psnr_on_light_rain():
    clean = _camera(3)
    rainy, _ = add_rain(clean, 0, **LIGHT)  # three images, three independent rain layers
    rainy_psnr = float(psnr(rainy, clean).mean())
    out = directional_derain(rainy)
    filtered_psnr = float(psnr(out, clean).mean())
    assert filtered_psnr >= rainy_psnr + 4.0, (rainy_psnr, filtered_psnr)
    # with a known angle it works as well, and it never brightens a pixel
    known = directional_derain(rainy[:1], angle=float(streak_angle(rainy[:1])))
    assert float(psnr(known, clean[:1])) > float(psnr(rainy[:1], clean[:1])) + 4.0
    assert (out <= rainy).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_directional_derain_keeps_shape_dtype_device_and_range(device, dtype):
    clean = _camera(2, dtype, device)[..., :64, :64]
    rainy, _ = add_rain(clean, 0, **LIGHT)
    out = directional_derain(rainy)
    assert out.shape == clean.shape and out.dtype == dtype and out.device == clean.device
    assert out.min() >= 0 and out.max() <= 1


def test_directional_filter_rejects_bad_arguments():
    cases = [
        (lambda: directional_derain(torch.zeros(1, 3, 8, 8)), "rainy: expected shape (B, 1, H, W), got (1, 3, 8, 8)"),
        (lambda: directional_derain(torch.zeros(1, 1, 8, 8), angle=120), "angle: expected a number in [-90, 90], got 120"),
        (lambda: directional_derain(torch.zeros(1, 1, 8, 8), size=4), "size: expected an odd int >= 3, got 4"),
        (lambda: streak_angle(torch.zeros(1, 1, 8, 8, dtype=torch.int64)),
         "image: expected a floating tensor, got torch.int64"),
    ]
    for call, message in cases:
        with pytest.raises(CheckError) as info:
            call()
        assert str(info.value) == message and info.value.field == message.split(":")[0]

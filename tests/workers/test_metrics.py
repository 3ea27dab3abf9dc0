"""Image quality metrics (workers.metrics) against closed forms and known values."""

import math

import pytest
import torch

from workers.metrics import psnr, ssim


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("c", [0.3, 0.1, 0.01, 1e-3, -0.05])
def test_psnr_of_a_constant_offset_is_ten_log10_of_one_over_c_squared(c, dtype):
    """x vs x + c: the MSE is c², so PSNR = 10·log10(1 / c²) for data range 1, for every image of the batch."""
    x = torch.rand(3, 1, 17, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(dtype)
    got = psnr(x + c, x)
    assert got.shape == (3,) and got.dtype == dtype
    rel = 1e-12 if dtype == torch.float64 else 1e-4
    assert got.tolist() == pytest.approx([10 * math.log10(1 / c**2)] * 3, rel=rel)


def test_psnr_is_per_image_and_finite_on_identical_images():
    x = torch.full((2, 1, 16, 16), 0.5, dtype=torch.float64)
    u = x.clone()
    u[1] += 0.1  # only the second image is off
    assert psnr(u, x).tolist() == pytest.approx([200.0, 20.0])  # the MSE is floored at 1e-20: 200 dB, not inf
    assert psnr(x + 0.1, x).tolist() == pytest.approx([20.0, 20.0])  # 10·log10(1 / 0.01)
    assert psnr(x + 0.01, x).tolist() == pytest.approx([40.0, 40.0])


def test_ssim_is_one_on_identical_images_and_drops_with_noise():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 1, 32, 32, generator=g, dtype=torch.float64)
    assert ssim(img, img) == [pytest.approx(1.0), pytest.approx(1.0)]
    assert ssim(img.float(), img.float()) == [pytest.approx(1.0), pytest.approx(1.0)]
    noisy = ssim(img + 0.2 * torch.randn(img.shape, generator=g, dtype=torch.float64), img)
    assert len(noisy) == 2 and all(s < 0.9 for s in noisy)

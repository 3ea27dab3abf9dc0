"""The measurement physics (workers.physics): blur kernels, the blur operator's adjoint, FFT against direct
convolution, the normal solve, and seeded noise."""

import pytest
import torch
from torch.nn import functional as F

from workers.physics import Blur, add_noise, gaussian_kernel, motion_kernel

CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))


KERNELS = {
    "gaussian": lambda: gaussian_kernel(9, 1.6),
    "motion": lambda: motion_kernel(13, seed=3),
    "rect": lambda: torch.rand(5, 9, generator=torch.Generator().manual_seed(4), dtype=torch.float64),  # asymmetric
}


def _rand(*shape, seed, dtype=torch.float64, device="cpu"):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype).to(device)


def _tol(dtype) -> float:
    return 100 * torch.finfo(dtype).eps


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("boundary", ["circular", "zero"])
@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_adjoint(kernel, boundary, dtype, device):
    blur = Blur(KERNELS[kernel](), boundary).to(device)
    x, y = _rand(2, 3, 20, 17, seed=0, dtype=dtype, device=device), _rand(2, 3, 20, 17, seed=1, dtype=dtype, device=device)
    ax = blur(x)
    assert ax.shape == x.shape and ax.dtype == dtype and ax.device.type == device
    lhs, rhs = float((ax * y).sum()), float((x * blur.adjoint(y)).sum())
    assert abs(lhs - rhs) <= _tol(dtype) * abs(lhs)


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_fft_blur_matches_direct_convolution(kernel):
    k = KERNELS[kernel]()
    x = _rand(2, 1, 24, 19, seed=2)
    weight = torch.flip(k, dims=(0, 1))[None, None]
    rh, rw = k.shape[0] // 2, k.shape[1] // 2
    circular = F.conv2d(F.pad(x, (rw, rw, rh, rh), mode="circular"), weight)
    zero = F.conv2d(x, weight, padding=(rh, rw))
    assert torch.allclose(Blur(k, "circular")(x), circular, rtol=0, atol=1e-10)
    assert torch.allclose(Blur(k, "zero")(x), zero, rtol=0, atol=1e-10)


def test_delta_kernel_is_the_identity_and_a_shifted_delta_shifts():
    delta = torch.zeros(5, 5, dtype=torch.float64)
    delta[2, 2] = 1.0
    x = _rand(1, 1, 8, 8, seed=5)
    for boundary in ("circular", "zero"):
        assert torch.allclose(Blur(delta, boundary)(x), x, rtol=0, atol=1e-12)
    shift = torch.zeros(5, 5, dtype=torch.float64)
    shift[2, 3] = 1.0  # convolution with δ at offset (0, +1) moves the image one column right
    assert torch.allclose(Blur(shift)(x), torch.roll(x, 1, dims=-1), rtol=0, atol=1e-12)


def test_kernels():
    g = gaussian_kernel(11, 2.0)
    assert g.shape == (11, 11) and g.dtype == torch.float64
    assert abs(float(g.sum()) - 1) < 1e-12 and bool((g >= 0).all())
    assert torch.equal(g, g.flip(0)) and torch.equal(g, g.flip(1)) and torch.equal(g, g.T)
    assert int(g.argmax()) == 5 * 11 + 5
    assert gaussian_kernel(5, 1.0, dtype=torch.float32).dtype == torch.float32

    m = motion_kernel(15, seed=7)
    assert m.shape == (15, 15) and abs(float(m.sum()) - 1) < 1e-12 and bool((m >= 0).all())
    assert torch.equal(m, motion_kernel(15, seed=7))
    assert not torch.allclose(m, motion_kernel(15, seed=8))
    assert torch.equal(motion_kernel(15, seed=7, length=6.0), motion_kernel(15, seed=7, length=6.0))
    assert int((motion_kernel(15, seed=7, length=14.0) > 0).sum()) > int((motion_kernel(15, seed=7, length=3.0) > 0).sum())
    point = motion_kernel(5, seed=0, length=0.0)
    assert float(point[2, 2]) == 1.0


@pytest.mark.parametrize("bad", [{"size": 4, "sigma": 1.0}, {"size": 0, "sigma": 1.0}, {"size": 5, "sigma": 0.0}])
def test_gaussian_kernel_rejects_bad_arguments(bad):
    with pytest.raises(ValueError, match="gaussian_kernel"):
        gaussian_kernel(**bad)


@pytest.mark.parametrize("bad", [{"size": 8, "seed": 0}, {"size": 9, "seed": 0, "length": 9.0}, {"size": 9, "seed": 0.5}])
def test_motion_kernel_rejects_bad_arguments(bad):
    with pytest.raises(ValueError, match="motion_kernel"):
        motion_kernel(**bad)


def test_blur_rejects_bad_arguments():
    with pytest.raises(ValueError, match="boundary='reflect'"):
        Blur(gaussian_kernel(5, 1.0), "reflect")
    with pytest.raises(ValueError, match="odd"):
        Blur(torch.ones(4, 4) / 16)
    with pytest.raises(ValueError, match="boundary='zero'"):
        Blur(gaussian_kernel(5, 1.0), "zero").normal_solve(torch.zeros(1, 1, 8, 8, dtype=torch.float64), 0.1)
    with pytest.raises(ValueError, match="larger"):
        Blur(gaussian_kernel(9, 1.0))(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="sigma=-0.1"):
        add_noise(torch.zeros(1, 1, 8, 8), -0.1, seed=0)


def test_kernel_fft_cache_follows_device_dtype_and_kernel_changes():
    blur = Blur(gaussian_kernel(5, 1.0))
    x64 = _rand(1, 1, 12, 12, seed=9)
    y64 = blur(x64)
    y32 = blur(x64.float())
    assert y32.dtype == torch.float32 and torch.allclose(y32.double(), y64, atol=_tol(torch.float32))
    blur.load_state_dict({"kernel": gaussian_kernel(5, 0.5)})  # an in-place change of the buffer
    assert torch.allclose(blur(x64), Blur(gaussian_kernel(5, 0.5))(x64), rtol=0, atol=1e-14)


def test_normal_solve_inverts_the_normal_operator_and_lipschitz_bounds_it():
    blur = Blur(motion_kernel(9, seed=1))
    x = _rand(2, 1, 16, 16, seed=3)
    reg = 1e-3
    rhs = blur.adjoint(blur(x)) + reg * x
    assert torch.allclose(blur.normal_solve(rhs, reg), x, rtol=0, atol=1e-9)
    per_image = torch.tensor([[[[1e-2]]], [[[1e-1]]]], dtype=torch.float64)  # one reg per image
    rhs = blur.adjoint(blur(x)) + per_image * x
    assert torch.allclose(blur.normal_solve(rhs, per_image), x, rtol=0, atol=1e-11)

    # ‖A‖² by power iteration on AᵀA: the bound holds, and is attained for the circular boundary.
    for boundary in ("circular", "zero"):
        op = Blur(blur.kernel, boundary)
        v = _rand(1, 1, 16, 16, seed=4)
        for _ in range(50):
            v = op.adjoint(op(v))
            norm_sq = float(v.norm())
            v = v / norm_sq
        assert norm_sq <= op.lipschitz((16, 16)) * (1 + 1e-12) <= op.lipschitz() * (1 + 1e-12)
        if boundary == "circular":
            assert norm_sq > op.lipschitz((16, 16)) * (1 - 1e-6)
        assert abs(op.lipschitz() - 1) < 1e-12  # a nonnegative kernel summing to 1


def test_blur_and_normal_solve_are_differentiable():
    blur = Blur(motion_kernel(5, seed=2))
    x = _rand(1, 2, 6, 7, seed=8).requires_grad_(True)
    reg = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: blur.adjoint(blur(x)), (x,))
    assert torch.autograd.gradcheck(lambda x, reg: blur.normal_solve(x, reg), (x, reg))


def test_add_noise_is_seeded_and_scaled():
    x = torch.full((2, 1, 64, 64), 0.5, dtype=torch.float64)
    a, b = add_noise(x, 0.01, seed=1), add_noise(x, 0.01, seed=1)
    assert torch.equal(a, b) and not torch.equal(a, add_noise(x, 0.01, seed=2))
    assert abs(float((a - x).std()) - 0.01) < 1e-3
    assert torch.equal(add_noise(x, 0.0, seed=1), x)

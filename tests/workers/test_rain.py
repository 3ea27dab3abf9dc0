"""Synthetic rain streaks (workers.data.rain): seeded layers, per-image seeds, the line kernel and argument checks."""

import pytest
import torch
from skimage import data, transform

from workers.checks import CheckError
from workers.data.rain import IMAGE_SEED_STRIDE, add_rain, line_kernel, rain_layer

LIGHT = dict(layers=1, density=0.004)  # light rain: one layer, about 12% of the pixels streaked


def _camera(batch: int, dtype=torch.float32, device="cpu") -> torch.Tensor:
    image = transform.resize(data.camera(), (128, 128), anti_aliasing=True)
    return torch.tensor(image, dtype=dtype, device=device)[None, None].repeat(batch, 1, 1, 1)


def test_same_seed_same_rain_different_seeds_differ():
    a = rain_layer((48, 40), 7)
    assert a.shape == (48, 40) and a.dtype == torch.float32
    assert torch.equal(a, rain_layer((48, 40), 7))
    assert not torch.equal(a, rain_layer((48, 40), 8))
    assert a.min() >= 0 and a.max() <= 1 and a.max() > 0


def test_add_rain_gives_each_image_its_own_layer():
    zeros = torch.zeros(3, 1, 32, 32, dtype=torch.float64)
    rainy, rain = add_rain(zeros, 5)
    for i in range(3):  # image i gets rain_layer(shape, seed * IMAGE_SEED_STRIDE + i), whatever the batch size
        assert torch.equal(rain[i, 0], rain_layer((32, 32), 5 * IMAGE_SEED_STRIDE + i, dtype=torch.float64))
    assert not torch.equal(rain[0], rain[1]) and not torch.equal(rain[1], rain[2])
    assert torch.equal(add_rain(zeros[:1], 5)[1], rain[:1])
    assert torch.equal(add_rain(zeros, 5)[0], rainy)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_add_rain_keeps_shape_dtype_device_and_range(device, dtype):
    clean = _camera(2, dtype, device)[..., :64, :64]
    rainy, rain = add_rain(clean, 0, **LIGHT)
    for t in (rainy, rain):
        assert t.shape == clean.shape and t.dtype == dtype and t.device == clean.device
    assert rainy.min() >= 0 and rainy.max() <= 1
    assert torch.equal(rainy - clean, rain)  # the rain actually added, after clipping
    assert rain.min() >= 0 and rain.max() > 0


def test_more_density_or_intensity_gives_more_rain():
    means = [float(rain_layer((64, 64), 3, density=d).mean()) for d in (0.001, 0.003, 0.01, 0.03)]
    assert means == sorted(means) and means[0] < means[-1] / 10
    means = [float(rain_layer((64, 64), 3, intensity=v).mean()) for v in (0.2, 0.5, 0.9)]
    assert means == sorted(means) and means[0] < means[-1] / 2


@pytest.mark.parametrize("density", [0.005, 0.5])  # sparse: kernel copies are scattered; dense: conv2d
def test_streaks_are_the_seed_points_correlated_with_the_line_kernel(density):
    from workers.data.rain import _splat

    kernel = line_kernel(15, -30, 1.2)
    gen = torch.Generator().manual_seed(0)
    seeds = (torch.rand(60, 50, generator=gen, dtype=torch.float64) < density) * torch.rand(60, 50, generator=gen, dtype=torch.float64)
    reference = torch.nn.functional.conv2d(seeds[None, None], kernel[None, None])[0, 0]
    assert torch.allclose(_splat(seeds, kernel), reference, rtol=0, atol=1e-12)


def test_line_kernel_points_along_the_angle():
    k = line_kernel(40, 20, 1.0)
    r = torch.arange(k.shape[0], dtype=torch.float64) - k.shape[0] // 2
    rows, cols = r[:, None], r[None, :]
    # second moments: the major axis is (cos 20°, -sin 20°) in (row, col)
    angle = torch.rad2deg(0.5 * torch.atan2(-2 * (k * rows * cols).sum(), (k * rows**2).sum() - (k * cols**2).sum()))
    assert abs(float(angle) - 20) < 0.1 and float(k.max()) == 1.0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(density=0.0), "density"),
        (dict(density=1.5), "density"),
        (dict(density=(0.01, 0.002)), "density"),
        (dict(length=-3), "length"),
        (dict(angle=(-100, 0)), "angle"),
        (dict(width=0), "width"),
        (dict(intensity=(0.5, 1.2)), "intensity"),
        (dict(layers=0), "layers"),
        (dict(dtype=torch.int64), "dtype"),
    ],
)
def test_bad_rain_arguments_raise(kwargs, field):
    with pytest.raises(CheckError) as info:
        rain_layer((16, 16), 0, **kwargs)
    assert info.value.field == field and info.value.got == kwargs[field]


def test_bad_arguments_raise():
    cases = [
        (lambda: rain_layer((16, 0), 0), "shape: expected a pair (H, W) of ints >= 1, got (16, 0)"),
        (lambda: rain_layer((16, 16), -1), "seed: expected an int in [0, 9223372036854775807], got -1"),
        (lambda: add_rain(torch.zeros(1, 1, 8, 8), 1.5), "seed: expected an int in [0, 8796093022207], got 1.5"),
        (lambda: add_rain(torch.zeros(8, 8), 0), "clean: expected shape (B, 1, H, W), got (8, 8)"),
        (lambda: add_rain(torch.full((1, 1, 8, 8), 2.0), 0),
         "clean: expected a (min, max) range inside [0, 1], got (2.0, 2.0)"),
        (lambda: add_rain(torch.zeros(1, 1, 8, 8), 0, density=2),
         "density: expected a number or a (low, high) pair with low <= high in (0.0, 1.0], got 2"),
        (lambda: add_rain(torch.zeros(1, 1, 8, 8), 0, shape=(4, 4)),
         "shape: expected no value (add_rain takes it from clean), got (4, 4)"),
    ]
    for call, message in cases:
        with pytest.raises(CheckError) as info:
            call()
        assert str(info.value) == message and info.value.field == message.split(":")[0]

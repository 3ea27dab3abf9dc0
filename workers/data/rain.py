"""Synthetic rain streaks (Rain100L/Rain100H style): the data of the de-raining task.

Images are tensors (B, 1, H, W), float32 or float64, with values in [0, 1]; every
function works on CPU and CUDA tensors. Randomness comes from a CPU
``torch.Generator`` seeded with the given seed, so the same seed gives the same
rain on every device.

Angles are in degrees from vertical, in [-90, 90]; a positive angle turns the
streaks clockwise on screen (their tops lean right: going down a streak, the
column decreases).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from workers.checks import CheckError, check_int, is_int, is_real
from workers.data.images import check_image

#: ``add_rain`` gives image i of a batch with seed s the layer ``rain_layer(shape, s * IMAGE_SEED_STRIDE + i)``.
IMAGE_SEED_STRIDE = 2**20
_MAX_SEED = 2**43 - 1  # so that s * IMAGE_SEED_STRIDE + i stays below 2**63

Range = float | tuple[float, float]


def _check_range(name: str, value, low: float, high: float, low_open: bool) -> tuple[float, float]:
    """Return ``value`` (a number or a (lo, hi) pair) as a pair inside [low, high] (or (low, high])."""
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    ok = len(pair) == 2 and all(is_real(v) for v in pair)
    if ok:
        lo, hi = float(pair[0]), float(pair[1])
        ok = lo <= hi and (lo > low if low_open else lo >= low) and hi <= high
    if not ok:
        bounds = f"({low}, {high}]" if low_open else f"[{low}, {high}]"
        raise CheckError(name, f"a number or a (low, high) pair with low <= high in {bounds}", value)
    return lo, hi


def line_kernel(length: float, angle: float, width: float, dtype=torch.float64) -> Tensor:
    """An anti-aliased line segment (k, k), k odd, of ``length`` and ``width`` pixels at ``angle``, peak 1.

    Each weight is the pixel's coverage by the segment (distance to its axis and to its
    ends, with a one-pixel linear ramp), divided by the largest weight.
    """
    length, _ = _check_range("length", length, 0.0, 1e4, low_open=True)
    angle, _ = _check_range("angle", angle, -90.0, 90.0, low_open=False)
    width, _ = _check_range("width", width, 0.0, 1e4, low_open=True)
    theta = math.radians(angle)
    drow, dcol = math.cos(theta), -math.sin(theta)  # unit vector along the streak
    r = math.ceil(length / 2 + width / 2 + 1)
    offsets = torch.arange(-r, r + 1, dtype=torch.float64)
    row, col = offsets[:, None], offsets[None, :]
    along = row * drow + col * dcol
    across = row * dcol - col * drow
    kernel = (width / 2 + 0.5 - across.abs()).clamp(0, 1) * (length / 2 + 0.5 - along.abs()).clamp(0, 1)
    return (kernel / kernel.max()).to(dtype)


def _splat(seeds: Tensor, kernel: Tensor) -> Tensor:
    """The 'valid' correlation of sparse ``seeds`` (H + k - 1, W + k - 1) with ``kernel`` (k, k).

    Adds a kernel copy per seed point (fast when the seeds are sparse), or calls conv2d
    when they are dense.
    """
    k = kernel.shape[-1]
    height, width = seeds.shape[0] - k + 1, seeds.shape[1] - k + 1
    rows, cols = seeds.nonzero(as_tuple=True)
    krows, kcols = kernel.nonzero(as_tuple=True)
    if rows.numel() * krows.numel() > 4 * seeds.numel():
        return F.conv2d(seeds[None, None], kernel[None, None])[0, 0]
    # seed (r, c) reaches output (r - a, c - b) with weight kernel[a, b]
    out_rows = rows[:, None] - krows[None, :]
    out_cols = cols[:, None] - kcols[None, :]
    inside = (out_rows >= 0) & (out_rows < height) & (out_cols >= 0) & (out_cols < width)
    values = seeds[rows, cols][:, None] * kernel[krows, kcols][None, :]
    out = torch.zeros(height * width, dtype=seeds.dtype)
    out.index_add_(0, (out_rows * width + out_cols)[inside], values[inside])
    return out.view(height, width)


def rain_layer(
    shape: tuple[int, int],
    seed: int,
    *,
    layers: int = 2,
    density: Range = (0.002, 0.01),
    length: Range = (8, 25),
    angle: Range = (-25, 25),
    width: Range = (0.6, 1.5),
    intensity: Range = (0.4, 0.9),
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """A synthetic rain layer (H, W) in [0, 1]: ``layers`` streak layers, summed and clipped.

    Each layer draws its density, length, angle, width and intensity uniformly from the
    given (low, high) ranges (a number fixes it), marks seed points with probability
    ``density`` per pixel and amplitudes uniform in [0.5, 1], and convolves them with
    ``line_kernel`` (peak 1), so an isolated streak peaks at amplitude × intensity. Seed
    points cover a margin around the image, so streaks enter across the border.
    Computed in float64 on CPU, then cast to ``dtype`` and moved to ``device``.
    """
    if not isinstance(shape, (tuple, list)) or len(shape) != 2 or not all(is_int(n) and n > 0 for n in shape):
        raise CheckError("shape", "a pair (H, W) of ints >= 1", shape)
    check_int("seed", seed, 0, 2**63 - 1)
    check_int("layers", layers, minimum=1)
    ranges = {
        "density": _check_range("density", density, 0.0, 1.0, low_open=True),
        "length": _check_range("length", length, 0.0, 256.0, low_open=True),
        "angle": _check_range("angle", angle, -90.0, 90.0, low_open=False),
        "width": _check_range("width", width, 0.0, 16.0, low_open=True),
        "intensity": _check_range("intensity", intensity, 0.0, 1.0, low_open=True),
    }
    if dtype not in (torch.float32, torch.float64):
        raise CheckError("dtype", "torch.float32 or torch.float64", dtype)

    gen = torch.Generator().manual_seed(seed)
    height, width_px = shape
    total = torch.zeros(height, width_px, dtype=torch.float64)
    for _ in range(layers):
        u = torch.rand(len(ranges), generator=gen, dtype=torch.float64).tolist()
        p = {name: lo + (hi - lo) * t for (name, (lo, hi)), t in zip(ranges.items(), u)}
        kernel = line_kernel(p["length"], p["angle"], p["width"])
        k = kernel.shape[-1]
        canvas = (height + k - 1, width_px + k - 1)  # 'valid' convolution: streaks enter from outside
        points = torch.rand(canvas, generator=gen, dtype=torch.float64) < p["density"]
        amplitude = 0.5 + 0.5 * torch.rand(canvas, generator=gen, dtype=torch.float64)
        total += p["intensity"] * _splat(points * amplitude, kernel)
    return total.clamp_(0, 1).to(device=device, dtype=dtype)


def add_rain(clean: Tensor, seed: int, **rain_kwargs) -> tuple[Tensor, Tensor]:
    """Add an independent rain layer to each image of ``clean`` (B, 1, H, W); return (rainy, rain).

    Image i gets ``rain_layer((H, W), seed * IMAGE_SEED_STRIDE + i, **rain_kwargs)`` (so it
    does not depend on the batch size), and rainy = clip(clean + layer, 0, 1). The returned
    ``rain`` is the rain actually added, rainy − clean after clipping (smaller than the layer
    where the background is bright). Same dtype and device as ``clean``.
    """
    check_image("clean", clean)
    check_int("seed", seed, 0, _MAX_SEED)
    if clean.shape[0] > IMAGE_SEED_STRIDE:
        raise CheckError("clean", f"at most {IMAGE_SEED_STRIDE} images (its batch size)", clean.shape[0])
    for name in ("shape", "dtype", "device"):
        if name in rain_kwargs:
            raise CheckError(name, "no value (add_rain takes it from clean)", rain_kwargs[name])
    if clean.numel() and (float(clean.min()) < 0 or float(clean.max()) > 1):
        raise CheckError("clean", "a (min, max) range inside [0, 1]", (float(clean.min()), float(clean.max())))
    shape = tuple(clean.shape[-2:])
    layer = torch.stack(
        [
            rain_layer(shape, seed * IMAGE_SEED_STRIDE + i, dtype=clean.dtype, device=clean.device, **rain_kwargs)
            for i in range(clean.shape[0])
        ]
    )
    rainy = (clean + layer[:, None]).clamp(0, 1)
    return rainy, rainy - clean

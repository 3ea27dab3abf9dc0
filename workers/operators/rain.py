"""Synthetic rain streaks (Rain100L/Rain100H style) and a classical directional de-raining filter.

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
from numbers import Real

import torch
import torch.nn.functional as F
from torch import Tensor

#: ``add_rain`` gives image i of a batch with seed s the layer ``rain_layer(shape, s * IMAGE_SEED_STRIDE + i)``.
IMAGE_SEED_STRIDE = 2**20
_MAX_SEED = 2**43 - 1  # so that s * IMAGE_SEED_STRIDE + i stays below 2**63

Range = float | tuple[float, float]


def _check_seed(seed, where: str, high: int = 2**63 - 1) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= high:
        raise ValueError(f"{where}: seed must be an int in [0, {high}], got seed={seed!r}")


def _check_range(name: str, value, low: float, high: float, low_open: bool) -> tuple[float, float]:
    """Return ``value`` (a number or a (lo, hi) pair) as a pair inside [low, high] (or (low, high])."""
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    ok = len(pair) == 2 and all(isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) for v in pair)
    if ok:
        lo, hi = float(pair[0]), float(pair[1])
        ok = lo <= hi and (lo > low if low_open else lo >= low) and hi <= high
    if not ok:
        bounds = f"({low}, {high}]" if low_open else f"[{low}, {high}]"
        raise ValueError(f"rain: {name} must be a number or a (low, high) pair with low <= high in {bounds}, got {name}={value!r}")
    return lo, hi


def _check_image(name: str, x, where: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != 1 or not x.is_floating_point():
        got = f"shape {tuple(x.shape)}, dtype {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{where}: {name} must be a floating tensor (B, 1, H, W), got {name} with {got}")


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
    if (
        not isinstance(shape, (tuple, list))
        or len(shape) != 2
        or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)
    ):
        raise ValueError(f"rain: shape must be a pair of positive ints (H, W), got shape={shape!r}")
    _check_seed(seed, "rain")
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        raise ValueError(f"rain: layers must be an int >= 1, got layers={layers!r}")
    ranges = {
        "density": _check_range("density", density, 0.0, 1.0, low_open=True),
        "length": _check_range("length", length, 0.0, 256.0, low_open=True),
        "angle": _check_range("angle", angle, -90.0, 90.0, low_open=False),
        "width": _check_range("width", width, 0.0, 16.0, low_open=True),
        "intensity": _check_range("intensity", intensity, 0.0, 1.0, low_open=True),
    }
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"rain: dtype must be torch.float32 or torch.float64, got dtype={dtype!r}")

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
    _check_image("clean", clean, "add_rain")
    _check_seed(seed, "add_rain", _MAX_SEED)
    if clean.shape[0] > IMAGE_SEED_STRIDE:
        raise ValueError(f"add_rain: clean may hold at most {IMAGE_SEED_STRIDE} images, got batch size {clean.shape[0]}")
    for name in ("shape", "dtype", "device"):
        if name in rain_kwargs:
            raise ValueError(f"add_rain: {name} is taken from clean, got {name}={rain_kwargs[name]!r}")
    if clean.numel() and (float(clean.min()) < 0 or float(clean.max()) > 1):
        raise ValueError(f"add_rain: clean must have values in [0, 1], got range [{float(clean.min())}, {float(clean.max())}]")
    shape = tuple(clean.shape[-2:])
    layer = torch.stack(
        [
            rain_layer(shape, seed * IMAGE_SEED_STRIDE + i, dtype=clean.dtype, device=clean.device, **rain_kwargs)
            for i in range(clean.shape[0])
        ]
    )
    rainy = (clean + layer[:, None]).clamp(0, 1)
    return rainy, rainy - clean


def _sobel(x: Tensor) -> tuple[Tensor, Tensor]:
    """Sobel gradients (d/drow, d/dcol) of (B, 1, H, W), replicate-padded."""
    smooth = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype, device=x.device) / 8
    diff = torch.tensor([-1.0, 0.0, 1.0], dtype=x.dtype, device=x.device)
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    grow = F.conv2d(padded, (diff[:, None] * smooth[None, :])[None, None])
    gcol = F.conv2d(padded, (smooth[:, None] * diff[None, :])[None, None])
    return grow, gcol


def _white_tophat(x: Tensor, size: int) -> Tensor:
    """x − opening(x) with a size × size square: bright structures thinner than ``size``."""
    r = size // 2
    eroded = -F.max_pool2d(F.pad(-x, (r, r, r, r), mode="replicate"), size, stride=1)
    opened = F.max_pool2d(F.pad(eroded, (r, r, r, r), mode="replicate"), size, stride=1)
    return x - opened


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of (B, 1, H, W), replicate-padded."""
    r = math.ceil(3 * sigma)
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    x = F.pad(x, (r, r, r, r), mode="replicate")
    return F.conv2d(F.conv2d(x, g.view(1, 1, -1, 1)), g.view(1, 1, 1, -1))


def streak_angle(image: Tensor) -> Tensor:
    """Dominant streak angle (B,), degrees from vertical in (-90, 90], from the structure tensor.

    The structure tensor J = Σ ∇f ∇fᵀ is summed over each image, with f the white top-hat
    of the image (bright structures thinner than 5 pixels, which keeps the streaks and
    drops most of the background) blurred by a Gaussian of σ = 1 (less pixel-grid bias);
    its main eigenvector is across the streaks. On thin synthetic streaks the estimate
    leans toward the nearest axis by up to about 2 degrees.
    """
    _check_image("image", image, "streak_angle")
    grow, gcol = _sobel(_gaussian_blur(_white_tophat(image, 5), 1.0))
    jxx = (gcol * gcol).sum(dim=(1, 2, 3))
    jyy = (grow * grow).sum(dim=(1, 2, 3))
    jxy = (gcol * grow).sum(dim=(1, 2, 3))
    # the gradient's main direction makes the angle φ with the column axis; the streak is at φ from vertical
    angle = torch.rad2deg(0.5 * torch.atan2(2 * jxy, jxx - jyy))
    return torch.where(angle <= -90, angle + 180, angle)


def _line_offsets(angle: float, size: int) -> list[tuple[int, int]]:
    """Integer (row, col) offsets of a digital line of ``size`` pixels across streaks at ``angle``."""
    theta = math.radians(angle)
    prow, pcol = math.sin(theta), math.cos(theta)  # unit vector perpendicular to the streak
    step = 1 / max(abs(prow), abs(pcol))  # one pixel along the major axis per sample
    return [(round(t * step * prow), round(t * step * pcol)) for t in range(-(size // 2), size // 2 + 1)]


def _line_stack(x: Tensor, offsets: list[tuple[int, int]]) -> Tensor:
    """Samples of x (1, 1, H, W) at the given offsets, stacked on dim 1 (1, n, H, W), replicate-padded."""
    r = max(max(abs(a), abs(b)) for a, b in offsets)
    height, width = x.shape[-2:]
    padded = F.pad(x, (r, r, r, r), mode="replicate")
    return torch.cat([padded[..., r + a : r + a + height, r + b : r + b + width] for a, b in offsets], dim=1)


def directional_derain(rainy: Tensor, angle: float | None = None, size: int = 7) -> Tensor:
    """Background estimate of ``rainy`` (B, 1, H, W) by a one-sided median across the streaks.

    A classical filter, no learning, in torch on the input's device. With ``angle`` None
    each image's streak angle comes from ``streak_angle``. Each pixel is replaced by the
    median of ``size`` pixels on a digital line perpendicular to the streaks (a thin streak
    covers few of them), and since rain only adds brightness, by the smaller of that median
    and the pixel itself. Returns values in [0, 1], same shape, dtype and device.
    """
    _check_image("rainy", rainy, "directional_derain")
    if angle is not None and (isinstance(angle, bool) or not isinstance(angle, Real) or not -90 <= angle <= 90):
        raise ValueError(f"directional_derain: angle must be None or a number in [-90, 90], got angle={angle!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 3 or size % 2 == 0:
        raise ValueError(f"directional_derain: size must be an odd int >= 3, got size={size!r}")
    angles = streak_angle(rainy).tolist() if angle is None else [float(angle)] * rainy.shape[0]
    out = []
    for x, a in zip(rainy.split(1), angles):
        median = _line_stack(x, _line_offsets(a, size)).median(dim=1, keepdim=True).values
        out.append(torch.minimum(x, median))
    return torch.cat(out).clamp(0, 1) if out else rainy.clone()

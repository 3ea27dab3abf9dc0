"""A classical de-raining filter: the streak angle from the structure tensor, then a directional median.

Images are tensors (B, 1, H, W), float32 or float64, with values in [0, 1]; every
function works on CPU and CUDA tensors. Angles are in degrees from vertical, in
[-90, 90]; a positive angle turns the streaks clockwise on screen (their tops lean
right: going down a streak, the column decreases), as in ``workers.data.rain``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from workers.checks import CheckError, check_real, is_int
from workers.data.images import check_image


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
    check_image("image", image)
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
    check_image("rainy", rainy)
    if angle is not None:
        check_real("angle", angle, -90, 90)
    if not (is_int(size) and size >= 3 and size % 2):
        raise CheckError("size", "an odd int >= 3", size)
    angles = streak_angle(rainy).tolist() if angle is None else [float(angle)] * rainy.shape[0]
    out = []
    for x, a in zip(rainy.split(1), angles):
        median = _line_stack(x, _line_offsets(a, size)).median(dim=1, keepdim=True).values
        out.append(torch.minimum(x, median))
    return torch.cat(out).clamp(0, 1) if out else rainy.clone()

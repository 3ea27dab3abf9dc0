"""Measurement noise: seeded additive Gaussian noise, the same on every device."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def add_noise(x: Tensor, sigma: float, seed: int) -> Tensor:
    """Return x + sigma·N(0, 1), the noise drawn on CPU from ``seed`` (not clamped).

    ``sigma`` is a fraction of the dynamic range [0, 1]: 1% noise is sigma=0.01. The
    same seed gives the same noise on every device.
    """
    if not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"add_noise: sigma must be a finite number >= 0, got sigma={sigma!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"add_noise: seed must be an int, got seed={seed!r}")
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    return x + sigma * noise.to(x.device)

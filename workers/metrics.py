"""Image quality metrics per image of a batch of grayscale images (B, 1, H, W), data range 1: PSNR and SSIM."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["psnr", "ssim"]


def psnr(u: Tensor, x: Tensor) -> Tensor:
    """Peak signal-to-noise ratio (dB) per image for data range 1."""
    mse = ((u - x) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-20))


def ssim(u: Tensor, x: Tensor) -> list[float]:
    """Structural similarity per image (scikit-image, data range 1)."""
    from skimage.metrics import structural_similarity

    a, b = u.detach().double().cpu().numpy(), x.detach().double().cpu().numpy()
    return [float(structural_similarity(a[i, 0], b[i, 0], data_range=1.0)) for i in range(a.shape[0])]

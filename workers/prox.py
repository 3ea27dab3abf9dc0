"""Proximal maps with closed forms: soft thresholding, the prox of the ℓ1 norm."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["soft_threshold"]


def soft_threshold(x: Tensor, theta: Tensor | float) -> Tensor:
    """prox of θ‖·‖₁: sign(x)·max(|x| - θ, 0), elementwise (θ broadcasts)."""
    return torch.sign(x) * torch.relu(x.abs() - theta)

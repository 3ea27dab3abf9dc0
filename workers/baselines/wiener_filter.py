"""Wiener (Tikhonov) deconvolution: the closed-form linear baseline, solved in the Fourier domain."""

from __future__ import annotations

import math

from torch import Tensor

from workers.physics.blur import Blur


def wiener(y: Tensor, blur: Blur, reg: float) -> Tensor:
    """Wiener/Tikhonov deconvolution x = (AᵀA + reg·I)⁻¹ Aᵀ y (circular boundary; not clamped)."""
    if not isinstance(reg, (int, float)) or not math.isfinite(reg) or reg <= 0:
        raise ValueError(f"wiener: reg must be a finite number > 0, got reg={reg!r}")
    if blur.boundary != "circular":
        raise ValueError(f"wiener: needs a blur with boundary='circular', got boundary={blur.boundary!r}")
    return blur.normal_solve(blur.adjoint(y), reg)

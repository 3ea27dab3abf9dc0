"""Isotropic total-variation deconvolution by PDHG (Chambolle–Pock), with the discrete gradient."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

from workers.physics.blur import Blur

#: ‖∇‖² ≤ 8 for the forward-difference gradient in 2-D.
GRAD_NORM_SQ = 8.0


def grad2d(x: Tensor) -> Tensor:
    """Forward-difference gradient with Neumann boundary: (..., H, W) → (..., 2, H, W).

    Component 0 is the difference along H (x[i+1, j] − x[i, j]), component 1 along W;
    each is 0 on the last row / column.
    """
    dh = F.pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1))
    dw = F.pad(x[..., :, 1:] - x[..., :, :-1], (0, 1))
    return torch.stack([dh, dw], dim=-3)


def div2d(p: Tensor) -> Tensor:
    """Discrete divergence, the negative adjoint of ``grad2d``: (..., 2, H, W) → (..., H, W).

    ⟨grad2d(x), p⟩ = −⟨x, div2d(p)⟩ for every p (the last row of p[..., 0, :, :] and the
    last column of p[..., 1, :, :] are ignored, as grad2d leaves them 0).
    """
    ph = F.pad(p[..., 0, :-1, :], (0, 0, 0, 1))  # drop the last row, then pad it back with 0
    pw = F.pad(p[..., 1, :, :-1], (0, 1))
    return ph - F.pad(ph[..., :-1, :], (0, 0, 1, 0)) + pw - F.pad(pw[..., :, :-1], (1, 0))


def tv(x: Tensor) -> Tensor:
    """Isotropic total variation Σ ‖∇x‖₂ per image, summed over channels: (B, C, H, W) → (B,)."""
    return torch.linalg.vector_norm(grad2d(x), dim=-3).sum(dim=(-3, -2, -1))


def tv_objective(x: Tensor, y: Tensor, blur: Blur, lam: float) -> Tensor:
    """½‖Ax − y‖² + lam·TV(x) per image: (B, C, H, W) → (B,)."""
    return 0.5 * ((blur(x) - y) ** 2).sum(dim=(-3, -2, -1)) + lam * tv(x)


def tv_deconvolve(y: Tensor, blur: Blur, lam: float, iters: int = 200, tau: float | None = None) -> Tensor:
    """Isotropic TV deconvolution: min_x ½‖Ax − y‖² + lam·TV(x), by PDHG (Chambolle–Pock).

    K = ∇ (``grad2d``); the dual step projects onto {‖p_ij‖₂ ≤ lam} (TV is per channel),
    the primal step is the exact prox of the data term, (AᵀA + I/τ)⁻¹(Aᵀy + x/τ), by
    ``blur.normal_solve`` (circular boundary only). Steps τ = ``tau`` and
    σ = 0.99 / (8τ), so τσ‖∇‖² < 1; the default τ = 0.2/√lam balances the primal and
    dual steps for images in [0, 1] (measured on lam in [1e-3, 0.1]). Starts from
    x = y, p = 0.

    The result is the last iterate, not clamped: it estimates the minimiser of the
    stated problem. For images in [0, 1], clamping it to [0, 1] can only bring it closer
    to the truth; callers who want that do it themselves.
    """
    if not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam <= 0:
        raise ValueError(f"tv_deconvolve: lam must be a finite number > 0, got lam={lam!r}")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"tv_deconvolve: iters must be an int >= 1, got iters={iters!r}")
    if tau is None:
        tau = 0.2 / math.sqrt(lam)
    elif not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau <= 0:
        raise ValueError(f"tv_deconvolve: tau must be a finite number > 0, got tau={tau!r}")
    if blur.boundary != "circular":
        raise ValueError(f"tv_deconvolve: needs a blur with boundary='circular', got boundary={blur.boundary!r}")
    sigma = 0.99 / (GRAD_NORM_SQ * tau)
    aty = blur.adjoint(y)
    x = y.clone()
    x_bar = x
    p = torch.zeros_like(grad2d(x))
    for _ in range(iters):
        p = p + sigma * grad2d(x_bar)
        # Onto {‖p_ij‖ ≤ lam}: p / max(‖p_ij‖ / lam, 1), clamped before the sqrt (fast, and no NaN gradient at 0).
        p = p * (lam / torch.sqrt(torch.clamp((p * p).sum(dim=-3, keepdim=True), min=lam**2)))
        x_new = blur.normal_solve(aty + (x + tau * div2d(p)) / tau, 1.0 / tau)
        x_bar = 2 * x_new - x
        x = x_new
    return x

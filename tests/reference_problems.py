"""Small reference problems with known fixed points, shared by the solver tests."""

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from workers import Problem


@dataclass
class Batch:
    y: Tensor
    x: Tensor


class AffineProjection(Problem):
    """T = projection onto {u : Au = b} (A wide), ℓ = ½‖u - z‖²: BMO must select P(z)."""

    nonexpansive = True

    def __init__(self, m=5, n=12, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("A", torch.randn(m, n, generator=g, dtype=torch.float64))
        self.register_buffer("b", torch.randn(m, generator=g, dtype=torch.float64))
        self.register_buffer("z", torch.randn(1, n, generator=g, dtype=torch.float64))
        self.register_buffer("AAt_inv", torch.linalg.inv(self.A @ self.A.T))

    def project_affine(self, u):
        return u - (u @ self.A.T - self.b) @ self.AAt_inv @ self.A

    def init(self, batch):
        return batch.y.clone()

    def operator(self, u, batch, k):
        return self.project_affine(u)

    def upper_loss(self, u, batch):
        return 0.5 * ((u - self.z) ** 2).sum(-1).mean()

    def metrics(self, u, batch):
        return {"dist": float(torch.linalg.vector_norm(u - self.project_affine(self.z)))}

    def batches(self, split):
        yield Batch(y=torch.zeros(1, self.A.shape[1], dtype=torch.float64), x=self.z)


class SmoothContractive(Problem):
    """T(u) = ρ·tanh(W u + c + y) with ‖W‖₂ = 1, so T is ρ-contractive; smooth, for gradient checks.

    ℓ(u; ω) = ½‖u - x‖² + ½·reg·‖c‖² depends on ω = (W, c) directly too.
    """

    nonexpansive = True

    def __init__(self, n=6, batch=3, rho=0.5, reg=0.1, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        W = torch.randn(n, n, generator=g, dtype=torch.float64)
        self.W = nn.Parameter(W / torch.linalg.matrix_norm(W, ord=2))
        self.c = nn.Parameter(0.3 * torch.randn(n, generator=g, dtype=torch.float64))
        self.rho, self.reg = rho, reg
        self.batch = Batch(
            y=torch.randn(batch, n, generator=g, dtype=torch.float64),
            x=0.5 * torch.randn(batch, n, generator=g, dtype=torch.float64),
        )

    def init(self, batch):
        return torch.zeros_like(batch.y)

    def operator(self, u, batch, k):
        return self.rho * torch.tanh(u @ self.W.T + self.c + batch.y)

    def upper_loss(self, u, batch):
        return 0.5 * ((u - batch.x) ** 2).sum(-1).mean() + 0.5 * self.reg * (self.c**2).sum()

    def metrics(self, u, batch):
        return {"mse": float(((u - batch.x) ** 2).mean())}

    def batches(self, split):
        while True:
            yield self.batch
            if split != "train":
                return

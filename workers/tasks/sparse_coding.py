"""Sparse coding (LASSO) with learned ISTA-type operators, the BMO paper's first task.

Data: A ∈ R^{m×n} Gaussian with unit-norm columns, x with Bernoulli(``sparsity``)
support and N(0, 1) values, y = Ax + ``noise``·N(0, 1); fresh training batches
every step (online), fixed validation and test sets. All seeded by ``seed``.

Operators (``operator=``), all of the form u ↦ T(u, ω) with u the code estimate:

- ``ista``: soft(u - step·Aᵀ(Au - y), lam·step); nothing learned (UNH).
- ``fista``: ISTA with Nesterov momentum; the iterate stacks (x_k, x_{k-1}).
- ``tied_coupled``: soft(u - Wᵀ(Au - y), θ), W initialised to A/L, θ to lam/L.
- ``untied_coupled``: the same with W_k, θ_k per layer k = 1..``layers``.
- ``lista_tied``: free-form LISTA soft(W₁y + S u, θ), W₁ = Aᵀ/L, S = I - AᵀA/L.
- ``lista_untied``: free-form LISTA with W₁_k, S_k, θ_k per layer.

Untied operators reuse their last layer beyond ``layers`` ("untrained layers").
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from workers.operators import soft_threshold
from workers.problem import Problem
from workers.tasks._checks import check_choice, check_positive_ints

OPERATORS = ("ista", "fista", "tied_coupled", "untied_coupled", "lista_tied", "lista_untied")
PRESETS = {"small": (64, 128), "paper": (250, 500)}
DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class SparseBatch:
    """Measurements ``y`` (B, m) and true codes ``x`` (B, n); ``x`` is None for a user's measurements."""

    y: Tensor
    x: Tensor | None


def _fista_momentum(k: int) -> float:
    """(t_k - 1) / t_{k+1} with t_1 = 1, the momentum FISTA applies at step k."""
    t = 1.0
    for _ in range(k - 1):
        t = (1 + math.sqrt(1 + 4 * t * t)) / 2
    t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
    return (t - 1) / t_next


class SparseCoding(Problem):
    """LASSO min ½‖Ax - y‖² + λ‖x‖₁ solved by a (learned) ISTA-type fixed-point operator."""

    def __init__(
        self,
        m: int | None = None,
        n: int | None = None,
        preset: str = "small",
        operator: str = "tied_coupled",
        layers: int = 16,
        lam: float = 0.1,
        step: float | None = None,
        sparsity: float = 0.1,
        noise: float = 0.01,
        batch_size: int = 100,
        val_size: int = 1000,
        test_size: int = 1000,
        seed: int = 0,
        dtype: str = "float32",
    ):
        super().__init__()
        check_choice("sparse_coding", "preset", preset, PRESETS)
        m = PRESETS[preset][0] if m is None else m
        n = PRESETS[preset][1] if n is None else n
        check_positive_ints("sparse_coding", m=m, n=n, layers=layers, batch_size=batch_size, val_size=val_size,
                            test_size=test_size)
        check_choice("sparse_coding", "operator", operator, OPERATORS)
        if not 0 < sparsity <= 1:
            raise ValueError(f"sparse_coding: sparsity must be in (0, 1], got sparsity={sparsity!r}")
        if noise < 0 or lam < 0:
            raise ValueError(f"sparse_coding: noise and lam must be >= 0, got noise={noise!r}, lam={lam!r}")
        check_choice("sparse_coding", "dtype", dtype, DTYPES)
        self.m, self.n, self.operator_name, self.layers = m, n, operator, layers
        self.sparsity, self.noise, self.seed = sparsity, noise, seed
        self.batch_size, self.val_size, self.test_size = batch_size, val_size, test_size

        gen = torch.Generator().manual_seed(seed)
        A = torch.randn(m, n, generator=gen, dtype=torch.float64)
        A = A / torch.linalg.vector_norm(A, dim=0, keepdim=True)
        L = float(torch.linalg.matrix_norm(A, ord=2) ** 2)
        step = 1.0 / L if step is None else step
        if not step > 0:
            raise ValueError(f"sparse_coding: step must be > 0, got step={step!r}")
        dt = DTYPES[dtype]
        self.register_buffer("A", A.to(dt))
        self.L, self.lam, self.step = L, lam, step
        # ISTA is averaged (hence nonexpansive) for step <= 2/L; the learned forms are not by construction.
        self.nonexpansive = operator == "ista" and step <= 2.0 / L

        n_layers = layers if "untied" in operator else 1
        if operator in ("ista", "fista"):
            self.register_buffer("theta", torch.tensor(lam * step, dtype=dt))
        elif operator.endswith("coupled"):
            self.W = nn.Parameter((A / L).to(dt).repeat(n_layers, 1, 1))
            self.theta = nn.Parameter(torch.full((n_layers,), lam / L, dtype=dt))
        else:
            self.W1 = nn.Parameter((A.T / L).to(dt).repeat(n_layers, 1, 1))
            self.S = nn.Parameter((torch.eye(n, dtype=torch.float64) - A.T @ A / L).to(dt).repeat(n_layers, 1, 1))
            self.theta = nn.Parameter(torch.full((n_layers,), lam / L, dtype=dt))
        self._fixed = {
            split: self._sample(size, seed * 1000 + offset)
            for split, size, offset in (("val", val_size, 2), ("test", test_size, 3))
        }

    # data ---------------------------------------------------------------------------

    def _sample(self, size: int, seed: int) -> SparseBatch:
        gen = torch.Generator().manual_seed(seed)
        return self._draw(size, gen)

    def _draw(self, size: int, gen: torch.Generator) -> SparseBatch:
        A = self.A.detach().cpu().double()
        support = torch.rand(size, self.n, generator=gen, dtype=torch.float64) < self.sparsity
        x = support * torch.randn(size, self.n, generator=gen, dtype=torch.float64)
        y = x @ A.T + self.noise * torch.randn(size, self.m, generator=gen, dtype=torch.float64)
        return SparseBatch(y=y.to(self.A.dtype), x=x.to(self.A.dtype))

    def batches(self, split: str) -> Iterator[SparseBatch]:
        if split == "train":
            gen = torch.Generator().manual_seed(self.seed * 1000 + 1)
            while True:
                b = self._draw(self.batch_size, gen)
                yield SparseBatch(b.y.to(self.device), b.x.to(self.device))
        elif split in self._fixed:
            b = self._fixed[split]
            yield SparseBatch(b.y.to(self.device), b.x.to(self.device))
        else:
            raise ValueError(f"sparse_coding: split must be train, val or test, got split={split!r}")

    def observation_batch(self, y: Tensor) -> SparseBatch:
        """Measurements ``y`` (B, m) of codes under this problem's A (``self.A``), with no true codes."""
        if y.ndim != 2 or y.shape[1] != self.m:
            raise ValueError(f"sparse_coding: y must have shape (B, m) = (B, {self.m}), got {tuple(y.shape)}")
        return SparseBatch(y, None)

    def degradation(self) -> str:
        return (f"y = Ax + noise with this task's A ({self.m}x{self.n} Gaussian, unit-norm columns, seed {self.seed}), "
                f"x sparse (density {self.sparsity:g}), noise {self.noise:g}")

    # the fixed-point problem ----------------------------------------------------------

    def init(self, batch: SparseBatch) -> Tensor:
        shape = (batch.y.shape[0], 2, self.n) if self.operator_name == "fista" else (batch.y.shape[0], self.n)
        return torch.zeros(shape, dtype=batch.y.dtype, device=batch.y.device)

    def estimate(self, u: Tensor, batch: SparseBatch) -> Tensor:
        return u[:, 0] if self.operator_name == "fista" else u

    def operator(self, u: Tensor, batch: SparseBatch, k: int) -> Tensor:
        name, A, y = self.operator_name, self.A, batch.y
        if name == "ista":
            return soft_threshold(u - self.step * (u @ A.T - y) @ A, self.theta)
        if name == "fista":
            x, x_prev = u[:, 0], u[:, 1]
            z = x + _fista_momentum(k) * (x - x_prev)
            return torch.stack((soft_threshold(z - self.step * (z @ A.T - y) @ A, self.theta), x), dim=1)
        i = min(k, self.layers) - 1 if "untied" in name else 0
        if name.endswith("coupled"):
            return soft_threshold(u - (u @ A.T - y) @ self.W[i], self.theta[i])
        return soft_threshold(y @ self.W1[i].T + u @ self.S[i].T, self.theta[i])

    def upper_loss(self, u: Tensor, batch: SparseBatch) -> Tensor:
        return 0.5 * ((self.estimate(u, batch) - batch.x) ** 2).sum(-1).mean()

    def upper_grad(self, u: Tensor, batch: SparseBatch) -> Tensor:
        if self.operator_name == "fista":
            return torch.stack((u[:, 0] - batch.x, torch.zeros_like(batch.x)), dim=1)
        return u - batch.x

    def metrics(self, u: Tensor, batch: SparseBatch) -> dict[str, float]:
        err = ((self.estimate(u, batch).detach() - batch.x) ** 2).sum()
        return {"nmse_db": float(10 * torch.log10(err / (batch.x**2).sum()))}

    def learned_values(self) -> dict[str, float]:
        """The refined λ: the learned threshold θ (initialised to λ/L) times L, averaged over layers."""
        if self.operator_name in ("ista", "fista"):
            return {}
        return {"lam": float(self.theta.detach().mean()) * self.L}

    def lasso_objective(self, u: Tensor, batch: SparseBatch) -> Tensor:
        """Per-sample LASSO objective ½‖Ax - y‖² + λ‖x‖₁ of the estimate in ``u``."""
        x = self.estimate(u, batch)
        return 0.5 * ((x @ self.A.T - batch.y) ** 2).sum(-1) + self.lam * x.abs().sum(-1)

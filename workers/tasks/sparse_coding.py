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

Untied operators reuse their last layer beyond ``layers`` ("untrained layers"). Each operator is a
small ``IstaOperator`` class, looked up once in ``ISTA_OPERATORS`` by ``operator``.

The arguments, their defaults and their checks: ``SparseCodingArgs`` (``SparseCoding.Args``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from workers.checks import CheckError, check_choice, check_int, check_positive_ints, check_real
from workers.problem import Problem
from workers.prox import soft_threshold

PRESETS = {"small": (64, 128), "paper": (250, 500)}
DTYPES = {"float32": torch.float32, "float64": torch.float64}
MAX_SEED = 2**53  # seed·1000 + 3 stays a torch seed (< 2**64)


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


# operators ---------------------------------------------------------------------------


class IstaOperator:
    """What an ISTA-type operator (``operator``) decides: the weights ω it learns, the iterate's form
    (code or stacked codes), T(u, ω) itself, and ℓ's gradient.

    This base is the code-iterate form: u is the code estimate and ∂_u ℓ = u - x. An operator holds
    no state: ``register`` puts its weights on the problem itself, so the ``state_dict`` keys stay
    ``A`` plus ``theta`` and ``W`` (coupled) or ``W1`` and ``S`` (LISTA).
    """

    #: One set of weights per layer k = 1..``layers`` (the last one reused beyond), else one for all.
    untied = False

    def register(self, problem: SparseCoding, A: Tensor, dt: torch.dtype) -> None:
        """Register ω on ``problem``, initialised from A (float64, unit-norm columns)."""
        raise NotImplementedError

    def apply(self, problem: SparseCoding, u: Tensor, y: Tensor, k: int) -> Tensor:
        """T(u, ω) at inner step ``k`` (1-based) for measurements ``y``."""
        raise NotImplementedError

    def layer(self, problem: SparseCoding, k: int) -> int:
        """The index of the weights used at inner step ``k``."""
        return min(k, problem.layers) - 1 if self.untied else 0

    def init(self, problem: SparseCoding, batch: SparseBatch) -> Tensor:
        return torch.zeros((batch.y.shape[0], problem.n), dtype=batch.y.dtype, device=batch.y.device)

    def estimate(self, u: Tensor) -> Tensor:
        return u

    def upper_grad(self, u: Tensor, x: Tensor) -> Tensor:
        return u - x

    def nonexpansive(self, problem: SparseCoding) -> bool:
        """T is nonexpansive by construction (the learned forms are not)."""
        return False

    def learned_values(self, problem: SparseCoding) -> dict[str, float]:
        """The refined λ: the learned threshold θ (initialised to λ/L) times L, averaged over layers."""
        return {"lam": float(problem.theta.detach().mean()) * problem.L}


class Ista(IstaOperator):
    """``ista``: soft(u - step·Aᵀ(Au - y), lam·step); nothing learned (θ is a buffer)."""

    def register(self, problem: SparseCoding, A: Tensor, dt: torch.dtype) -> None:
        problem.register_buffer("theta", torch.tensor(problem.lam * problem.step, dtype=dt))

    def apply(self, problem: SparseCoding, u: Tensor, y: Tensor, k: int) -> Tensor:
        A = problem.A
        return soft_threshold(u - problem.step * (u @ A.T - y) @ A, problem.theta)

    def nonexpansive(self, problem: SparseCoding) -> bool:
        return problem.step <= 2.0 / problem.L  # averaged, hence nonexpansive

    def learned_values(self, problem: SparseCoding) -> dict[str, float]:
        return {}


class Fista(Ista):
    """``fista``: the ISTA step at the Nesterov point; the iterate stacks (x_k, x_{k-1}) as (B, 2, n)."""

    def init(self, problem: SparseCoding, batch: SparseBatch) -> Tensor:
        return torch.zeros((batch.y.shape[0], 2, problem.n), dtype=batch.y.dtype, device=batch.y.device)

    def estimate(self, u: Tensor) -> Tensor:
        return u[:, 0]

    def apply(self, problem: SparseCoding, u: Tensor, y: Tensor, k: int) -> Tensor:
        x, x_prev = u[:, 0], u[:, 1]
        z = x + _fista_momentum(k) * (x - x_prev)
        return torch.stack((super().apply(problem, z, y, k), x), dim=1)

    def upper_grad(self, u: Tensor, x: Tensor) -> Tensor:
        return torch.stack((u[:, 0] - x, torch.zeros_like(x)), dim=1)

    def nonexpansive(self, problem: SparseCoding) -> bool:
        return False


class TiedCoupled(IstaOperator):
    """``tied_coupled``: soft(u - Wᵀ(Au - y), θ), W initialised to A/L, θ to lam/L."""

    def register(self, problem: SparseCoding, A: Tensor, dt: torch.dtype) -> None:
        n_layers = problem.layers if self.untied else 1
        problem.W = nn.Parameter((A / problem.L).to(dt).repeat(n_layers, 1, 1))
        problem.theta = nn.Parameter(torch.full((n_layers,), problem.lam / problem.L, dtype=dt))

    def apply(self, problem: SparseCoding, u: Tensor, y: Tensor, k: int) -> Tensor:
        i = self.layer(problem, k)
        return soft_threshold(u - (u @ problem.A.T - y) @ problem.W[i], problem.theta[i])


class UntiedCoupled(TiedCoupled):
    """``untied_coupled``: W_k, θ_k per layer."""

    untied = True


class TiedLista(IstaOperator):
    """``lista_tied``: free-form LISTA soft(W₁y + S u, θ), W₁ = Aᵀ/L, S = I - AᵀA/L, θ = lam/L."""

    def register(self, problem: SparseCoding, A: Tensor, dt: torch.dtype) -> None:
        n_layers = problem.layers if self.untied else 1
        L = problem.L
        problem.W1 = nn.Parameter((A.T / L).to(dt).repeat(n_layers, 1, 1))
        problem.S = nn.Parameter((torch.eye(problem.n, dtype=torch.float64) - A.T @ A / L).to(dt).repeat(n_layers, 1, 1))
        problem.theta = nn.Parameter(torch.full((n_layers,), problem.lam / L, dtype=dt))

    def apply(self, problem: SparseCoding, u: Tensor, y: Tensor, k: int) -> Tensor:
        i = self.layer(problem, k)
        return soft_threshold(y @ problem.W1[i].T + u @ problem.S[i].T, problem.theta[i])


class UntiedLista(TiedLista):
    """``lista_untied``: W₁_k, S_k, θ_k per layer."""

    untied = True


ISTA_OPERATORS: dict[str, type[IstaOperator]] = {
    "ista": Ista,
    "fista": Fista,
    "tied_coupled": TiedCoupled,
    "untied_coupled": UntiedCoupled,
    "lista_tied": TiedLista,
    "lista_untied": UntiedLista,
}
OPERATORS = tuple(ISTA_OPERATORS)


@dataclass(frozen=True)
class SparseCodingArgs:
    """The arguments of ``SparseCoding`` (its ``Args``), checked when made: a ``CheckError`` names the argument."""

    m: int | None = None  # measurements (None: the preset's)
    n: int | None = None  # code length (None: the preset's)
    preset: str = "small"  # (m, n): "small" (64, 128) or "paper" (250, 500)
    operator: str = "tied_coupled"  # one of OPERATORS
    layers: int = 16  # the untied operators' layers (the last one reused beyond)
    lam: float = 0.1  # λ of the LASSO, ≥ 0
    step: float | None = None  # ISTA's step (None: 1/L)
    sparsity: float = 0.1  # the codes' density, in (0, 1]
    noise: float = 0.01  # the measurements' noise level, ≥ 0
    batch_size: int = 100
    val_size: int = 1000
    test_size: int = 1000
    seed: int = 0
    dtype: str = "float32"  # "float32" | "float64"

    def __post_init__(self):
        check_choice("preset", self.preset, PRESETS)
        for name in ("m", "n"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), minimum=1)
        check_positive_ints(layers=self.layers, batch_size=self.batch_size, val_size=self.val_size, test_size=self.test_size)
        check_choice("operator", self.operator, OPERATORS)
        check_real("sparsity", self.sparsity, 0, 1, low_open=True)
        check_real("noise", self.noise, 0)
        check_real("lam", self.lam, 0)
        if self.step is not None:
            check_real("step", self.step, 0, low_open=True)
        check_choice("dtype", self.dtype, DTYPES)
        check_int("seed", self.seed, 0, MAX_SEED)


class SparseCoding(Problem):
    """LASSO min ½‖Ax - y‖² + λ‖x‖₁ solved by a (learned) ISTA-type fixed-point operator."""

    Args = SparseCodingArgs

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
        self.args = SparseCodingArgs(m=m, n=n, preset=preset, operator=operator, layers=layers, lam=lam, step=step,
                                     sparsity=sparsity, noise=noise, batch_size=batch_size, val_size=val_size,
                                     test_size=test_size, seed=seed, dtype=dtype)
        m = PRESETS[preset][0] if m is None else m
        n = PRESETS[preset][1] if n is None else n
        self.m, self.n, self.operator_name, self.layers = m, n, operator, layers
        self.op = ISTA_OPERATORS[operator]()  # what differs between the operators, chosen once
        self.sparsity, self.noise, self.seed = sparsity, noise, seed
        self.batch_size, self.val_size, self.test_size = batch_size, val_size, test_size

        gen = torch.Generator().manual_seed(seed)
        A = torch.randn(m, n, generator=gen, dtype=torch.float64)
        A = A / torch.linalg.vector_norm(A, dim=0, keepdim=True)
        L = float(torch.linalg.matrix_norm(A, ord=2) ** 2)
        step = 1.0 / L if step is None else step
        dt = DTYPES[dtype]
        self.register_buffer("A", A.to(dt))
        self.L, self.lam, self.step = L, lam, step
        self.nonexpansive = self.op.nonexpansive(self)  # ISTA for step <= 2/L only
        self.op.register(self, A, dt)
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
            raise CheckError("split", "one of train, val, test", split)

    def observation_batch(self, y: Tensor) -> SparseBatch:
        """Measurements ``y`` (B, m) of codes under this problem's A (``self.A``), with no true codes."""
        if y.ndim != 2 or y.shape[1] != self.m:
            raise CheckError("y", f"shape (B, m) = (B, {self.m})", tuple(y.shape))
        return SparseBatch(y, None)

    def degradation(self) -> str:
        return (f"y = Ax + noise with this task's A ({self.m}x{self.n} Gaussian, unit-norm columns, seed {self.seed}), "
                f"x sparse (density {self.sparsity:g}), noise {self.noise:g}")

    # the fixed-point problem ----------------------------------------------------------

    def init(self, batch: SparseBatch) -> Tensor:
        return self.op.init(self, batch)

    def estimate(self, u: Tensor, batch: SparseBatch) -> Tensor:
        return self.op.estimate(u)

    def operator(self, u: Tensor, batch: SparseBatch, k: int) -> Tensor:
        return self.op.apply(self, u, batch.y, k)

    def upper_loss(self, u: Tensor, batch: SparseBatch) -> Tensor:
        return 0.5 * ((self.estimate(u, batch) - batch.x) ** 2).sum(-1).mean()

    def upper_grad(self, u: Tensor, batch: SparseBatch) -> Tensor:
        return self.op.upper_grad(u, batch.x)

    def metrics(self, u: Tensor, batch: SparseBatch) -> dict[str, float]:
        err = ((self.estimate(u, batch).detach() - batch.x) ** 2).sum()
        return {"nmse_db": float(10 * torch.log10(err / (batch.x**2).sum()))}

    def learned_values(self) -> dict[str, float]:
        """The refined λ: the learned threshold θ (initialised to λ/L) times L, averaged over layers
        (nothing for ista and fista, which learn nothing)."""
        return self.op.learned_values(self)

"""Bilevel Meta Optimization (BMO, Algorithm 1 of Liu et al., ICML 2022).

The inner solve (lines 5-7)::

    v_l = T(u^{k-1}, ω)
    v_u = u^{k-1} - s_k H⁻¹ ∂_u ℓ(u^{k-1}; ω),    s_k = s0 / (k+1)^p
    u^k = Proj(μ v_u + (1-μ) v_l)

and the outer step (line 9) ω ← ω - γ ∂_ω ℓ(u^K(ω); ω), with the hypergradient
computed by ``config.hypergrad``:

- ``unroll``: backpropagate through all K steps (memory O(K));
- ``truncated``: through the last ``truncate`` steps;
- ``jfb``: Jacobian-free backprop, through the last step only (memory O(1));
- ``implicit``: implicit differentiation at the fixed point of T, the adjoint
  equation v = ∂_uℓ + (∂_uT)ᵀv solved matrix-free by BiCGSTAB.

``restarts = R`` ("Restarted contractive operators to learn at equilibrium"):
R blocks of K steps without gradient, each restarting the step-size schedule
from the last iterate, then the K-step block that the mode differentiates.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

from workers.checks import check_at_most, check_bool, check_choice, check_int, check_real
from workers.problem import Problem

HYPERGRAD_MODES = ("unroll", "truncated", "implicit", "jfb")
OPTIMIZERS = ("sgd", "adam")
DEVICES = ("auto", "cpu", "cuda")


class BMOError(RuntimeError):
    """Root of the solver's own run-time errors (bad arguments are ``ValueError``)."""


class DivergenceError(BMOError):
    """The iterate u or the variables ω became NaN or infinite."""

    def __init__(self, outer_step: int, inner_step: int | None, where: str):
        self.outer_step, self.inner_step, self.where = outer_step, inner_step, where
        at = f"outer step {outer_step}" + (f", inner step {inner_step}" if inner_step is not None else "")
        super().__init__(f"diverged: {where} is not finite at {at}")


@dataclass(frozen=True)
class BMOConfig:
    """Every knob of BMO; each field is a key a search space may tune."""

    mu: float = 0.1  # weight of the upper-level descent step in the inner solve
    K: int = 16  # inner steps
    s0: float = 1.0  # inner step size s_k = s0 / (k+1)^s_power
    s_power: float = 0.5
    gamma: float = 1e-3  # outer learning rate
    outer_steps: int = 1000
    optimizer: str = "adam"  # "sgd" | "adam"
    hypergrad: str = "unroll"  # "unroll" | "truncated" | "implicit" | "jfb"
    truncate: int = 1  # taped steps for hypergrad="truncated"
    restarts: int = 0  # untaped K-step blocks before the differentiated block
    warm_start: bool = False  # start each inner solve from the previous outer step's u^K
    eval_mu: float = 0.0  # μ of the evaluation step
    eval_K: int | None = None  # inner steps at evaluation (None: K)
    eval_every: int = 1  # outer steps between validations
    implicit_tol: float = 1e-6  # relative tolerance of the adjoint solve
    implicit_maxiter: int = 100  # BiCGSTAB iterations (two vector-Jacobian products each)
    grad_clip: float | None = None  # max global norm of the hypergradient (None: off)
    average: float = 0.0  # decay of a moving average of ω, validated as val_avg_* (0: no average)
    device: str = "auto"  # "auto" (CUDA when available) | "cpu" | "cuda"
    seed: int = 0

    def __post_init__(self):
        check_real("mu", self.mu, 0, 1)
        check_int("K", self.K, minimum=1)
        check_real("s0", self.s0, 0, low_open=True)
        check_real("s_power", self.s_power, 0, 1, low_open=True)
        check_real("gamma", self.gamma, 0, low_open=True)
        check_int("outer_steps", self.outer_steps, minimum=0)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("hypergrad", self.hypergrad, HYPERGRAD_MODES)
        check_int("truncate", self.truncate, minimum=1)
        if self.hypergrad == "truncated":
            check_at_most("truncate", self.truncate, "K", self.K)
        check_int("restarts", self.restarts, minimum=0)
        check_bool("warm_start", self.warm_start)
        check_real("eval_mu", self.eval_mu, 0, 1, high_open=True)
        if self.eval_K is not None:
            check_int("eval_K", self.eval_K, minimum=1)
        check_int("eval_every", self.eval_every, minimum=1)
        check_real("implicit_tol", self.implicit_tol, 0, 1, low_open=True, high_open=True)
        check_int("implicit_maxiter", self.implicit_maxiter, minimum=1)
        if self.grad_clip is not None:
            check_real("grad_clip", self.grad_clip, 0, low_open=True)
        check_real("average", self.average, 0, 1, high_open=True)
        check_choice("device", self.device, DEVICES)
        check_int("seed", self.seed, minimum=0)

    @classmethod
    def from_dict(cls, values: dict) -> BMOConfig:
        """Build a config from a mapping, rejecting unknown keys by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"BMOConfig has no field {unknown[0]!r} (fields: {', '.join(sorted(known))})")
        return cls(**values)

    @property
    def eval_steps(self) -> int:
        """Inner steps used at evaluation."""
        return self.K if self.eval_K is None else self.eval_K


class Hypergradient(NamedTuple):
    """ℓ(u^K(ω); ω), u^K (detached), ∂ℓ/∂ω per trainable parameter (None where ℓ ignores it),
    and for ``implicit`` the relative residual of the adjoint solve (else None)."""

    loss: Tensor
    u: Tensor
    grads: list[Tensor | None]
    adjoint_residual: float | None = None


class InnerSolution(NamedTuple):
    """u^K and, when asked, the relative fixed-point residual ‖u^k - T(u^k)‖/‖u^k‖ per k."""

    u: Tensor
    residuals: list[float] | None


@dataclass
class TrainState:
    """Everything ``train`` needs to continue after outer step ``step`` exactly as if it had not stopped.

    ω and the optimizer's state, the global torch RNG states, the warm start, the last validation
    and the training seconds so far. The data stream's position is ``step``: the train batches
    are a seeded stream, so a resumed run skips the ``step`` batches already used.
    """

    step: int
    problem: dict
    optimizer: dict | None
    rng: dict
    u_prev: Tensor | None = None
    val: dict[str, float] = field(default_factory=dict)
    val_step: int = 0
    seconds: float = 0.0
    average: list[Tensor] | None = None  # the moving average of ω (config.average > 0)

    def to_dict(self) -> dict:
        """Plain data for ``torch.save`` (loadable with ``weights_only=True``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainState:
        return cls(**data)


def _rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _cpu(value):
    """``value`` (a state dict, possibly nested) with its tensors copied to the CPU."""
    if isinstance(value, Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu(v) for v in value)
    return value


@dataclass
class TrainResult:
    """What ``train`` returns: the per-step trace and the last validation metrics."""

    trace: list[dict[str, float]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    device: str = "cpu"
    average: list[Tensor] | None = None  # the moving average of the trainable parameters (config.average > 0)


def step_size(config: BMOConfig, k: int) -> float:
    """The inner step size s_k = s0 / (k+1)^p."""
    return config.s0 / (k + 1) ** config.s_power


def resolve_device(name: str) -> torch.device:
    """Map ``config.device`` to a torch device; "cuda" without CUDA is an error, never a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("BMOConfig.device is 'cuda' but torch sees no CUDA device")
    return torch.device(name)


def bmo_step(problem: Problem, u: Tensor, batch, k: int, mu: float, s_k: float) -> Tensor:
    """One inner BMO step (Algorithm 1, lines 5-7)."""
    v_l = problem.operator(u, batch, k)
    if mu == 0.0:
        return problem.project(v_l, batch)
    v_u = u - s_k * problem.metric_inv(problem.upper_grad(u, batch), batch)
    return problem.project(mu * v_u + (1.0 - mu) * v_l, batch)


def km_step(problem: Problem, u: Tensor, batch, k: int, mu: float) -> Tensor:
    """One Krasnoselskii-Mann step u ← Proj(μ u + (1-μ) T(u)), used at evaluation."""
    v = problem.operator(u, batch, k)
    return problem.project(v if mu == 0.0 else mu * u + (1.0 - mu) * v, batch)


def fp_residual(problem: Problem, u: Tensor, batch, k: int) -> float:
    """Relative fixed-point residual ‖u - T(u)‖ / ‖u‖."""
    with torch.no_grad():
        r = torch.linalg.vector_norm(u - problem.operator(u, batch, k))
        return float(r / torch.linalg.vector_norm(u).clamp_min(torch.finfo(u.dtype).tiny))


class _Watch:
    """Remembers the first inner step whose iterate is not finite, without a device sync per step."""

    def __init__(self, u: Tensor):
        self.first_bad = torch.zeros((), dtype=torch.long, device=u.device)

    def see(self, u: Tensor, step: int) -> None:
        bad = ~torch.isfinite(u.detach()).all()
        self.first_bad = torch.where(bad & (self.first_bad == 0), step, self.first_bad)

    def check(self, outer_step: int) -> None:
        step = int(self.first_bad)
        if step:
            raise DivergenceError(outer_step, step, "u")


def _run_block(problem, batch, u, config, ks: range, *, mu: float, full: bool, watch: _Watch, offset: int = 0,
               after_step=None):
    """Inner steps k in ``ks`` (BMO steps when ``full``, else KM steps), watched for non-finite
    iterates; ``after_step(u, k)`` runs after each (per-layer traces)."""
    for k in ks:
        u = bmo_step(problem, u, batch, k, mu, step_size(config, k)) if full else km_step(problem, u, batch, k, mu)
        watch.see(u, offset + k)
        if after_step is not None:
            after_step(u, k)
    return u


def inner_solve(
    problem: Problem,
    batch,
    config: BMOConfig,
    *,
    u0: Tensor | None = None,
    K: int | None = None,
    mu: float | None = None,
    trace: bool = False,
    outer_step: int = 0,
) -> InnerSolution:
    """Run K inner BMO steps from u⁰ (Algorithm 1, lines 4-7) and return u^K.

    Differentiable when called with gradients enabled. ``K`` and ``mu`` default to
    the config's. Raises ``DivergenceError`` naming the first non-finite step.
    """
    K = config.K if K is None else K
    mu = config.mu if mu is None else mu
    u = problem.init(batch) if u0 is None else u0
    watch, residuals = _Watch(u), ([] if trace else None)
    record = (lambda v, k: residuals.append(fp_residual(problem, v, batch, k + 1))) if trace else None
    u = _run_block(problem, batch, u, config, range(1, K + 1), mu=mu, full=True, watch=watch, after_step=record)
    watch.check(outer_step)
    return InnerSolution(u, residuals)


def evaluate_solve(problem: Problem, batch, config: BMOConfig, *, K: int | None = None, trace: bool = False):
    """The evaluation solve: T alone (KM step with eval_mu) when ℓ needs ground truth, else the BMO step.

    Returns ``(u, per_layer)``, where ``per_layer`` (when ``trace``) lists for each
    k = 1..K the problem's metrics plus ``fp_residual``.
    """
    K = config.eval_steps if K is None else K
    full = not problem.upper_loss_needs_truth
    per_layer = [] if trace else None
    was_training = problem.training
    problem.eval()  # e.g. spectral normalisation stops updating its power iteration
    try:
        return _evaluate_solve(problem, batch, config, K, full, per_layer)
    finally:
        problem.train(was_training)


def _evaluate_solve(problem, batch, config, K, full, per_layer):
    def record(v, k):
        per_layer.append({**problem.metrics(v, batch), "fp_residual": fp_residual(problem, v, batch, k + 1)})

    with torch.no_grad():
        u = problem.init(batch)
        watch = _Watch(u)
        u = _run_block(problem, batch, u, config, range(1, K + 1), mu=config.eval_mu, full=full, watch=watch,
                       after_step=record if per_layer is not None else None)
        watch.check(0)
    return u, per_layer


def evaluate(problem: Problem, config: BMOConfig, split: str = "val", *, K: int | None = None) -> dict[str, float]:
    """Mean metrics (and fixed-point residual) of the evaluation solve over the batches of ``split``."""
    K = config.eval_steps if K is None else K
    sums: dict[str, float] = {}
    n = 0
    was_training = problem.training
    problem.eval()  # the residual's T too: evaluating must not change ω's buffers (a spectral norm's power iteration)
    try:
        for batch in problem.batches(split):
            u, _ = evaluate_solve(problem, batch, config, K=K)
            values = {**problem.metrics(u, batch), "fp_residual": fp_residual(problem, u, batch, K + 1)}
            for name, v in values.items():
                sums[name] = sums.get(name, 0.0) + float(v)
            n += 1
    finally:
        problem.train(was_training)
    if n == 0:
        raise ValueError(f"problem {type(problem).__name__} yields no batches for split {split!r}")
    return {name: v / n for name, v in sums.items()}


def layer_metrics(problem: Problem, config: BMOConfig, split: str = "test", *, K: int | None = None) -> list[dict]:
    """Metrics after each evaluation layer k = 1..K, averaged over the batches of ``split``."""
    K = config.eval_steps if K is None else K
    total: list[dict[str, float]] | None = None
    n = 0
    for batch in problem.batches(split):
        _, per_layer = evaluate_solve(problem, batch, config, K=K, trace=True)
        if total is None:
            total = [dict.fromkeys(layer, 0.0) for layer in per_layer]
        for acc, layer in zip(total, per_layer):
            for name, v in layer.items():
                acc[name] += float(v)
        n += 1
    return [{"k": k, **{name: v / n for name, v in acc.items()}} for k, acc in enumerate(total or [], start=1)]


@contextmanager
def using_weights(problem: Problem, weights: list[Tensor]):
    """Within the block, the problem's trainable parameters hold ``weights`` (e.g. their moving average);
    everything (parameters and buffers, such as a spectral norm's power iteration) is restored after."""
    saved = {k: v.detach().clone() for k, v in problem.state_dict().items()}
    with torch.no_grad():
        for p, w in zip(_trainable(problem), weights):
            p.copy_(w)
    for module in problem.modules():  # spectral norms: power iterations for these weights
        if hasattr(module, "calibrate"):
            module.calibrate(50)
    try:
        yield problem
    finally:
        problem.load_state_dict(saved)


def _trainable(problem: Problem) -> list[torch.nn.Parameter]:
    return [p for p in problem.parameters() if p.requires_grad]


def _bicgstab(apply, b: Tensor, tol: float, maxiter: int) -> tuple[Tensor, float, int]:
    """Solve apply(x) = b by BiCGSTAB (matrix-free); return (x, relative residual, iterations)."""
    dot = lambda a, c: torch.sum(a * c)  # noqa: E731
    b_norm = torch.linalg.vector_norm(b).clamp_min(torch.finfo(b.dtype).tiny)
    x = b.clone()  # one Neumann term: exact when the Jacobian vanishes
    r = b - apply(x)
    r_hat = r.clone()
    rho_old = alpha = omega = torch.ones((), dtype=b.dtype, device=b.device)
    v = p = torch.zeros_like(b)
    rel = float(torch.linalg.vector_norm(r) / b_norm)
    it = 0
    while rel > tol and it < maxiter:
        it += 1
        rho = dot(r_hat, r)
        if float(rho.abs()) == 0.0:  # breakdown: r is orthogonal to the shadow residual
            break
        p = r + (rho / rho_old) * (alpha / omega) * (p - omega * v)
        v = apply(p)
        alpha = rho / dot(r_hat, v)
        s = r - alpha * v
        if float(torch.linalg.vector_norm(s) / b_norm) <= tol:
            x = x + alpha * p
            r = s
        else:
            t = apply(s)
            tt = dot(t, t)
            omega = dot(t, s) / tt if float(tt) > 0 else torch.zeros_like(tt)
            x = x + alpha * p + omega * s
            r = s - omega * t
            if float(omega.abs()) == 0.0:
                rel = float(torch.linalg.vector_norm(r) / b_norm)
                break
        rho_old = rho
        rel = float(torch.linalg.vector_norm(r) / b_norm)
    return x, rel, it


def _implicit_grads(problem, batch, config, u_star: Tensor, params, k: int):
    """Implicit hypergradient at u* = T(u*): solve (I - (∂_uT)ᵀ) v = ∂_uℓ, then ∂_ωℓ + (∂_ωT)ᵀ v.

    The adjoint system is solved matrix-free by BiCGSTAB on vector-Jacobian
    products. Returns ``(loss, grads, relative residual of the adjoint solve)``.
    """
    u_star = u_star.detach().requires_grad_(True)
    loss = problem.upper_loss(u_star, batch)
    g_u, *g_direct = torch.autograd.grad(loss, [u_star, *params], allow_unused=True)
    f = problem.project(problem.operator(u_star, batch, k), batch)
    if not f.requires_grad:  # T depends neither on u nor on ω: the adjoint is ∂_uℓ itself
        return loss.detach(), list(g_direct), 0.0

    def apply(w: Tensor) -> Tensor:
        (jtw,) = torch.autograd.grad(f, u_star, w, retain_graph=True, allow_unused=True)
        return w if jtw is None else w - jtw

    v, residual, _ = _bicgstab(apply, g_u, config.implicit_tol, config.implicit_maxiter)
    g_through = torch.autograd.grad(f, params, v, allow_unused=True) if params else ()
    grads = [
        None if a is None and b is None else (a if b is None else b if a is None else a + b)
        for a, b in zip(g_direct, g_through)
    ]
    return loss.detach(), grads, residual


def hypergradient(
    problem: Problem, batch, config: BMOConfig, *, u0: Tensor | None = None, outer_step: int = 0
) -> Hypergradient:
    """The loss ℓ(u^K(ω); ω) and its gradient w.r.t. the trainable parameters, by ``config.hypergrad``.

    ``grads`` aligns with the problem's trainable parameters.
    """
    params = _trainable(problem)
    K, R = config.K, config.restarts
    u = problem.init(batch) if u0 is None else u0
    u = u.detach()
    watch = _Watch(u)
    taped = {"unroll": K, "truncated": config.truncate, "jfb": 1, "implicit": 0}[config.hypergrad]
    with torch.no_grad():
        for r in range(R):  # restart blocks: K steps each, schedule restarted
            u = _run_block(problem, batch, u, config, range(1, K + 1), mu=config.mu, full=True, watch=watch, offset=r * K)
        u = _run_block(problem, batch, u, config, range(1, K - taped + 1), mu=config.mu, full=True, watch=watch, offset=R * K)
    if config.hypergrad == "implicit":
        watch.check(outer_step)
        loss, grads, residual = _implicit_grads(problem, batch, config, u, params, K)
        return Hypergradient(loss, u, grads, residual)
    u = _run_block(problem, batch, u, config, range(K - taped + 1, K + 1), mu=config.mu, full=True, watch=watch, offset=R * K)
    watch.check(outer_step)
    loss = problem.upper_loss(u, batch)
    grads = list(torch.autograd.grad(loss, params, allow_unused=True)) if params and loss.requires_grad else [None] * len(params)
    return Hypergradient(loss.detach(), u.detach(), grads)


def _make_optimizer(config: BMOConfig, problem: Problem):
    """Adam or SGD over the trainable parameters, at γ times the problem's ``lr_scale`` of each."""
    groups: dict[float, list[torch.nn.Parameter]] = {}
    for name, p in problem.named_parameters():
        if p.requires_grad:
            scale = check_real(f"{type(problem).__name__}.lr_scale({name!r})", problem.lr_scale(name), 0, low_open=True)
            groups.setdefault(float(scale), []).append(p)
    param_groups = [{"params": ps, "lr": config.gamma * scale} for scale, ps in groups.items()]
    if config.optimizer == "adam":
        return torch.optim.Adam(param_groups, lr=config.gamma)
    return torch.optim.SGD(param_groups, lr=config.gamma)


def _step_omega(optimizer, params: list[Tensor], grads, config: BMOConfig, average: list[Tensor] | None, step: int) -> None:
    """One optimizer step on ω with the hypergradient ``grads`` (clipped), then the moving average of ω."""
    for p, g in zip(params, grads):
        p.grad = g
    if config.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
    optimizer.step()
    if not all(bool(torch.isfinite(p).all()) for p in params):
        raise DivergenceError(step, None, "omega")
    if average is not None:
        with torch.no_grad():
            for a, p in zip(average, params):
                a.lerp_(p.detach(), 1.0 - config.average)


def _validate(problem: Problem, config: BMOConfig, average: list[Tensor] | None) -> dict[str, float]:
    """Validation metrics ``val_*`` of ω, and ``val_avg_*`` of its moving average when one is kept."""
    val = {f"val_{name}": v for name, v in evaluate(problem, config, "val").items()}
    if average is not None:
        with using_weights(problem, average):
            val.update({f"val_avg_{name}": v for name, v in evaluate(problem, config, "val").items()})
    return val


def train(
    problem: Problem,
    config: BMOConfig,
    report: Callable[[int, dict[str, float]], None] | None = None,
    *,
    start: TrainState | None = None,
    checkpoint: Callable[[TrainState], None] | None = None,
    checkpoint_every: int = 0,
) -> TrainResult:
    """Outer loop of BMO (Algorithm 1, line 9): ``outer_steps`` hypergradient steps on ω.

    Calls ``report(step, metrics)`` after every outer step with ``upper_loss``,
    ``fp_residual`` (of the training batch's u^K), ``seconds`` and the last
    validation metrics prefixed ``val_`` (validated at the first step, every
    ``eval_every`` steps and at the last step; ``val_step`` says when). Raises
    ``DivergenceError`` when u or ω stops being finite.

    With ``config.average`` > 0 it keeps a moving average of ω (``result.average``) and validates it
    too, as ``val_avg_*``. ``checkpoint(state)`` is called after every ``checkpoint_every``-th step and the last one
    (``checkpoint_every=0``: never), before ``report`` of that step; ``start`` continues from
    such a state, on the same trajectory as the run that saved it.
    """
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    problem.to(device)
    params = _trainable(problem)
    optimizer = _make_optimizer(config, problem) if params else None
    result = TrainResult(device=str(device))
    train_batches = iter(problem.batches("train"))
    u_prev: Tensor | None = None
    val: dict[str, float] = {}
    val_step = done = 0
    earlier = 0.0  # training seconds before ``start``
    average = [p.detach().clone() for p in params] if config.average and params else None
    if start is not None:
        problem.load_state_dict(start.problem)
        if optimizer is not None and start.optimizer is not None:
            optimizer.load_state_dict(start.optimizer)
        _set_rng_state(start.rng)
        u_prev = None if start.u_prev is None else start.u_prev.to(device)
        val, val_step, done, earlier = dict(start.val), start.val_step, start.step, start.seconds
        average = None if start.average is None else [a.to(device) for a in start.average]
        for _ in range(done):  # the data stream's position: skip the batches already used
            next(train_batches)
    clock = time.perf_counter()
    for step in range(done + 1, config.outer_steps + 1):
        batch = next(train_batches)
        u0 = problem.init(batch)
        if config.warm_start and u_prev is not None and u_prev.shape == u0.shape:
            u0 = u_prev
        loss, u_K, grads, adjoint_residual = hypergradient(problem, batch, config, u0=u0, outer_step=step)
        if optimizer is not None:
            _step_omega(optimizer, params, grads, config, average, step)
        u_prev = u_K
        metrics = {"upper_loss": float(loss), "fp_residual": fp_residual(problem, u_K, batch, config.K + 1)}
        if adjoint_residual is not None:
            metrics["adjoint_residual"] = adjoint_residual  # > implicit_tol: the adjoint solve hit implicit_maxiter
        if not math.isfinite(metrics["upper_loss"]):
            raise DivergenceError(step, None, "upper_loss")
        if step == 1 or step % config.eval_every == 0 or step == config.outer_steps:
            val, val_step = _validate(problem, config, average), step
        metrics.update(val)
        metrics["val_step"] = val_step
        metrics["seconds"] = earlier + time.perf_counter() - clock
        result.trace.append(metrics)
        if checkpoint is not None and checkpoint_every and (step % checkpoint_every == 0 or step == config.outer_steps):
            checkpoint(TrainState(
                step=step, problem=_cpu(problem.state_dict()),
                optimizer=None if optimizer is None else _cpu(optimizer.state_dict()), rng=_rng_state(),
                u_prev=None if not config.warm_start else _cpu(u_prev), val=dict(val), val_step=val_step,
                seconds=metrics["seconds"], average=None if average is None else _cpu(average),
            ))
        if report is not None:
            report(step, metrics)
    result.seconds = earlier + time.perf_counter() - clock
    result.average = average
    result.final = val if config.outer_steps else {f"val_{k}": v for k, v in evaluate(problem, config, "val").items()}
    return result

"""Trial packing: B BMO configurations of one problem trained in one vectorized solve (issue #20).

The B members share the problem's structure, its buffers and the data stream (the same train
batches for every member: common random numbers); their ω are stacked along a leading member
dimension and every inner step, the loss and the hypergradient run on all members at once with
``torch.func.functional_call`` + ``torch.func.vmap``. The outer optimizer (Adam or SGD) runs on the
stacked tensors with a learning rate per member and reproduces ``torch.optim.Adam`` / ``SGD``'s
single-tensor update (the CPU path) step for step, including ``grad_clip`` per member and the
problem's ``lr_scale`` per parameter.

Per member: ``mu``, ``s0``, ``s_power``, ``gamma`` and ``seed``. Everything else is shared within a
pack (``SHARED_FIELDS``). Each member follows the trajectory ``workers.bmo.train`` gives it alone on
the same problem and data, up to floating-point reduction order.

A member whose u, ω or loss stops being finite (in training, or in the validation after a step:
wherever ``train`` would raise ``DivergenceError``) fails alone: its slice leaves the stack and the
error's message is recorded; ``drop(i)`` removes a member (pruned) between outer steps.

Seeds: the solve runs under ``vmap(randomness="error")``, so no member's trajectory can depend on the
global RNG (a problem that draws from it there is refused); the global RNG is seeded with the first
member's seed, as ``train`` seeds it, for anything outside the solve.

``vmap`` cannot run ``requires_grad_``/``torch.autograd.grad``, which the default
``Problem.upper_grad`` uses: during the vectorized solve ``Problem.upper_grad`` is temporarily the
same per-sample gradient by ``torch.func.grad`` (a subclass that calls it by name gets it too).
Validation runs the unchanged ``workers.bmo.evaluate`` on a private copy of the problem holding the
member's weights.

Hypergradient modes: ``unroll``, ``truncated``, ``jfb`` and ``implicit``, each with ``restarts``. The
implicit mode's adjoint solve is a masked BiCGSTAB (``_bicgstab_packed``): every member runs the
iterates of ``workers.bmo._bicgstab`` and stops at its own tolerance, breakdown or ``implicit_maxiter``,
while the pack iterates until its last member stops.

Refused up front, with one line each: ``average`` > 0 (not implemented here), and problems that
cannot be vectorized: an operator that updates buffers (a spectral norm's power iteration) or that
``vmap`` cannot run.

Usage::

    trainer = PackedTrainer(problem, configs)
    while not trainer.done:
        metrics = trainer.step()            # {member index: metrics of this outer step}
        trainer.drop(i)                     # prune member i
    results = trainer.results()             # one PackedResult per member, in the configs' order

or ``train_packed(problem, configs, report)`` with ``report(member, step, metrics)``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from workers.bmo import BMOConfig, DivergenceError, evaluate, resolve_device, step_size
from workers.problem import Problem

#: The fields that may differ between the members of a pack; every other field is shared.
MEMBER_FIELDS = ("mu", "s0", "s_power", "gamma", "seed")
SHARED_FIELDS = tuple(f.name for f in dataclasses.fields(BMOConfig) if f.name not in MEMBER_FIELDS)
PACKED_HYPERGRADS = ("unroll", "truncated", "jfb", "implicit")
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, as workers.bmo._make_optimizer uses them


class PackingError(ValueError):
    """A pack that cannot be built: mismatched shared fields, an unsupported mode, a non-vectorizable problem."""


@dataclass
class PackedResult:
    """What ``workers.bmo.TrainResult`` holds for one member, plus its fate and final weights."""

    config: BMOConfig
    trace: list[dict[str, float]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    device: str = "cpu"
    average: None = None
    status: str = "running"  # "running" | "done" | "failed" | "dropped"
    reason: str | None = None  # why it failed (DivergenceError's message) or was dropped
    weights: dict[str, Tensor] = field(default_factory=dict)  # its trainable parameters, by name, at its end


def check_packable(configs: list[BMOConfig]) -> None:
    """Raise ``PackingError`` (one line) unless ``configs`` can share one pack."""
    if not configs:
        raise PackingError("a pack needs at least one configuration")
    for c in configs:
        if not isinstance(c, BMOConfig):
            raise PackingError(f"a pack takes BMOConfig members, got {type(c).__name__}")
    first = configs[0]
    for name in SHARED_FIELDS:
        values = [getattr(c, name) for c in configs]
        if any(v != values[0] for v in values[1:]):
            raise PackingError(f"field {name!r} must be equal across a pack (per member only: {', '.join(MEMBER_FIELDS)}); "
                               f"got {values}")
    if first.hypergrad not in PACKED_HYPERGRADS:
        raise PackingError(f"hypergrad {first.hypergrad!r} cannot be packed (packable: {', '.join(PACKED_HYPERGRADS)})")
    if first.average:
        raise PackingError("average > 0 cannot be packed yet: the moving average of ω is not kept per member")


class _Call(nn.Module):
    """``functional_call`` calls ``forward``: this one runs ``fn(problem, *args)``."""

    def __init__(self, problem: Problem):
        super().__init__()
        self.problem = problem

    def forward(self, fn, *args):
        return fn(self.problem, *args)


def _func_upper_grad(self, u: Tensor, batch) -> Tensor:
    """``Problem.upper_grad`` by ``torch.func.grad`` (vmap cannot run ``requires_grad_``/``autograd.grad``);
    the same per-sample loss, so the same numbers, and differentiable by the outer autograd."""
    n = u.shape[0]
    return torch.func.grad(lambda v: self.upper_loss(v, batch) * n)(u)


@contextmanager
def _functorch_upper_grad():
    """Within the block, the default ``Problem.upper_grad`` (also when a subclass calls it by name) is
    the functorch one."""
    saved = Problem.upper_grad
    Problem.upper_grad = _func_upper_grad
    try:
        yield
    finally:
        Problem.upper_grad = saved


def _bmo_step(problem: Problem, u: Tensor, batch, k: int, mu: Tensor, one_minus_mu: Tensor, s_k: Tensor, mode: str):
    """``workers.bmo.bmo_step`` with per-member μ, 1-μ and s_k (0-d under vmap); ``mode`` says which
    members have μ = 0 ("zero": all, "full": none, "mixed": some)."""
    v_l = problem.operator(u, batch, k)
    if mode == "zero":
        return problem.project(v_l, batch)
    v_u = u - s_k * problem.metric_inv(problem.upper_grad(u, batch), batch)
    mixed = problem.project(mu * v_u + one_minus_mu * v_l, batch)
    if mode == "full":
        return mixed
    return torch.where(mu == 0.0, problem.project(v_l, batch), mixed)


def _bicgstab_packed(apply, b: Tensor, tol: float, maxiter: int) -> Tensor:
    """``workers.bmo._bicgstab`` on B stacked systems apply(x)[i] = b[i] (``apply`` acts on each member's
    slice alone): each member follows its own BiCGSTAB iterates, stopping at its own tolerance,
    breakdown or ``maxiter``; the others' slices are left as they were. Returns (x, relative residuals (B,))."""
    B = b.shape[0]
    bc = lambda t: t.view(B, *[1] * (b.ndim - 1))  # noqa: E731
    dot = lambda a, c: (a * c).flatten(1).sum(1)  # noqa: E731
    norm = lambda a: torch.linalg.vector_norm(a.flatten(1), dim=1)  # noqa: E731
    b_norm = norm(b).clamp_min(torch.finfo(b.dtype).tiny)
    x = b.clone()
    r = b - apply(x)
    r_hat = r.clone()
    one = torch.ones(B, dtype=b.dtype, device=b.device)
    rho_old, alpha, omega = one, one.clone(), one.clone()
    v = p = torch.zeros_like(b)
    rel = norm(r) / b_norm
    active = rel > tol
    for _ in range(maxiter):
        if not bool(active.any()):
            break
        rho = dot(r_hat, r)
        active = active & (rho.abs() != 0)  # breakdown: r is orthogonal to the shadow residual
        if not bool(active.any()):
            break
        on = bc(active)
        p = torch.where(on, r + bc((rho / rho_old) * (alpha / omega)) * (p - bc(omega) * v), p)
        v = torch.where(on, apply(p), v)
        alpha = torch.where(active, rho / dot(r_hat, v), alpha)
        s = r - bc(alpha) * v
        early = active & (norm(s) / b_norm <= tol)
        full = active & ~early
        t = apply(s)
        tt = dot(t, t)
        omega_new = torch.where(tt > 0, dot(t, s) / tt, torch.zeros_like(tt))
        x = torch.where(bc(early), x + bc(alpha) * p,
                        torch.where(bc(full), x + bc(alpha) * p + bc(omega_new) * s, x))
        r = torch.where(bc(early), s, torch.where(bc(full), s - bc(omega_new) * t, r))
        omega = torch.where(full, omega_new, omega)
        rho_old = torch.where(active, rho, rho_old)
        rel = torch.where(active, norm(r) / b_norm, rel)
        active = active & ~(full & (omega_new.abs() == 0)) & (rel > tol)
    return x, rel


def _fp_residual(problem: Problem, u: Tensor, batch, k: int) -> Tensor:
    r = torch.linalg.vector_norm(u - problem.operator(u, batch, k))
    return r / torch.linalg.vector_norm(u).clamp_min(torch.finfo(u.dtype).tiny)


class PackedTrainer:
    """B members (``configs``) of ``problem`` trained together; see the module's docstring.

    ``problem`` is a template: it is copied, never changed; every member starts from its weights.
    """

    def __init__(self, problem: Problem, configs: list[BMOConfig]):
        configs = list(configs)
        check_packable(configs)
        self.configs = configs
        self.config = c = configs[0]  # the shared fields
        self.device = resolve_device(c.device)
        torch.manual_seed(c.seed)  # as train() does; vmap(randomness="error") keeps the global RNG out of the solve
        self.problem = copy.deepcopy(problem).to(self.device)
        self._call = _Call(self.problem)
        self.names = [n for n, p in self.problem.named_parameters() if p.requires_grad]
        self.lr_scales = {}
        for name in self.names:
            scale = float(self.problem.lr_scale(name))
            if not (math.isfinite(scale) and scale > 0):
                raise PackingError(f"{type(problem).__name__}.lr_scale({name!r}) must be > 0, got {scale!r}")
            self.lr_scales[name] = scale
        self._check_vectorizable()
        B = len(configs)
        own = dict(self.problem.named_parameters())
        self.params = {n: torch.stack([own[n].detach().clone() for _ in range(B)]) for n in self.names}
        self.members = list(range(B))  # original indices of the active members, in stack order
        self._results = [PackedResult(config=cfg, device=str(self.device)) for cfg in configs]
        self._opt_state: dict[str, dict] = {}
        self.u_prev: Tensor | None = None
        self.step_count = 0
        self._val: dict[int, dict[str, float]] = {i: {} for i in range(B)}
        self._val_step: dict[int, int] = dict.fromkeys(range(B), 0)
        self._seconds = 0.0
        self._batches = iter(self.problem.batches("train"))

    # set-up -----------------------------------------------------------------------------------

    def _check_vectorizable(self) -> None:
        """Refuse (``PackingError``, one line) a problem whose operator updates its buffers or that vmap cannot run."""
        name = type(self.problem).__name__
        probe = copy.deepcopy(self.problem)
        probe.train()
        before = {n: (b, b._version, b.detach().clone()) for n, b in probe.named_buffers()}
        batch = next(iter(probe.batches("train")))
        try:
            u = probe.init(batch)
            v = probe.operator(u, batch, 1)
            probe.upper_loss(v, batch)
        except Exception as e:  # the problem itself fails: let the solo path report it
            raise PackingError(f"problem {name} cannot be packed: its operator fails on a training batch "
                               f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
        after = dict(probe.named_buffers())
        for n, (b, version, value) in before.items():
            now = after.get(n)
            if now is None or now is not b or now._version != version or not torch.equal(now, value):
                raise PackingError(f"problem {name} cannot be packed: operator() updates buffer {n!r} "
                                   "(e.g. a spectral norm's power iteration), which a vectorized solve cannot keep per member")
        own = dict(probe.named_parameters())
        params = {n: torch.stack([own[n].detach().clone()] * 2).requires_grad_(True) for n in self.names}
        call = _Call(probe)
        hyper = torch.tensor([0.0, 0.5], dtype=u.dtype, device=u.device)

        def one(p, u, mu, omm, s):
            def f(pr, u):
                w = _bmo_step(pr, u, batch, 1, mu, omm, s, "mixed")
                return pr.upper_loss(w, batch)
            return functional_call(call, {f"problem.{n}": t for n, t in p.items()}, (f, u), strict=False)

        try:
            with _functorch_upper_grad():
                u2 = torch.stack([u.detach()] * 2)
                losses = vmap(one, randomness="error")(params, u2, hyper, 1 - hyper, hyper + 1)
                if losses.requires_grad:
                    torch.autograd.grad(losses.sum(), list(params.values()), allow_unused=True)
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise PackingError(f"problem {name} cannot be packed: torch.func.vmap fails on its operator "
                               f"({type(e).__name__}: {first[:160]}{'...' if len(first) > 160 else ''})") from None
        after = dict(probe.named_buffers())
        for n, (b, version, value) in before.items():
            now = after.get(n)
            if now is None or now.shape != value.shape:
                raise PackingError(f"problem {name} cannot be packed: operator() replaces buffer {n!r} under vmap")

    # the vectorized pieces --------------------------------------------------------------------------

    def _functional(self, fn, params: dict[str, Tensor], *args):
        return functional_call(self._call, {f"problem.{n}": t for n, t in params.items()}, (fn, *args), strict=False)

    def _hyper(self, k: int) -> tuple[Tensor, Tensor, Tensor]:
        """Per active member: μ, 1-μ (as train computes it: in Python floats) and s_k."""
        cfgs = [self.configs[i] for i in self.members]
        kw = {"dtype": self.problem.dtype, "device": self.device}
        return (torch.tensor([cf.mu for cf in cfgs], **kw), torch.tensor([1.0 - cf.mu for cf in cfgs], **kw),
                torch.tensor([step_size(cf, k) for cf in cfgs], **kw))

    def _mu_mode(self) -> str:
        zero = [self.configs[i].mu == 0.0 for i in self.members]
        return "zero" if all(zero) else "full" if not any(zero) else "mixed"

    def _run_steps(self, params, u, batch, ks, first_bad: Tensor, offset: int, mode: str):
        for k in ks:
            mu, omm, s = self._hyper(k)

            def one(p, u, mu, omm, s, k=k):
                return self._functional(lambda pr, u: _bmo_step(pr, u, batch, k, mu, omm, s, mode), p, u)

            u = vmap(one, randomness="error")(params, u, mu, omm, s)
            bad = ~torch.isfinite(u.detach()).flatten(1).all(1)
            first_bad = torch.where(bad & (first_bad == 0), offset + k, first_bad)
        return u, first_bad

    def _hypergradient(self, batch, u0: Tensor):
        """Per member: ℓ(u^K), u^K, ∂ℓ/∂ω (stacked) and the first non-finite inner step (0: none),
        as ``workers.bmo.hypergradient`` computes them one member at a time."""
        c = self.config
        K, R = c.K, c.restarts
        taped = {"unroll": K, "truncated": c.truncate, "jfb": 1, "implicit": 0}[c.hypergrad]
        mode = self._mu_mode()
        u = u0.detach()
        first_bad = torch.zeros(len(self.members), dtype=torch.long, device=u.device)
        with torch.no_grad():
            frozen = {n: t.detach() for n, t in self.params.items()}
            for r in range(R):
                u, first_bad = self._run_steps(frozen, u, batch, range(1, K + 1), first_bad, r * K, mode)
            u, first_bad = self._run_steps(frozen, u, batch, range(1, K - taped + 1), first_bad, R * K, mode)
        if c.hypergrad == "implicit":
            return self._implicit(batch, u, first_bad)
        leaves = {n: t.detach().requires_grad_(True) for n, t in self.params.items()}
        u, first_bad = self._run_steps(leaves, u, batch, range(K - taped + 1, K + 1), first_bad, R * K, mode)
        losses = vmap(lambda p, u: self._functional(lambda pr, u: pr.upper_loss(u, batch), p, u),
                      randomness="error")(leaves, u)
        if self.names and losses.requires_grad:
            grads = dict(zip(self.names, torch.autograd.grad(losses.sum(), [leaves[n] for n in self.names],
                                                             allow_unused=True)))
        else:
            grads = dict.fromkeys(self.names)
        return losses.detach(), u.detach(), grads, first_bad, None

    def _implicit(self, batch, u: Tensor, first_bad: Tensor):
        """``workers.bmo._implicit_grads`` for every member: the adjoint (I - (∂_uT)ᵀ)v = ∂_uℓ solved by the
        masked BiCGSTAB at each member's u*, then ∂_ωℓ + (∂_ωT)ᵀv."""
        c = self.config
        K = c.K
        leaves = {n: t.detach().requires_grad_(True) for n, t in self.params.items()}
        u_star = u.detach().requires_grad_(True)
        losses = vmap(lambda p, u: self._functional(lambda pr, u: pr.upper_loss(u, batch), p, u),
                      randomness="error")(leaves, u_star)
        g_u, *g_direct = torch.autograd.grad(losses.sum(), [u_star, *[leaves[n] for n in self.names]], allow_unused=True)
        f = vmap(lambda p, u: self._functional(lambda pr, u: pr.project(pr.operator(u, batch, K), batch), p, u),
                 randomness="error")(leaves, u_star)
        if not f.requires_grad:
            residual = torch.zeros(len(self.members), dtype=torch.float64)
            return losses.detach(), u.detach(), dict(zip(self.names, g_direct)), first_bad, residual

        def apply(w: Tensor) -> Tensor:
            (jtw,) = torch.autograd.grad(f, u_star, w, retain_graph=True, allow_unused=True)
            return w if jtw is None else w - jtw

        with torch.no_grad():
            v, residual = _bicgstab_packed(apply, g_u, c.implicit_tol, c.implicit_maxiter)
        g_through = (torch.autograd.grad(f, [leaves[n] for n in self.names], v, allow_unused=True)
                     if self.names else ())
        grads = [None if a is None and b is None else (a if b is None else b if a is None else a + b)
                 for a, b in zip(g_direct, g_through)]
        return losses.detach(), u.detach(), dict(zip(self.names, grads)), first_bad, residual

    def _step_omega(self, grads: dict[str, Tensor | None]) -> None:
        """One outer optimizer step on every active member: ``torch.optim.Adam``/``SGD``'s update with
        lr = γ_member · lr_scale(name), after ``clip_grad_norm_`` over each member's parameters."""
        c = self.config
        present = [n for n in self.names if grads[n] is not None]
        if not present:
            return
        B = len(self.members)
        if c.grad_clip is not None:  # torch.nn.utils.clip_grad_norm_, per member
            norms = torch.stack([torch.linalg.vector_norm(grads[n].reshape(B, -1), 2, dim=1) for n in present])
            total = torch.linalg.vector_norm(norms, 2, dim=0)
            coef = torch.clamp(c.grad_clip / (total + 1e-6), max=1.0)
            grads = {n: (g if g is None else g * coef.view(B, *[1] * (g.ndim - 1))) for n, g in grads.items()}
        gammas = [self.configs[i].gamma for i in self.members]
        with torch.no_grad():
            for n in present:
                p, g = self.params[n], grads[n]
                view = (B, *[1] * (p.ndim - 1))
                lrs = [gamma * self.lr_scales[n] for gamma in gammas]
                if c.optimizer == "sgd":
                    neg = torch.tensor([-lr for lr in lrs], dtype=p.dtype, device=p.device).view(view)
                    p.addcmul_(g, neg.expand_as(g))  # = p.add_(g, alpha=-lr), bit for bit
                    continue
                st = self._opt_state.get(n)
                if st is None:
                    st = self._opt_state[n] = {"step": 0, "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
                beta1, beta2 = ADAM_BETAS
                st["step"] += 1
                step = float(st["step"])
                st["exp_avg"].lerp_(g, 1 - beta1)
                st["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
                bias_correction1 = 1 - beta1**step
                bias_correction2_sqrt = (1 - beta2**step) ** 0.5
                denom = (st["exp_avg_sq"].sqrt() / bias_correction2_sqrt).add_(ADAM_EPS)
                neg = torch.tensor([-(lr / bias_correction1) for lr in lrs], dtype=p.dtype, device=p.device).view(view)
                p.add_((neg * st["exp_avg"]) / denom)  # = p.addcdiv_(exp_avg, denom, value=-step_size), bit for bit

    def _weights(self, pos: int) -> dict[str, Tensor]:
        return {n: t[pos].detach().clone() for n, t in self.params.items()}

    def _remove(self, positions: list[int]) -> None:
        keep = [j for j in range(len(self.members)) if j not in set(positions)]
        idx = torch.tensor(keep, dtype=torch.long, device=self.device)
        self.params = {n: t.index_select(0, idx) for n, t in self.params.items()}
        for st in self._opt_state.values():
            st["exp_avg"] = st["exp_avg"].index_select(0, idx)
            st["exp_avg_sq"] = st["exp_avg_sq"].index_select(0, idx)
        if self.u_prev is not None:
            self.u_prev = self.u_prev.index_select(0, idx) if keep else None
        self.members = [self.members[j] for j in keep]

    def _fail(self, positions_reasons: dict[int, str], weights: dict[int, dict[str, Tensor]]) -> None:
        for pos, reason in positions_reasons.items():
            res = self._results[self.members[pos]]
            res.status, res.reason, res.weights = "failed", reason, weights[pos]
            res.seconds = self._seconds
        self._remove(sorted(positions_reasons))

    # the public API ---------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return not self.members or self.step_count >= self.config.outer_steps

    def drop(self, member: int, reason: str = "dropped") -> None:
        """Remove member ``member`` (its index in ``configs``) from the pack: it stops costing compute."""
        if member not in self.members:
            raise ValueError(f"member {member} is not in the pack (active: {self.members})")
        pos = self.members.index(member)
        res = self._results[member]
        res.status, res.reason, res.weights, res.seconds = "dropped", reason, self._weights(pos), self._seconds
        self._remove([pos])

    def member_weights(self, member: int) -> dict[str, Tensor]:
        """The current trainable parameters of an active member, by name."""
        return self._weights(self.members.index(member))

    @contextmanager
    def member_problem(self, member: int):
        """The problem (a private copy) holding an active member's weights, e.g. for ``evaluate``."""
        weights = self.member_weights(member)
        own = dict(self.problem.named_parameters())
        with torch.no_grad():
            for n, w in weights.items():
                own[n].copy_(w)
        yield self.problem

    def _validate(self, member: int) -> dict[str, float]:
        with self.member_problem(member) as problem:
            return {f"val_{k}": v for k, v in evaluate(problem, self.configs[member], "val").items()}

    def step(self) -> dict[int, dict[str, float]]:
        """One outer step of every active member; returns {member: metrics} of those still active after it
        (failed members are recorded in their result, with the reason)."""
        if self.done:
            raise RuntimeError("the pack has no step left")
        c = self.config
        clock = time.perf_counter()
        self.step_count += 1
        step = self.step_count
        batch = next(self._batches)
        B = len(self.members)
        with torch.no_grad(), _functorch_upper_grad():
            u0 = vmap(lambda p: self._functional(lambda pr: pr.init(batch), p), randomness="error")(
                {n: t.detach() for n, t in self.params.items()})
            if u0.shape[0] != B:
                u0 = u0.expand(B, *u0.shape[1:])
        if c.warm_start and self.u_prev is not None and self.u_prev.shape == u0.shape:
            u0 = self.u_prev
        with _functorch_upper_grad():
            losses, u_K, grads, first_bad, adjoint = self._hypergradient(batch, u0)
        failed: dict[int, str] = {}
        for pos, k in enumerate(first_bad.tolist()):
            if k:
                failed[pos] = str(DivergenceError(step, k, "u"))
        snapshot = {pos: self._weights(pos) for pos in failed}  # as train leaves ω when it raises before the update
        self._step_omega(grads)
        for pos in range(B):
            if pos not in failed and not all(bool(torch.isfinite(t[pos]).all()) for t in self.params.values()):
                failed[pos] = str(DivergenceError(step, None, "omega"))
                snapshot[pos] = self._weights(pos)
        self.u_prev = u_K
        with torch.no_grad(), _functorch_upper_grad():
            res = vmap(lambda p, u: self._functional(lambda pr, u: _fp_residual(pr, u, batch, c.K + 1), p, u),
                       randomness="error")({n: t.detach() for n, t in self.params.items()}, u_K)
        loss_list, res_list = losses.tolist(), res.tolist()
        adjoint_list = None if adjoint is None else adjoint.tolist()
        for pos in range(B):
            if pos not in failed and not math.isfinite(loss_list[pos]):
                failed[pos] = str(DivergenceError(step, None, "upper_loss"))
                snapshot[pos] = self._weights(pos)
        survivors = [(pos, self.members[pos]) for pos in range(B) if pos not in failed]
        self._seconds += time.perf_counter() - clock
        if failed:
            self._fail(failed, snapshot)
        out: dict[int, dict[str, float]] = {}
        validate = step == 1 or step % c.eval_every == 0 or step == c.outer_steps
        eval_failed: dict[int, str] = {}
        for pos, member in survivors:
            clock = time.perf_counter()
            if validate:
                try:
                    self._val[member], self._val_step[member] = self._validate(member), step
                except DivergenceError as e:  # train raises it from its validation too: this member fails alone
                    eval_failed[self.members.index(member)] = str(e)
                    continue
                finally:
                    self._seconds += time.perf_counter() - clock
            metrics = {"upper_loss": loss_list[pos], "fp_residual": res_list[pos]}
            if adjoint_list is not None:  # as train reports it
                metrics["adjoint_residual"] = adjoint_list[pos]
            metrics.update(self._val[member])
            metrics["val_step"], metrics["seconds"] = self._val_step[member], self._seconds
            self._results[member].trace.append(metrics)
            out[member] = metrics
        if eval_failed:
            self._fail(eval_failed, {pos: self._weights(pos) for pos in eval_failed})
        if self.step_count >= c.outer_steps:
            for member in self.members:
                r = self._results[member]
                r.status, r.final, r.seconds = "done", dict(self._val[member]), self._seconds
                r.weights = self.member_weights(member)
        return out

    def results(self) -> list[PackedResult]:
        """One result per configuration, in their order (members still running hold their current weights)."""
        for member in self.members:
            r = self._results[member]
            if r.status == "running":
                r.weights, r.seconds = self.member_weights(member), self._seconds
        return list(self._results)

    def run(self, report: Callable[[int, int, dict[str, float]], None] | None = None) -> list[PackedResult]:
        """Train to ``outer_steps`` (or until no member is left); ``report(member, step, metrics)`` after each step."""
        if self.config.outer_steps == 0:
            for member in list(self.members):
                r = self._results[member]
                with self.member_problem(member) as problem:
                    r.final = {f"val_{k}": v for k, v in evaluate(problem, self.configs[member], "val").items()}
                r.status, r.weights = "done", self.member_weights(member)
            return list(self._results)
        while not self.done:
            step = self.step_count + 1
            for member, metrics in self.step().items():
                if report is not None:
                    report(member, step, metrics)
        return self.results()


def train_packed(problem: Problem, configs: list[BMOConfig],
                 report: Callable[[int, int, dict[str, float]], None] | None = None) -> list[PackedResult]:
    """Train ``configs`` on copies of ``problem`` in one vectorized solve; one ``PackedResult`` per configuration.

    ``report(member, step, metrics)`` is called after every outer step of every active member, with the keys
    ``workers.bmo.train`` reports. Raises ``PackingError`` (a ``ValueError``) when the pack cannot be built.
    """
    return PackedTrainer(problem, configs).run(report)


__all__ = ["MEMBER_FIELDS", "PACKED_HYPERGRADS", "SHARED_FIELDS", "PackedResult", "PackedTrainer", "PackingError",
           "check_packable", "train_packed"]

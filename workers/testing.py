"""The conformance suite of the Problem interface, for any problem (like Optuna's ``optuna.testing``).

Each check is ``check_NAME(problem_factory)``: it builds fresh problems with the factory (a callable
without arguments) and raises ``ConformanceError`` whose one-line message says what is wrong and
how to fix it. ``run_checks`` runs them all (``hpo check`` prints its result, and ``hpo run`` /
``hpo train`` run it on a ``module:Class`` task first). In your own tests, subclass
``ProblemConformance`` and every check is a test::

    from workers.testing import ProblemConformance

    class TestDenoise(ProblemConformance):
        def make_problem(self):
            return Denoise(n=16)
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import math
from collections.abc import Callable

import torch
from torch import Tensor

from workers.bmo import BMOConfig, DivergenceError, evaluate_solve, hypergradient
from workers.problem import Problem

#: BMO settings of the solver checks: a short solve, μ > 0 so that the upper gradient takes part.
CONFIG = BMOConfig(K=4, mu=0.1, device="cpu")
SPLITS = ("train", "val", "test")
TRAIN_BATCHES = 3  # drawn from the endless "train" stream
MAX_EVAL_BATCHES = 1000  # more from "val" or "test" counts as endless
STEPS = (1, 2, 100)  # inner steps the operator is called at: past K too (the residual is measured at K+1)
REQUIRED = {"init": ("batch",), "operator": ("u", "batch", "k"), "upper_loss": ("u", "batch"),
            "metrics": ("u", "batch"), "batches": ("split",)}

ProblemFactory = Callable[[], Problem]


class ConformanceError(AssertionError):
    """A problem breaks a convention of the Problem interface; the message says which, in one line."""


class NonFiniteError(ConformanceError):
    """A NaN or infinite value: it may come from the arguments (a step too long), not from the interface."""


# --- helpers ---------------------------------------------------------------------------


def _tensors(batch) -> list[Tensor]:
    """The tensors a batch holds (its fields, items or attributes), in order."""
    if isinstance(batch, Tensor):
        return [batch]
    if dataclasses.is_dataclass(batch):
        values = [getattr(batch, f.name) for f in dataclasses.fields(batch)]
    elif isinstance(batch, dict):
        values = list(batch.values())
    elif isinstance(batch, (tuple, list)):
        values = list(batch)
    else:
        values = list(getattr(batch, "__dict__", {}).values())
    return [v for v in values if isinstance(v, Tensor)]


def _same(a, b) -> bool:
    """Whether two batches (or values) hold equal tensors."""
    ta, tb = _tensors(a), _tensors(b)
    return len(ta) == len(tb) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(ta, tb))


def _batch_size(batch, split: str) -> int:
    """B: the first dimension of the batch's ``y`` (else of its first tensor)."""
    y = getattr(batch, "y", None)
    tensors = [y] if isinstance(y, Tensor) else _tensors(batch)
    if not tensors or tensors[0].ndim == 0:
        raise ConformanceError(f"a {split} batch must hold tensors whose first dimension is the batch "
                               f"(e.g. a dataclass with y and x), got {type(batch).__name__}")
    return tensors[0].shape[0]


def _iterate(problem: Problem, split: str):
    batches = problem.batches(split)
    try:
        return iter(batches)
    except TypeError:
        raise ConformanceError(f"batches({split!r}) must return an iterable of batches (e.g. be a generator), "
                               f"got {type(batches).__name__}") from None


def _first(problem: Problem, split: str):
    try:
        return next(_iterate(problem, split))
    except StopIteration:
        raise ConformanceError(f"batches({split!r}) yields no batch") from None


def _shape(value) -> str:
    return f"shape {tuple(value.shape)} ({value.dtype})" if isinstance(value, Tensor) else f"a {type(value).__name__}"


def _raised(e: Exception) -> ConformanceError:
    lines = str(e).strip().splitlines()
    return ConformanceError(f"raised {type(e).__name__}" + (f": {lines[0]}" if lines else ""))


# --- the checks --------------------------------------------------------------------------


def check_signatures(problem_factory: ProblemFactory) -> None:
    """Every method BMO calls is defined and takes its arguments: ``operator(u, batch, k)`` and the others."""
    problem = problem_factory()
    for name, args in REQUIRED.items():
        call = f"{name}({', '.join(args)})"
        if getattr(type(problem), name) is getattr(Problem, name):
            raise ConformanceError(f"{call} is not defined: override Problem.{name}")
        signature = inspect.signature(getattr(problem, name))
        try:
            signature.bind(*args)
        except TypeError:
            hint = ": k is the inner step (1-based), which a stationary operator ignores" if name == "operator" else ""
            raise ConformanceError(f"{name}{signature} cannot be called as {call}{hint}") from None


def check_batches(problem_factory: ProblemFactory) -> None:
    """The "train" batches never end; "val" and "test" yield the same finite, non-empty list every time."""
    problem = problem_factory()
    drawn = list(itertools.islice(_iterate(problem, "train"), TRAIN_BATCHES))
    if len(drawn) < TRAIN_BATCHES:
        raise ConformanceError(f"batches('train') stopped after {len(drawn)} batch(es): it must yield fresh "
                               "batches without end (a `while True:` loop)")
    _batch_size(drawn[0], "train")
    for split in ("val", "test"):
        first, again = (list(itertools.islice(_iterate(problem, split), MAX_EVAL_BATCHES + 1)) for _ in range(2))
        if not first:
            raise ConformanceError(f"batches({split!r}) yields no batch: it must yield a finite, non-empty list")
        if len(first) > MAX_EVAL_BATCHES:
            raise ConformanceError(f"batches({split!r}) yields more than {MAX_EVAL_BATCHES} batches: "
                                   "val and test must be finite (return after the last batch)")
        if len(again) != len(first) or not all(_same(a, b) for a, b in zip(first, again)):
            raise ConformanceError(f"batches({split!r}) yields different batches each time: val and test must "
                                   "be the same every time (draw them once, or from a seeded generator)")
        _batch_size(first[0], split)


def check_init(problem_factory: ProblemFactory) -> None:
    """``init(batch)`` returns a floating tensor whose first dimension is the batch."""
    problem = problem_factory()
    for split in SPLITS:
        batch = _first(problem, split)
        u0, size = problem.init(batch), _batch_size(batch, split)
        if not isinstance(u0, Tensor) or not u0.is_floating_point():
            raise ConformanceError(f"init(batch) must return a floating tensor, got {_shape(u0)}")
        if u0.ndim == 0 or u0.shape[0] != size:
            raise ConformanceError(f"init(batch) must return the iterate with the batch first, ({size}, ...) for this "
                                   f"{split} batch of {size}, got shape {tuple(u0.shape)}")


def check_operator(problem_factory: ProblemFactory) -> None:
    """``operator(u, batch, k)`` and ``project(u, batch)`` return tensors of u's shape and dtype."""
    problem = problem_factory()
    with torch.no_grad():
        for split in SPLITS:
            batch = _first(problem, split)
            u = problem.init(batch)
            for k in STEPS:
                tu = problem.operator(u, batch, k)
                if not isinstance(tu, Tensor) or tu.shape != u.shape or tu.dtype != u.dtype:
                    raise ConformanceError(f"operator(u, batch, k={k}) must return u's {_shape(u)}, got {_shape(tu)}")
            pu = problem.project(u, batch)
            if not isinstance(pu, Tensor) or pu.shape != u.shape or pu.dtype != u.dtype:
                raise ConformanceError(f"project(u, batch) must return u's {_shape(u)}, got {_shape(pu)}")


def check_upper_loss(problem_factory: ProblemFactory) -> None:
    """``upper_loss(u, batch)`` is a finite scalar and ``upper_grad(u, batch)`` has u's shape."""
    problem = problem_factory()
    for split in SPLITS:
        batch = _first(problem, split)
        u = problem.init(batch)
        loss = problem.upper_loss(u, batch)
        if not isinstance(loss, Tensor) or loss.ndim != 0:
            raise ConformanceError(f"upper_loss(u, batch) must be a scalar tensor (the mean over the batch), got {_shape(loss)}")
        if not math.isfinite(float(loss.detach())):
            raise NonFiniteError(f"upper_loss(u⁰, batch) is {float(loss.detach())} on the first {split} batch")
        grad = problem.upper_grad(u, batch)
        if not isinstance(grad, Tensor) or grad.shape != u.shape:
            raise ConformanceError(f"upper_grad(u, batch) must have u's {_shape(u)}, got {_shape(grad)}")


def check_metrics(problem_factory: ProblemFactory) -> None:
    """``metrics(u, batch)`` returns a non-empty dict of finite floats."""
    problem = problem_factory()
    for split in SPLITS:
        batch = _first(problem, split)
        with torch.no_grad():
            metrics = problem.metrics(problem.operator(problem.init(batch), batch, 1), batch)
        if not isinstance(metrics, dict) or not metrics:
            raise ConformanceError(f"metrics(u, batch) must return a non-empty dict of floats, got {metrics!r:.80}")
        for name, value in metrics.items():
            if not isinstance(name, str) or not isinstance(value, float):
                raise ConformanceError(f"metrics(u, batch) must map names to floats, got {name!r}: "
                                       f"{type(value).__name__} (return float(...))")
            if not math.isfinite(value):
                raise NonFiniteError(f"metrics(u, batch)[{name!r}] is {value} on the first {split} batch")


def check_determinism(problem_factory: ProblemFactory) -> None:
    """Two problems built alike have the same parameters, first batches and metrics (seeded data)."""
    one, two = problem_factory(), problem_factory()
    for split in ("train", "val"):
        if not _same(_first(one, split), _first(two, split)):
            raise ConformanceError(f"two problems built with the same arguments give different first {split} batches: "
                                   "seed their data (e.g. torch.Generator().manual_seed(seed))")
    for (name, p), q in zip(one.state_dict().items(), two.state_dict().values()):
        if not _same(p, q):
            raise ConformanceError(f"two problems built with the same arguments differ in {name!r}: seed their "
                                   "initial values (e.g. torch.manual_seed(seed) before building them)")
    with torch.no_grad():
        values = [p.metrics(p.operator(p.init(b), b, 1), b) for p, b in ((one, _first(one, "val")), (two, _first(two, "val")))]
    if values[0].keys() != values[1].keys() or any(
            not (a == b or (math.isnan(a) and math.isnan(b))) for a, b in zip(values[0].values(), values[1].values())):
        raise ConformanceError(f"two problems built with the same arguments give different metrics on the same "
                               f"batch: {values[0]} and {values[1]}")


def check_nonexpansive(problem_factory: ProblemFactory) -> None:
    """Where ``nonexpansive`` is claimed, ‖T(u) - T(v)‖ <= ‖u - v‖ on random pairs."""
    problem = problem_factory()
    if not problem.nonexpansive:
        return
    batch = _first(problem, "val")
    g = torch.Generator().manual_seed(0)
    u0 = problem.init(batch)
    with torch.no_grad():
        for _ in range(20):
            u, v = (torch.randn(u0.shape, generator=g, dtype=u0.dtype).to(u0.device) for _ in range(2))
            for k in (1, 5):
                lhs = float(torch.linalg.vector_norm(problem.operator(u, batch, k) - problem.operator(v, batch, k)))
                rhs = float(torch.linalg.vector_norm(u - v))
                if lhs > rhs * (1 + 1e-5):
                    raise ConformanceError(f"nonexpansive is True, but ‖T(u) - T(v)‖ = {lhs:.6g} > ‖u - v‖ = {rhs:.6g} "
                                           f"at k={k} for random u, v: set nonexpansive = False")


def check_evaluation_solve(problem_factory: ProblemFactory, config: BMOConfig | None = None) -> None:
    """The evaluation solve (``config.eval_steps`` steps on the first val batch) stays finite."""
    config = config or CONFIG
    problem = problem_factory()
    try:
        evaluate_solve(problem, _first(problem, "val"), config)
    except DivergenceError as e:
        raise NonFiniteError(f"the evaluation solve ({config.eval_steps} steps) diverged: u is not finite at "
                             f"step {e.inner_step}") from None


def check_hypergradient(problem_factory: ProblemFactory, config: BMOConfig | None = None) -> None:
    """One hypergradient step (``config.hypergrad``, K steps on the first train batch) has a finite loss and gradient."""
    config = config or CONFIG
    problem = problem_factory()
    try:
        loss, _, grads, _ = hypergradient(problem, _first(problem, "train"), config)
    except DivergenceError as e:
        raise NonFiniteError(f"the {config.hypergrad} hypergradient step (K={config.K}) diverged: {e.where} is "
                             f"not finite at inner step {e.inner_step}") from None
    if not math.isfinite(float(loss)):
        raise NonFiniteError(f"the hypergradient step's upper loss is {float(loss)}")
    params = [name for name, p in problem.named_parameters() if p.requires_grad]
    for name, grad in zip(params, grads):
        if grad is not None and not bool(torch.isfinite(grad).all()):
            raise NonFiniteError(f"the hypergradient of {name!r} is not finite")


CHECKS: dict[str, Callable[..., None]] = {
    "signatures": check_signatures,
    "batches": check_batches,
    "init": check_init,
    "operator": check_operator,
    "upper_loss": check_upper_loss,
    "metrics": check_metrics,
    "determinism": check_determinism,
    "nonexpansive": check_nonexpansive,
    "evaluation_solve": check_evaluation_solve,
    "hypergradient": check_hypergradient,
}
SOLVER_CHECKS = (check_evaluation_solve, check_hypergradient)  # the checks that take a BMOConfig


def run_checks(problem_factory: ProblemFactory, config: BMOConfig | None = None) -> list[tuple[str, ConformanceError | None]]:
    """Run every check: ``(name, None)`` for a pass, ``(name, error)`` for a failure, in ``CHECKS`` order.

    ``config`` sets the solver checks' BMO settings (default ``CONFIG``). An exception the problem's
    own code raises fails its check as "raised TypeError: ..."; a factory that cannot build a
    problem fails as the one check "build".
    """
    try:
        problem_factory()
    except Exception as e:  # noqa: BLE001 - the user's constructor may raise anything
        return [("build", _raised(e))]
    results = []
    for name, check in CHECKS.items():
        try:
            check(problem_factory, config) if check in SOLVER_CHECKS else check(problem_factory)
            results.append((name, None))
        except ConformanceError as e:
            results.append((name, e))
        except Exception as e:  # noqa: BLE001 - the problem's own code may raise anything
            results.append((name, _raised(e)))
    return results


def interface_error(problem_factory: ProblemFactory, config: BMOConfig | None = None) -> str | None:
    """The first failed check as "check: reason", or None. NaN and infinite values do not count: they
    depend on the arguments, and a trial whose settings diverge is pruned, not an error."""
    for name, error in run_checks(problem_factory, config):
        if error is not None and not isinstance(error, NonFiniteError):
            return f"{name}: {error}"
    return None


class ProblemConformance:
    """A pytest base class: subclass it as ``TestMyProblem``, define ``make_problem``, and each check is a
    test. ``config`` sets the BMO settings of the solver checks (default ``CONFIG``)."""

    config: BMOConfig | None = None

    def make_problem(self) -> Problem:
        """A fresh problem, built the same way at every call."""
        raise NotImplementedError("define make_problem(self) in your subclass of ProblemConformance")

    def test_signatures(self):
        check_signatures(self.make_problem)

    def test_batches(self):
        check_batches(self.make_problem)

    def test_init(self):
        check_init(self.make_problem)

    def test_operator(self):
        check_operator(self.make_problem)

    def test_upper_loss(self):
        check_upper_loss(self.make_problem)

    def test_metrics(self):
        check_metrics(self.make_problem)

    def test_determinism(self):
        check_determinism(self.make_problem)

    def test_nonexpansive(self):
        check_nonexpansive(self.make_problem)

    def test_evaluation_solve(self):
        check_evaluation_solve(self.make_problem, self.config)

    def test_hypergradient(self):
        check_hypergradient(self.make_problem, self.config)


__all__ = ["CHECKS", "CONFIG", "ConformanceError", "NonFiniteError", "ProblemConformance", "interface_error",
           "run_checks", *[f"check_{name}" for name in CHECKS]]

"""The Problem interface: what a task gives the BMO solver.

A problem is a ``torch.nn.Module``; its parameters are the hyper-training
variables ω that BMO's outer loop learns. Write your own in one file::

    from dataclasses import dataclass

    import torch
    from workers import Problem

    @dataclass
    class Batch:
        y: torch.Tensor                          # noisy observations (B, n)
        x: torch.Tensor                          # ground truth (B, n)

    class Denoise(Problem):
        nonexpansive = True                      # T is 1-Lipschitz in u (checked by `hpo check`)

        def __init__(self, n=32, batch_size=16, noise=0.1, seed=0):
            super().__init__()
            self.log_step = torch.nn.Parameter(torch.tensor(-1.0))   # ω
            self.n, self.batch_size, self.noise, self.seed = n, batch_size, noise, seed

        def init(self, batch):                   # u⁰
            return torch.zeros_like(batch.y)

        def operator(self, u, batch, k):         # T(u, ω); k = inner step, 1-based
            t = torch.sigmoid(self.log_step)
            return (1 - t) * u + t * batch.y

        def upper_loss(self, u, batch):          # ℓ(u; ω): mean over the batch
            return 0.5 * ((u - batch.x) ** 2).sum(-1).mean()

        def metrics(self, u, batch):
            return {"mse": float(((u - batch.x) ** 2).mean())}

        def batches(self, split):                # "train": endless; "val"/"test": finite, the same every time
            g = torch.Generator().manual_seed(3 * self.seed + ("train", "val", "test").index(split))
            while True:
                x = torch.randn(self.batch_size, self.n, generator=g)
                y = x + self.noise * torch.randn(x.shape, generator=g)
                yield Batch(y.to(self.device), x.to(self.device))
                if split != "train":             # one fixed batch for val and for test
                    return

Check it with ``hpo check my_module:Denoise`` (or ``workers.testing``'s suite in your tests).

Arguments: a job spec's ``task_args`` (and ``hpo train --set``) are keyword arguments of the constructor. A
problem may declare them as a frozen dataclass and point the class attribute ``Args`` at it, as the shipped
tasks do (``SparseCodingArgs``, ``DeconvolutionArgs``, ``DerainArgs``): its fields, with the constructor's
names and defaults, are then the task's arguments, and its ``__post_init__`` checks them with
``workers.checks`` (``check_int``, ``check_real``, ``check_choice``, ...), whose ``CheckError`` names the
argument, so that a spec's error names ``task_args.<argument>`` (or ``space.<argument>``). Build it first
thing in the constructor, so that a direct ``Denoise(noise=-1)`` is checked too::

    from workers.checks import check_int, check_real

    @dataclass(frozen=True)
    class DenoiseArgs:
        n: int = 32
        batch_size: int = 16
        noise: float = 0.1
        seed: int = 0

        def __post_init__(self):
            check_int("n", self.n, minimum=1)
            check_int("batch_size", self.batch_size, minimum=1)
            check_real("noise", self.noise, 0)
            check_int("seed", self.seed, minimum=0)

    class Denoise(Problem):
        Args = DenoiseArgs

        def __init__(self, n=32, batch_size=16, noise=0.1, seed=0):
            super().__init__()
            self.args = DenoiseArgs(n, batch_size, noise, seed)
            ...

Without ``Args`` declared on the class itself (the fallback; a subclass of a shipped task that takes other
arguments declares its own ``Args`` or none, since its parent's is not inherited for this) the task's
arguments are read from the constructor's signature (its named parameters; ``**kwargs`` accepts nothing more), and any check it makes is its own: a ``CheckError`` from
``workers.checks`` still puts an error at its argument, any other error goes to ``task_args`` as a whole.

Conventions:

- The first dimension of ``u`` is the batch. ``upper_loss`` is a scalar mean over
  the batch; ``upper_grad`` returns the gradient of the *per-sample* loss (the
  default multiplies autograd's gradient of the mean by the batch size), so the
  inner step size ``s_k`` does not depend on the batch size.
- ``batches("train")`` yields fresh batches forever (online data);
  ``batches("val")`` and ``batches("test")`` yield the same finite list every
  time. Batches are any object with tensors on ``self.device``.
- ``operator`` receives the inner step index ``k`` (1-based); a stationary
  operator ignores it, an untied network (one set of weights per layer) uses it.
- Set ``nonexpansive = True`` only when T is 1-Lipschitz in ``u`` by
  construction: the conformance suite checks it on random pairs.
- Set ``upper_loss_needs_truth = False`` when ℓ needs no ground truth; the solver
  then evaluates with the full BMO step instead of the plain fixed-point step.
- To run a trained solver on a user's data (``workers.apply_solver``, ``hpo apply``), define
  ``observation_batch(y)``: a batch with the observation and no ground truth, on which ``init``,
  ``operator``, ``project`` and ``estimate`` work (``metrics`` and ``upper_loss`` never see it).
  ``observation_kind`` says what ``hpo apply`` reads and writes ("image": grayscale PNG files as
  (B, 1, H, W) in [0, 1]; "vector": ``.npy`` arrays (B, m)); ``degradation()`` says in one
  sentence what the solver was trained to undo.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

import torch
from torch import Tensor, nn


class Problem(nn.Module):
    """Base class of every task: T(u, ω), ℓ(u; ω), data and metrics."""

    #: ℓ uses ground truth, so at evaluation only T is iterated.
    upper_loss_needs_truth: bool = True
    #: T is nonexpansive in u by construction (the conformance suite checks it).
    nonexpansive: bool = False
    #: What ``hpo apply`` reads and writes: "image" (grayscale PNG) or "vector" (``.npy``).
    observation_kind: str = "vector"
    #: The dataclass of the constructor's keyword arguments (names, defaults and checks), or None: the task's
    #: arguments are then read from the constructor's signature (see the module's docstring).
    Args: ClassVar[type | None] = None

    def init(self, batch) -> Tensor:
        """Return the initial iterate u⁰ for ``batch``."""
        raise NotImplementedError

    def operator(self, u: Tensor, batch, k: int) -> Tensor:
        """Return T(u, ω) for ``batch`` at inner step ``k`` (1-based)."""
        raise NotImplementedError

    def upper_loss(self, u: Tensor, batch) -> Tensor:
        """Return the upper-level loss ℓ(u; ω), a scalar mean over the batch."""
        raise NotImplementedError

    def metrics(self, u: Tensor, batch) -> dict[str, float]:
        """Return quality metrics of ``u`` on ``batch`` (e.g. ``psnr``, ``nmse_db``)."""
        raise NotImplementedError

    def batches(self, split: str) -> Iterable:
        """Yield batches of ``split``: "train" (endless), "val" or "test" (finite, fixed)."""
        raise NotImplementedError

    # Optional overrides -----------------------------------------------------------

    def upper_grad(self, u: Tensor, batch) -> Tensor:
        """Per-sample gradient ∂_u ℓ(u; ω); override with a closed form when known."""
        taped = torch.is_grad_enabled()  # inside a taped solve the gradient must stay differentiable
        with torch.enable_grad():
            leaf = u if u.requires_grad else u.detach().requires_grad_(True)
            loss = self.upper_loss(leaf, batch) * u.shape[0]
            (grad,) = torch.autograd.grad(loss, leaf, create_graph=taped)
        return grad

    def observation_batch(self, y: Tensor):
        """A batch holding only the observation ``y`` (on the problem's device and dtype; no ground
        truth), for running a trained solver on a user's data. Raise a ``ValueError`` naming the
        expected shape when ``y`` does not fit (the shipped tasks: ``CheckError("y", "shape ...", tuple(y.shape))``)."""
        raise NotImplementedError(f"{type(self).__name__} does not support running on user data: define observation_batch(y)")

    def degradation(self) -> str:
        """One sentence on what the solver is trained to undo (e.g. "gaussian blur 25x25 (sigma 1.6), noise 1%")."""
        return ""

    def metric_inv(self, g: Tensor, batch) -> Tensor:
        """Apply H⁻¹ (the inverse correction metric) to ``g``; identity by default."""
        return g

    def project(self, u: Tensor, batch) -> Tensor:
        """Project onto the feasible set U in the H-norm; identity by default."""
        return u

    def estimate(self, u: Tensor, batch) -> Tensor:
        """Return the estimate the iterate ``u`` stands for on ``batch``: the iterate itself unless it
        holds extra state, or the estimate is read out of it (a splitting's shadow sequence)."""
        return u

    def lr_scale(self, name: str) -> float:
        """Multiplier of the outer learning rate γ for the parameter ``name`` (as ``named_parameters``
        spells it); 1 by default. Override when one part of ω needs smaller (or larger) steps."""
        return 1.0

    def learned_values(self) -> dict[str, float]:
        """Current values of low-dimensional hyper-training variables (default: scalar parameters).

        A task whose arguments set such a variable's initial value (a regularization
        weight, a step size) reports its refined value here under the argument's name.
        """
        return {name: float(p.detach()) for name, p in self.named_parameters() if p.numel() == 1}

    @property
    def device(self) -> torch.device:
        """The device of the problem's parameters and buffers (CPU when it has none)."""
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype of the problem's parameters and buffers."""
        for t in self.parameters():
            return t.dtype
        for t in self.buffers():
            if t.is_floating_point():
                return t.dtype
        return torch.get_default_dtype()

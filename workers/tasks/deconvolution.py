"""Image deconvolution y = k * x + n with a learned plug-and-play splitting operator.

Three splittings (``scheme``), each with a learned step τ and a learned denoiser D_ω:

- ``"fb"`` (forward-backward): T(u) = Proj_[0,1](D_ω(u - τ Aᵀ(Au - y))), τ = (2/L)·sigmoid(t)
  ∈ (0, 2/L);
- ``"hqs"`` (half-quadratic splitting): T(u) = Proj_[0,1](D_ω(prox_τf(u))), f = ½‖Au - y‖²,
  prox_τf(u) = (AᵀA + I/τ)⁻¹(Aᵀy + u/τ) in closed form by FFT (circular boundary only),
  τ = exp(t) > 0. The prox is firmly nonexpansive for every τ, and it restores the
  frequencies the blur attenuates in one step where the gradient step needs many;
- ``"drs"`` (relaxed Douglas–Rachford, ``pnp_convex`` only): the iterate is z and the image
  x = prox_τf(z); T(z) = (2 - β)(z - x) + D(2x - z) with D = I - β∇R, which is
  z + β(F(2x - z) - x) for F = I - ∇R, the prox of a convex φ (∇R is cocoercive). T is
  β/2-averaged and x* = prox_τf(z*) minimises τ·f + φ: φ keeps R's ℓ1-like slope but only
  a (1 - w²)-narrower quadratic zone (w the filter response), so unlike HQS's τ·f + β·R the
  solution is not Huber-smoothed where the filters are tight. The iterate is not an image, so
  nothing is clamped in T; the estimate is x clamped to [0, 1].

Each scheme is a small ``Splitting`` class (``ForwardBackward``, ``HalfQuadraticSplitting``,
``DouglasRachford``), looked up once in ``SPLITTINGS`` by ``scheme``.

Denoisers (``operator``):

- ``operator="pnp_lipschitz"``: D averaged with a spectrally normalised (1-Lipschitz) CNN,
  so the data step (gradient step with τ < 2/L, or the prox), D and the clamp are all
  nonexpansive and so is T (BMO's assumption);
- ``operator="pnp_convex"``: D = I - β∇R with R a learned convex ridge regularizer
  (``ConvexRidgeDenoiser``, ``width`` filters of 7×7 in isotropic pairs) and a learned step
  β ∈ (0, 2) (starting at 1.9), averaged, started at isotropic Huber-TV with weight 0.1·noise;
  with ``hqs`` or ``drs`` the fixed point solves a learned variational problem (τ·f + β·R or
  τ·f + φ), so iterating past K converges instead of drifting. ``adaptive=True`` scales the
  thresholds per pixel and filter pair by a ``ThresholdMap`` (a CNN) of the Wiener estimate:
  the map depends on y only, so R stays convex in the iterate and T averaged; it starts at 1
  (the unweighted model) and learns at ``map_lr`` (0.3) times the outer learning rate;
- ``operator="pnp_free"``: D = I - R with R an unconstrained CNN (what ENA unrolls).

Data: scikit-image's grayscale images (``workers.data``): training on random patches with a
fresh noise draw each step, validation on chelsea, test on camera / astronaut / coffee, all
blurred with the same seeded kernel (Gaussian or motion) and noise of ``noise`` times the
dynamic range. ℓ = ½‖x̂ - x‖² per image, x̂ the estimate (``estimate``: the iterate, or drs's read-out);
metrics ``psnr`` and ``ssim`` (scikit-image) of x̂.

The arguments, their defaults and their checks: ``DeconvolutionArgs`` (``Deconvolution.Args``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from workers.baselines import wiener
from workers.data import random_patches, split_images, training_images
from workers.metrics import psnr, ssim
from workers.models import ConvexRidgeDenoiser, LipschitzDenoiser, ResidualDenoiser, ThresholdMap
from workers.models.denoisers import CONVEX_BETA
from workers.checks import (CheckError, check_at_most, check_bool, check_choice, check_int, check_positive_ints, check_real,
                            is_int, is_real)
from workers.data.images import MIN_SIZE, check_image
from workers.physics import Blur, gaussian_kernel, motion_kernel
from workers.physics.blur import BOUNDARIES
from workers.problem import Problem

OPERATORS = ("pnp_lipschitz", "pnp_convex", "pnp_free")
NONEXPANSIVE = ("pnp_lipschitz", "pnp_convex")
KERNELS = ("gaussian", "motion")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
MAX_SEED = 2**53  # seed·1000 + 3 stays a torch seed (< 2**64)
# The threshold map's learning rate as a multiple of the outer one: at 3% noise (drs, K=32, 6 minutes,
# Adam 5e-3) the adaptive model scored 26.57 dB at 0.3x, 26.53 at 0.1x and collapsed to 24.81 at 3x;
# at 1x, 26.41 (an earlier prototype of the same map).
MAP_LR = 0.3


@dataclass
class ImageBatch:
    """Observations ``y``, ground truth ``x`` (both (B, 1, H, W); ``x`` is None for a user's images) and the
    image names."""

    y: Tensor
    x: Tensor | None
    names: tuple[str, ...] = ()
    adjoint_y: Tensor | None = None  # Aᵀy, computed once per batch by the first data step that needs it
    threshold_scales: dict = field(default_factory=dict)  # the adaptive model's map, cached per batch (``Deconvolution.threshold_scale``)


# splitting schemes ---------------------------------------------------------------------


class Splitting:
    """What a splitting scheme (``scheme``) decides in T: how τ is parametrised, the data step, how the
    data step and the denoiser combine, and how the image is read out of the iterate.

    This base is the image-iterate form T(u) = Proj_[0,1](D(data step(u))), the estimate u itself.
    A splitting holds no state: τ's parameter ``step_logit`` and the denoiser stay on the problem, so
    its ``state_dict`` has the same keys whatever the scheme.
    """

    #: τ·L must lie in (0, max_step); None: any τ·L > 0.
    max_step: float | None = None
    #: The data term by its prox, solved by FFT (circular boundary only).
    prox = False
    #: The operators the scheme works with, and why when that is not all of them.
    operators = OPERATORS
    operators_reason = ""

    def default_step(self, operator: str) -> float:
        """τ·L when the ``step`` argument is None."""
        return 1.0

    def step_logit(self, step: float) -> float:
        """The initial value of ``step_logit`` for τ·L = ``step``."""
        raise NotImplementedError

    def step_size(self, logit: Tensor, L: float) -> Tensor:
        """τ from its parameter ``logit``."""
        raise NotImplementedError

    def data_step(self, blur: Blur, u: Tensor, batch: ImageBatch, tau: Tensor) -> Tensor:
        """The data-fidelity half of T for f = ½‖Au - y‖²."""
        raise NotImplementedError

    def prior_weight(self, weight: float) -> float:
        """The Huber-TV weight the convex denoiser's βR starts at, so that the fixed point's regularizer
        starts as Huber-TV of weight ``weight``."""
        return weight

    def combine(self, u: Tensor, x: Tensor, denoise: Callable[[Tensor], Tensor], denoiser: nn.Module) -> Tensor:
        """T(u) from the iterate ``u`` and its data step ``x``: the denoised x, projected."""
        return self.project(denoise(x))

    def project(self, u: Tensor) -> Tensor:
        """The box [0, 1]: the iterate is the image."""
        return u.clamp(0.0, 1.0)

    def estimate(self, problem: Deconvolution, u: Tensor, batch: ImageBatch) -> Tensor:
        """The image: the iterate itself."""
        return u

    def upper_grad(self, problem: Deconvolution, u: Tensor, batch: ImageBatch) -> Tensor:
        """∂_u ℓ per sample, in closed form: u - x."""
        return u - batch.x


class ForwardBackward(Splitting):
    """``"fb"``: a gradient step on f, τ = (2/L)·sigmoid(t) inside (0, 2/L), where the step is averaged."""

    max_step = 2.0

    def step_logit(self, step: float) -> float:
        return math.log(step / (2 - step))

    def step_size(self, logit: Tensor, L: float) -> Tensor:
        return 2.0 / L * torch.sigmoid(logit)

    def data_step(self, blur: Blur, u: Tensor, batch: ImageBatch, tau: Tensor) -> Tensor:
        return u - tau * blur.adjoint(blur(u) - batch.y)


class _ProxSplitting(Splitting):
    """The data step by the prox of τf, (AᵀA + I/τ)⁻¹(Aᵀy + u/τ), with τ = exp(t)/L: any τ > 0 keeps the
    prox firmly nonexpansive."""

    prox = True

    def step_logit(self, step: float) -> float:
        return math.log(step)

    def step_size(self, logit: Tensor, L: float) -> Tensor:
        return torch.exp(logit) / L

    def data_step(self, blur: Blur, u: Tensor, batch: ImageBatch, tau: Tensor) -> Tensor:
        if batch.adjoint_y is None:
            batch.adjoint_y = blur.adjoint(batch.y)
        return blur.normal_solve(batch.adjoint_y + u / tau, 1.0 / tau)


class HalfQuadraticSplitting(_ProxSplitting):
    """``"hqs"``: T = Proj ∘ D ∘ prox_τf. The convex model's step starts large (τL = 10: its R then weighs
    like TV)."""

    def default_step(self, operator: str) -> float:
        return 10.0 if operator == "pnp_convex" else 1.0


class DouglasRachford(_ProxSplitting):
    """``"drs"``: relaxed Douglas–Rachford on z, x = prox_τf(z), T(z) = (2 - β)(z - x) + D(2x - z). The
    iterate is not an image: nothing is projected, the estimate is x clamped, and ℓ's gradient goes
    through the read-out (autograd)."""

    operators = ("pnp_convex",)
    operators_reason = "its reflection is nonexpansive only for D = I - β∇R with R convex"

    def prior_weight(self, weight: float) -> float:
        return weight * CONVEX_BETA  # the fixed point's regularizer is φ ≈ R, not βR

    def combine(self, u: Tensor, x: Tensor, denoise: Callable[[Tensor], Tensor], denoiser: nn.Module) -> Tensor:
        return (2 - denoiser.step().to(u.dtype)) * (u - x) + denoise(2 * x - u)

    def project(self, u: Tensor) -> Tensor:
        return u

    def estimate(self, problem: Deconvolution, u: Tensor, batch: ImageBatch) -> Tensor:
        return problem.data_step(u, batch).clamp(0.0, 1.0)

    def upper_grad(self, problem: Deconvolution, u: Tensor, batch: ImageBatch) -> Tensor:
        return Problem.upper_grad(problem, u, batch)


SPLITTINGS: dict[str, type[Splitting]] = {"fb": ForwardBackward, "hqs": HalfQuadraticSplitting, "drs": DouglasRachford}
SCHEMES = tuple(SPLITTINGS)


@dataclass(frozen=True)
class DeconvolutionArgs:
    """The arguments of ``Deconvolution`` (its ``Args``), checked when made: a ``CheckError`` names the argument
    (a rule between two arguments names the one it asks to change, and both in ``fields``)."""

    kernel: str = "gaussian"  # one of KERNELS
    kernel_size: int = 25  # odd, <= patch
    blur_sigma: float = 1.6  # the Gaussian kernel's width
    noise: float = 0.01  # times the dynamic range, in [0, 1)
    size: int = 128  # the images' side, >= MIN_SIZE
    patch: int = 48  # the training patches' side, <= size
    batch_size: int = 8
    operator: str = "pnp_lipschitz"  # one of OPERATORS
    scheme: str = "fb"  # one of SCHEMES
    width: int = 24  # the denoiser's channels (even for pnp_convex: its filters come in pairs)
    depth: int = 5  # the CNN denoisers' convolutions
    step: float | None = None  # τ·L (None: the scheme's default)
    boundary: str = "circular"  # the blur's boundary, one of BOUNDARIES (circular for the prox schemes)
    adaptive: bool = False  # pnp_convex's thresholds weighted by a ThresholdMap
    map_lr: float | None = None  # the threshold map's learning rate, times the outer one (None: MAP_LR; adaptive only)
    seed: int = 0
    dtype: str = "float32"  # "float32" | "float64"

    def __post_init__(self):
        check_choice("kernel", self.kernel, KERNELS)
        check_choice("operator", self.operator, OPERATORS)
        check_choice("scheme", self.scheme, SCHEMES)
        check_choice("boundary", self.boundary, BOUNDARIES)
        splitting = SPLITTINGS[self.scheme]
        if splitting.prox and self.boundary != "circular":
            raise CheckError("boundary", f"'circular' for scheme={self.scheme!r} (its prox is solved by FFT)", self.boundary,
                             also=("scheme",))
        if self.operator not in splitting.operators:
            needs = " or ".join(repr(name) for name in splitting.operators)
            raise CheckError("operator", f"{needs} for scheme={self.scheme!r} ({splitting.operators_reason})", self.operator,
                             also=("scheme",))
        check_bool("adaptive", self.adaptive)
        if self.adaptive and self.operator != "pnp_convex":
            raise CheckError("operator", "'pnp_convex' for adaptive=true (it weights the convex regularizer's thresholds)",
                             self.operator, also=("adaptive",))
        if self.map_lr is not None:
            if not self.adaptive:
                raise CheckError("map_lr", "no value without adaptive=true (it is the threshold map's learning rate)",
                                 self.map_lr, also=("adaptive",))
            if not (is_real(self.map_lr) and self.map_lr > 0):
                raise CheckError("map_lr", "a finite number > 0 (a multiple of the outer learning rate)", self.map_lr)
        check_choice("dtype", self.dtype, DTYPES)
        check_real("noise", self.noise, 0, 1, high_open=True)
        if self.step is not None:
            if splitting.max_step is not None:
                if not (is_real(self.step) and 0 < self.step < splitting.max_step):
                    raise CheckError("step", f"τ·L in (0, {splitting.max_step:g}) for scheme={self.scheme!r}", self.step,
                                     also=("scheme",))
            elif not (is_real(self.step) and self.step > 0):
                raise CheckError("step", "τ·L > 0", self.step)
        check_positive_ints(kernel_size=self.kernel_size, patch=self.patch, batch_size=self.batch_size)
        check_int("size", self.size, minimum=MIN_SIZE)  # the images' smallest side
        check_at_most("kernel_size", self.kernel_size, "patch", self.patch)
        check_at_most("patch", self.patch, "size", self.size)
        if self.kernel == "motion" and (self.kernel_size < 3 or self.kernel_size % 2 == 0):
            raise CheckError("kernel_size", "an odd int >= 3 for kernel='motion'", self.kernel_size, also=("kernel",))
        if self.kernel_size % 2 == 0:
            raise CheckError("kernel_size", "an odd int", self.kernel_size)
        if self.kernel == "gaussian":
            check_real("blur_sigma", self.blur_sigma, 0, low_open=True)
        if self.operator == "pnp_convex":
            if not (is_int(self.width) and self.width >= 2 and self.width % 2 == 0):
                raise CheckError("width", "an even int >= 2 for operator='pnp_convex' (its filters come in pairs)", self.width,
                                 also=("operator",))
        else:
            check_int("width", self.width, minimum=1)
            check_int("depth", self.depth, minimum=2 if self.operator == "pnp_lipschitz" else 1)
        check_int("seed", self.seed, 0, MAX_SEED)


class Deconvolution(Problem):
    """Non-blind deconvolution with a learned PnP splitting step (fb, hqs or drs)."""

    upper_loss_needs_truth = True
    observation_kind = "image"
    Args = DeconvolutionArgs

    def __init__(
        self,
        kernel: str = "gaussian",
        kernel_size: int = 25,
        blur_sigma: float = 1.6,
        noise: float = 0.01,
        size: int = 128,
        patch: int = 48,
        batch_size: int = 8,
        operator: str = "pnp_lipschitz",
        scheme: str = "fb",
        width: int = 24,
        depth: int = 5,
        step: float | None = None,
        boundary: str = "circular",
        adaptive: bool = False,
        map_lr: float | None = None,
        seed: int = 0,
        dtype: str = "float32",
    ):
        super().__init__()
        self.args = DeconvolutionArgs(kernel=kernel, kernel_size=kernel_size, blur_sigma=blur_sigma, noise=noise, size=size,
                                      patch=patch, batch_size=batch_size, operator=operator, scheme=scheme, width=width,
                                      depth=depth, step=step, boundary=boundary, adaptive=adaptive, map_lr=map_lr, seed=seed,
                                      dtype=dtype)
        splitting = SPLITTINGS[scheme]()
        if map_lr is None:
            map_lr = MAP_LR
        if step is None:  # τ·L
            step = splitting.default_step(operator)
        dt = DTYPES[dtype]
        k = gaussian_kernel(kernel_size, blur_sigma) if kernel == "gaussian" else motion_kernel(kernel_size, seed=seed)
        self.blur = Blur(k.to(dt), boundary=boundary)
        shape = f"sigma {blur_sigma:g}" if kernel == "gaussian" else f"seed {seed}"
        self._degradation = f"{kernel} blur {kernel_size}x{kernel_size} ({shape}, {boundary} boundary), noise {100 * noise:g}%"
        self.noise, self.size, self.patch, self.batch_size, self.seed = float(noise), size, patch, batch_size, seed
        self.operator_name, self.scheme, self.splitting = operator, scheme, splitting
        self.nonexpansive = operator in NONEXPANSIVE
        self.L = float(self.blur.lipschitz())
        self.step_logit = nn.Parameter(torch.tensor(splitting.step_logit(step), dtype=dt))
        if operator == "pnp_lipschitz":
            self.denoiser = LipschitzDenoiser(width=width, depth=depth, seed=seed).to(dt)
        elif operator == "pnp_convex":
            # The regularizer of the fixed point's problem (βR for hqs and fb, φ ≈ R beyond its quadratic
            # zone for drs) over τ starts as isotropic Huber-TV of weight λ = 0.1·noise
            weight = splitting.prior_weight(0.1 * max(self.noise, 1e-3) * step / self.L)
            self.denoiser = ConvexRidgeDenoiser(channels=width, kernel=7, tv_weight=weight, seed=seed, beta=CONVEX_BETA).to(dt)
        else:
            self.denoiser = ResidualDenoiser(width=width, depth=depth, seed=seed).to(dt)
        # adaptive (pnp_convex only): one threshold scale per filter pair and pixel, from the Wiener estimate
        self.threshold_map = ThresholdMap(width // 2, seed=seed).to(dt) if adaptive else None
        self.map_lr = float(map_lr)
        self._train_images = training_images(size, dt)
        self._fixed = {split: self._observe_split(split, dt) for split in ("val", "test")}

    # data -----------------------------------------------------------------------------

    def _observe(self, x: Tensor, gen: torch.Generator) -> Tensor:
        y = self.blur(x)
        return y + self.noise * torch.randn(y.shape, generator=gen, dtype=y.dtype)

    def _observe_split(self, split: str, dt) -> list[ImageBatch]:
        gen = torch.Generator().manual_seed(self.seed * 1000 + (2 if split == "val" else 3))
        return [ImageBatch(self._observe(x, gen), x, (name,)) for name, x in split_images(split, self.size, dt)]

    def batches(self, split: str) -> Iterator[ImageBatch]:
        device = self.device
        if split == "train":
            gen = torch.Generator().manual_seed(self.seed * 1000 + 1)
            while True:
                with torch.no_grad():
                    x = random_patches(self._train_images, self.batch_size, self.patch, gen)
                    y = self._observe(x, gen)
                yield ImageBatch(y.to(device), x.to(device))
        elif split in self._fixed:
            for b in self._fixed[split]:
                yield ImageBatch(b.y.to(device), b.x.to(device), b.names)
        else:
            raise CheckError("split", "one of train, val, test", split)

    def observation_batch(self, y: Tensor) -> ImageBatch:
        """Blurred, noisy grayscale images ``y`` (B, 1, H, W) in [0, 1], any size the kernel and filters fit in."""
        check_image("y", y, "(grayscale images)")
        side = max(self.blur.kernel.shape[-1], 7 if isinstance(self.denoiser, ConvexRidgeDenoiser) else 1)
        if min(y.shape[-2:]) < side:
            raise CheckError("y", f"images of at least {side}x{side} pixels (the blur kernel and the denoiser's filters must "
                                  "fit), as (B, 1, H, W)", tuple(y.shape))
        return ImageBatch(y, None)

    def degradation(self) -> str:
        return self._degradation

    # the fixed-point problem ----------------------------------------------------------------

    def step_size(self) -> Tensor:
        """τ: (2/L)·sigmoid(t) for fb (inside (0, 2/L), where the gradient step is averaged);
        exp(t)/L for hqs and drs (any τ > 0 keeps the prox firmly nonexpansive)."""
        return self.splitting.step_size(self.step_logit, self.L)

    def data_step(self, u: Tensor, batch: ImageBatch) -> Tensor:
        """The data-fidelity half of T: a gradient step (fb) or the prox of τ·½‖Au - y‖² (hqs, drs)."""
        return self.splitting.data_step(self.blur, u, batch, self.step_size())

    def init(self, batch: ImageBatch) -> Tensor:
        """The Wiener estimate (regularization 100·noise², at least 1e-3), clamped: a cheap, good start
        (the observation itself for the zero boundary, where Wiener has no closed form)."""
        if self.blur.boundary != "circular":
            return batch.y.clamp(0.0, 1.0)
        return wiener(batch.y, self.blur, max(1e-3, 100.0 * self.noise**2)).clamp(0.0, 1.0)

    def threshold_scale(self, batch: ImageBatch) -> Tensor | None:
        """The adaptive model's pixelwise threshold scales for ``batch`` (None when not adaptive): the
        threshold map of the batch's Wiener estimate (``init``, the pilot).

        Computed once per batch and kept on it, separately with and without autograd (the taped
        steps need the map on the tape, the others not), and computed again after the map's
        parameters change (an optimizer step, loading averaged weights)."""
        if self.threshold_map is None:
            return None
        # _version counts in-place updates of a tensor (optimizer steps, copy_); data_ptr catches a new tensor
        weights = tuple((p.data_ptr(), p._version) for p in self.threshold_map.parameters())
        taped = torch.is_grad_enabled()
        cached = batch.threshold_scales.get(taped)
        if cached is None or cached[0] != weights:
            with torch.no_grad():
                pilot = self.init(batch)
            cached = batch.threshold_scales[taped] = (weights, self.threshold_map(pilot))
        return cached[1]

    def operator(self, u: Tensor, batch: ImageBatch, k: int) -> Tensor:
        x = self.data_step(u, batch)
        denoise = self.denoiser if self.threshold_map is None else lambda v: self.denoiser(v, self.threshold_scale(batch))
        return self.splitting.combine(u, x, denoise, self.denoiser)

    def project(self, u: Tensor, batch: ImageBatch) -> Tensor:
        """The box [0, 1] (fb, hqs: the iterate is the image); nothing for drs (the iterate is z)."""
        return self.splitting.project(u)

    def estimate(self, u: Tensor, batch: ImageBatch) -> Tensor:
        """The image: the iterate itself (fb, hqs), or prox_τf(z) clamped to [0, 1] (drs)."""
        return self.splitting.estimate(self, u, batch)

    def upper_loss(self, u: Tensor, batch: ImageBatch) -> Tensor:
        return 0.5 * ((self.estimate(u, batch) - batch.x) ** 2).flatten(1).sum(1).mean()

    def upper_grad(self, u: Tensor, batch: ImageBatch) -> Tensor:
        return self.splitting.upper_grad(self, u, batch)

    def metrics(self, u: Tensor, batch: ImageBatch) -> dict[str, float]:
        with torch.no_grad():  # drs reads the image out through τ, a parameter
            x = self.estimate(u.detach(), batch)
        return {"psnr": float(psnr(x, batch.x).mean()), "ssim": sum(ssim(x, batch.x)) / x.shape[0]}

    def lr_scale(self, name: str) -> float:
        """``map_lr`` for the threshold map's weights, 1 for the rest."""
        return self.map_lr if name.startswith("threshold_map.") else 1.0

    def learned_values(self) -> dict[str, float]:
        """The refined step as τ·L (the ``step`` argument's scale), and for ``pnp_convex`` the
        denoiser's gradient step β."""
        out = {"step": float(self.step_size().detach()) * self.L}
        if isinstance(self.denoiser, ConvexRidgeDenoiser):
            out["beta"] = float(self.denoiser.step().detach())
        return out

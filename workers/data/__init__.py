"""Data the tasks use: scikit-image's bundled images with fixed splits, and patch sampling."""

from workers.data.images import SPLITS, load_image, random_patches, split_images, training_images

__all__ = ["SPLITS", "load_image", "random_patches", "split_images", "training_images"]

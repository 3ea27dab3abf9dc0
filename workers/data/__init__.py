"""Data the tasks use: scikit-image's bundled images with fixed splits, patch sampling, and synthetic rain."""

from workers.data.images import SPLITS, load_image, random_patches, split_images, training_images
from workers.data.rain import add_rain, rain_layer

__all__ = ["SPLITS", "add_rain", "load_image", "rain_layer", "random_patches", "split_images", "training_images"]

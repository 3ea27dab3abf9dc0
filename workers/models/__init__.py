"""Learned networks the tasks train: CNN denoisers (Lipschitz, convex ridge, free) and the threshold map."""

from workers.models.denoisers import ConvexRidgeDenoiser, LipschitzDenoiser, ResidualDenoiser, ThresholdMap

__all__ = ["ConvexRidgeDenoiser", "LipschitzDenoiser", "ResidualDenoiser", "ThresholdMap"]

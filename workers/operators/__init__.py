"""Building blocks of fixed-point operators: proximal maps, blur physics, TV, rain synthesis, denoisers."""

from workers.operators.blur import Blur, add_noise, gaussian_kernel, motion_kernel, wiener
from workers.operators.denoisers import ConvexRidgeDenoiser, LipschitzDenoiser, ResidualDenoiser, ThresholdMap
from workers.operators.prox import soft_threshold
from workers.operators.rain import add_rain, directional_derain, rain_layer
from workers.operators.tv import tv_deconvolve

__all__ = [
    "Blur",
    "ConvexRidgeDenoiser",
    "LipschitzDenoiser",
    "ResidualDenoiser",
    "ThresholdMap",
    "add_noise",
    "add_rain",
    "directional_derain",
    "gaussian_kernel",
    "motion_kernel",
    "rain_layer",
    "soft_threshold",
    "tv_deconvolve",
    "wiener",
]

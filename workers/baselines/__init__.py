"""Classical methods the learned solvers are compared with: Wiener and TV deconvolution, a directional de-raining filter."""

from workers.baselines.rain_filter import directional_derain, streak_angle
from workers.baselines.tv import tv_deconvolve, tv_objective
from workers.baselines.wiener_filter import wiener

__all__ = ["directional_derain", "streak_angle", "tv_deconvolve", "tv_objective", "wiener"]

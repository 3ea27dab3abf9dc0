"""The measurement physics y = A x + n: blur kernels, the blur operator A (FFT) with its adjoint, and noise."""

from workers.physics.blur import Blur, gaussian_kernel, motion_kernel
from workers.physics.noise import add_noise

__all__ = ["Blur", "add_noise", "gaussian_kernel", "motion_kernel"]

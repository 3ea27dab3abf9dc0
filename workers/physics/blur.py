"""The blur forward model of image deconvolution: kernels, and the blur operator A with its adjoint.

Images are tensors of shape (B, C, H, W) with values in [0, 1]. ``Blur`` is a true
convolution y = k * x with the kernel centred on its middle pixel, so a symmetric
kernel causes no spatial shift. Both boundaries are computed by FFT:

- ``"circular"``: periodic convolution on the H x W grid; AᵀA is diagonal in the
  Fourier domain, so (AᵀA + reg·I)⁻¹ has a closed form (``normal_solve``).
- ``"zero"``: the image is zero-padded by the kernel radius, convolved on the padded
  grid and cropped back, i.e. ``conv2d(x, flipped kernel, padding=radius)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

BOUNDARIES = ("circular", "zero")


def gaussian_kernel(size: int, sigma: float, dtype: torch.dtype = torch.float64) -> Tensor:
    """Isotropic Gaussian kernel of shape (size, size), size odd, summing to 1."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1 or size % 2 == 0:
        raise ValueError(f"gaussian_kernel: size must be an odd positive int, got size={size!r}")
    if not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"gaussian_kernel: sigma must be a finite number > 0, got sigma={sigma!r}")
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(t**2) / (2.0 * sigma**2))
    k = torch.outer(g, g)
    return (k / k.sum()).to(dtype)


def motion_kernel(size: int, seed: int, length: float | None = None, dtype: torch.dtype = torch.float64) -> Tensor:
    """Seeded random motion-blur kernel of shape (size, size), size odd >= 3, summing to 1.

    A camera path of the given ``length`` (pixels, in [0, size - 1]; drawn uniformly
    in [(size - 1) / 2, size - 1] from the seed when None) is traced at constant speed
    with a smooth random heading (a random direction plus three random low-frequency
    turns), centred on the kernel's middle pixel by its bounding box, sampled every
    1/8 pixel and rasterised by bilinear splatting. The same seed gives the same kernel.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 3 or size % 2 == 0:
        raise ValueError(f"motion_kernel: size must be an odd int >= 3, got size={size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"motion_kernel: seed must be an int, got seed={seed!r}")
    gen = torch.Generator().manual_seed(seed)
    uniform = lambda *shape: torch.rand(shape, generator=gen, dtype=torch.float64)  # noqa: E731
    drawn_length = (size - 1) * (0.5 + 0.5 * float(uniform(1)))  # always drawn: the path's shape ignores `length`
    if length is None:
        length = drawn_length
    if not isinstance(length, (int, float)) or not 0 <= length <= size - 1:
        raise ValueError(f"motion_kernel: length must be a number in [0, size - 1] = [0, {size - 1}], got length={length!r}")

    n = max(2, math.ceil(8 * length) + 1)  # path samples, at most 1/8 pixel apart
    s = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    mid = (s[1:] + s[:-1]) / 2  # heading of each segment, taken at its middle
    freqs = torch.arange(1, 4, dtype=torch.float64)
    amplitudes = torch.randn(3, generator=gen, dtype=torch.float64) / freqs  # radians; smoother at higher freq
    phases = 2 * math.pi * uniform(3)
    heading = 2 * math.pi * uniform(1) + (amplitudes * torch.sin(math.pi * freqs * mid[:, None] + phases)).sum(-1)
    steps = torch.stack([torch.sin(heading), torch.cos(heading)], dim=-1) * (length / (n - 1))  # (row, col)
    path = torch.cat([torch.zeros(1, 2, dtype=torch.float64), torch.cumsum(steps, dim=0)])
    # The path is no longer than `length`, so its bounding box fits in [0, size - 1]².
    path = path - (path.min(0).values + path.max(0).values) / 2 + (size - 1) / 2
    path = path.clamp(0.0, size - 1.0)  # round-off only

    corner = path.floor().clamp(max=size - 2)  # top-left pixel of each sample's 2x2 splat
    frac = path - corner
    r, c = corner[:, 0].long(), corner[:, 1].long()
    fr, fc = frac[:, 0], frac[:, 1]
    k = torch.zeros(size * size, dtype=torch.float64)
    for dr, dc, w in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc), (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
        k.index_add_(0, (r + dr) * size + (c + dc), w)
    k = k.reshape(size, size)
    return (k / k.sum()).to(dtype)


class Blur(nn.Module):
    """The blur operator A: x ↦ k * x ("same" size), with its exact adjoint Aᵀ.

    ``kernel`` is a 2-D tensor with odd sides, centred on its middle pixel; it is kept
    as the buffer ``kernel`` and applied to every channel. Kernel FFTs are cached per
    grid size, device and dtype (the cache is dropped when the kernel tensor changes).
    Inputs of any floating dtype and device work; the kernel is cast to match them.
    """

    def __init__(self, kernel: Tensor, boundary: str = "circular"):
        super().__init__()
        if not isinstance(kernel, Tensor) or kernel.ndim != 2 or not kernel.is_floating_point():
            got = f"shape {tuple(kernel.shape)} dtype {kernel.dtype}" if isinstance(kernel, Tensor) else repr(kernel)
            raise ValueError(f"Blur: kernel must be a 2-D floating tensor, got {got}")
        if kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
            raise ValueError(f"Blur: kernel sides must be odd, got kernel of shape {tuple(kernel.shape)}")
        if not bool(torch.isfinite(kernel).all()):
            raise ValueError("Blur: kernel must be finite, got a kernel with inf or nan entries")
        if boundary not in BOUNDARIES:
            raise ValueError(f"Blur: boundary must be one of {BOUNDARIES}, got boundary={boundary!r}")
        self.boundary = boundary
        self.register_buffer("kernel", kernel.detach().clone())
        self._fft_cache: dict[tuple, Tensor] = {}
        self._fft_cache_kernel: tuple | None = None

    @property
    def radius(self) -> tuple[int, int]:
        """Kernel radius (rows, cols): the zero boundary pads the image by this much."""
        return self.kernel.shape[0] // 2, self.kernel.shape[1] // 2

    def extra_repr(self) -> str:
        return f"kernel={tuple(self.kernel.shape)}, boundary={self.boundary!r}"

    def _kernel_fft(self, h: int, w: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """rfft2 of the kernel zero-padded to (h, w) and rolled so its centre sits at (0, 0)."""
        state = (self.kernel.data_ptr(), self.kernel._version)
        if state != self._fft_cache_kernel:
            self._fft_cache.clear()
            self._fft_cache_kernel = state
        key = (h, w, device, dtype)
        if key not in self._fft_cache:
            k = self.kernel.detach().to(device=device, dtype=dtype)
            kh, kw = k.shape
            padded = torch.zeros(h, w, device=device, dtype=dtype)
            padded[:kh, :kw] = k
            padded = torch.roll(padded, shifts=(-(kh // 2), -(kw // 2)), dims=(0, 1))  # ifftshift-style centring
            self._fft_cache[key] = torch.fft.rfft2(padded)
        return self._fft_cache[key]

    def _check(self, x: Tensor, name: str) -> None:
        if not isinstance(x, Tensor) or x.ndim != 4 or not x.is_floating_point():
            got = f"shape {tuple(x.shape)} dtype {x.dtype}" if isinstance(x, Tensor) else repr(x)
            raise ValueError(f"Blur.{name}: input must be a floating tensor of shape (B, C, H, W), got {got}")
        kh, kw = self.kernel.shape
        if self.boundary == "circular" and (kh > x.shape[-2] or kw > x.shape[-1]):
            raise ValueError(
                f"Blur.{name}: circular boundary needs the kernel ({kh}x{kw}) no larger than "
                f"the image ({x.shape[-2]}x{x.shape[-1]})"
            )

    def _filter(self, x: Tensor, conjugate: bool) -> Tensor:
        """Multiply by K̂ (convolution) or its conjugate (correlation) on the operator's grid."""
        h, w = x.shape[-2:]
        if self.boundary == "zero":
            rh, rw = self.radius
            grid = (h + 2 * rh, w + 2 * rw)
            x = nn.functional.pad(x, (rw, rw, rh, rh))  # zero padding
        else:
            grid = (h, w)
        kf = self._kernel_fft(*grid, x.device, x.dtype)
        out = torch.fft.irfft2(torch.fft.rfft2(x) * (kf.conj() if conjugate else kf), s=grid)
        if self.boundary == "zero":
            out = out[..., rh : rh + h, rw : rw + w]
        return out

    def forward(self, x: Tensor) -> Tensor:
        """Return A x = k * x, the same shape as ``x``."""
        self._check(x, "forward")
        return self._filter(x, conjugate=False)

    def adjoint(self, y: Tensor) -> Tensor:
        """Return Aᵀ y: correlation with the kernel under the same boundary."""
        self._check(y, "adjoint")
        return self._filter(y, conjugate=True)

    def normal_solve(self, rhs: Tensor, reg: Tensor | float) -> Tensor:
        """Solve (AᵀA + reg·I) x = rhs in the Fourier domain (circular boundary only).

        ``reg`` is a number > 0 or a positive tensor broadcasting to (B, C, 1, 1).
        """
        if self.boundary != "circular":
            raise ValueError(f"Blur.normal_solve: needs boundary='circular', got boundary={self.boundary!r}")
        if not isinstance(reg, Tensor) and (not isinstance(reg, (int, float)) or not math.isfinite(reg) or reg <= 0):
            raise ValueError(f"Blur.normal_solve: reg must be a finite number > 0, got reg={reg!r}")
        self._check(rhs, "normal_solve")
        h, w = rhs.shape[-2:]
        kf = self._kernel_fft(h, w, rhs.device, rhs.dtype)
        return torch.fft.irfft2(torch.fft.rfft2(rhs) / (kf.abs() ** 2 + reg), s=(h, w))

    def lipschitz(self, shape: tuple[int, int] | None = None) -> float:
        """An upper bound of ‖A‖² = ‖AᵀA‖, the Lipschitz constant of ∇ ½‖Ax − y‖².

        With ``shape`` = (H, W): max |K̂|² on the operator's grid, which is ‖A‖² exactly
        for the circular boundary and a bound for the zero one (A is a crop of the
        circular blur on the padded grid). Without: ‖k‖₁², a bound for every image size
        and both boundaries (1 for a nonnegative kernel summing to 1).
        """
        if shape is None:
            return float(self.kernel.detach().abs().sum()) ** 2
        if len(shape) != 2 or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in shape):
            raise ValueError(f"Blur.lipschitz: shape must be (H, W) of positive ints, got shape={shape!r}")
        h, w = shape
        kh, kw = self.kernel.shape
        if self.boundary == "zero":
            h, w = h + 2 * (kh // 2), w + 2 * (kw // 2)
        elif kh > h or kw > w:
            raise ValueError(f"Blur.lipschitz: circular boundary needs the kernel ({kh}x{kw}) no larger than shape={shape!r}")
        kf = self._kernel_fft(h, w, self.kernel.device, self.kernel.dtype)
        return float((kf.abs() ** 2).max())

"""Per-trial figures, rendered inside the worker (PNG bytes) so the driver only stores them.

- ``convergence_png``: fixed-point residual against inner step k (with K marked), and the
  upper loss and validation metric against outer step t.
- ``restoration_png``: for image tasks, degraded input | restored | ground truth.
"""

from __future__ import annotations

import io

import numpy as np


def _figure(width_in: float, height_in: float):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt, plt.figure(figsize=(width_in, height_in), dpi=90)


def _png(plt, fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def convergence_png(
    residuals: list[float], K: int, history: list[dict[str, float]], metric: str
) -> bytes:
    """Residual vs inner step k; upper loss and ``val_<metric>`` vs outer step t (from ``history``)."""
    plt, fig = _figure(9.0, 3.0)
    ax1, ax2, ax3 = fig.subplots(1, 3)
    ks = np.arange(1, len(residuals) + 1)
    ax1.semilogy(ks, np.maximum(residuals, 1e-16))
    ax1.axvline(K, color="gray", linestyle="--", linewidth=1)
    ax1.set(xlabel="inner step k", ylabel="‖u - T(u)‖ / ‖u‖", title="fixed-point residual")
    steps = [h["step"] for h in history]
    ax2.plot(steps, [h["upper_loss"] for h in history])
    ax2.set(xlabel="outer step t", title="upper loss (train batch)")
    ax3.plot(steps, [h.get(f"val_{metric}", np.nan) for h in history])
    ax3.set(xlabel="outer step t", title=f"validation {metric}")
    fig.tight_layout()
    return _png(plt, fig)


def restoration_png(degraded: np.ndarray, restored: np.ndarray, truth: np.ndarray, title: str = "") -> bytes:
    """Three grayscale images side by side (each (H, W) in [0, 1])."""
    plt, fig = _figure(9.0, 3.3)
    for ax, image, name in zip(fig.subplots(1, 3), (degraded, restored, truth), ("input", "restored", "ground truth")):
        ax.imshow(np.clip(image, 0, 1), cmap="gray", vmin=0, vmax=1)
        ax.set_title(name)
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _png(plt, fig)

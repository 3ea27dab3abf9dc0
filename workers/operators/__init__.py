"""Building blocks of fixed-point operators: proximal maps (and, later, blur physics and denoisers)."""

from workers.operators.prox import soft_threshold

__all__ = ["soft_threshold"]

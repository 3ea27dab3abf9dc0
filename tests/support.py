"""Helpers shared by the tests: a free port, polling until something happens.

``free_port`` is ``cluster.local_cluster``'s (the cluster wrapper the tests and the benchmarks
share needs it too; benchmarks import nothing from ``tests``).
"""

from __future__ import annotations

import time

from cluster.local_cluster import free_port

__all__ = ["free_port", "wait_for"]


def wait_for(condition, timeout: float, interval: float = 0.5, what: str = "the condition"):
    """Poll ``condition()`` until it returns something truthy (returned) or ``timeout`` seconds pass (AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:g} s")
        time.sleep(interval)

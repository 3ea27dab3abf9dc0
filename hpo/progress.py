"""The live progress of a job on stdout: one line per finished trial, and a heartbeat while trials run."""

from __future__ import annotations

import time
from collections.abc import Callable

from optuna.trial import TrialState

from hpo.spec import JobSpec

PROGRESS_EVERY_S = 30.0


class Progress:
    """Live counts of the job printed as one line per event (and a heartbeat while trials run)."""

    def __init__(self, spec: JobSpec, total: int, out: Callable[[str], None]):
        self.spec, self.total, self.out = spec, total, out
        self.start = time.monotonic()
        self.running = 0
        self.counts = {TrialState.COMPLETE: 0, TrialState.PRUNED: 0, TrialState.FAIL: 0}
        self.best: tuple[float, int] | None = None
        self.last_print = self.start

    def started(self) -> None:
        self.running += 1

    def finished(self, number: int, state: TrialState, values: list[float] | None, note: str = "") -> None:
        self.running = max(0, self.running - 1)
        self.counts[state] += 1
        if state == TrialState.COMPLETE and values and not self.spec.multi_objective:
            better = (lambda a, b: a < b) if self.spec.objectives[0].mode == "min" else (lambda a, b: a > b)
            if self.best is None or better(values[0], self.best[0]):
                self.best = (values[0], number)
        shown = "" if values is None else " " + ", ".join(f"{o.metric}={v:.5g}" for o, v in zip(self.spec.objectives, values))
        self.out(f"trial {number} {state.name.lower()}{shown}{(' (' + note + ')') if note else ''}")
        self.line()

    def line(self) -> None:
        self.last_print = time.monotonic()
        c = self.counts
        finished = sum(c.values())
        best = ""
        if self.best is not None:
            best = f" | best {self.spec.objectives[0].metric}={self.best[0]:.5g} (trial {self.best[1]})"
        self.out(
            f"[{time.monotonic() - self.start:7.1f}s] {finished}/{self.total} finished: {c[TrialState.COMPLETE]} complete, "
            f"{c[TrialState.PRUNED]} pruned, {c[TrialState.FAIL]} failed; {self.running} running{best}"
        )

    def heartbeat(self) -> None:
        if time.monotonic() - self.last_print >= PROGRESS_EVERY_S:
            self.line()

"""Writes to the Optuna storage, in order, on a thread of their own, retried through short outages.

The searcher hands every write (an intermediate value, a user attribute, a trial's end) to a
``StorageWriter`` and returns at once, so Tune's loop, and with it the running trials, never waits
on the database. When a write fails because the storage is unreachable, the writer says so once,
retries it with backoff for up to ``window`` seconds, then goes on with the next one: every write is
done once, in the order it was handed over. An outage longer than the window stops the writer; the
driver then ends the job, leaving its trials RUNNING and resumable.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

import sqlalchemy.exc
from optuna.exceptions import StorageInternalError

OUTAGE_ERRORS = (StorageInternalError, sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)


def is_outage(error: BaseException) -> bool:
    """Whether ``error`` means the storage could not be reached (rather than a bad write)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OUTAGE_ERRORS) or isinstance(seen, sqlalchemy.exc.DBAPIError) and seen.connection_invalidated:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class StorageWriter:
    """A queue of storage writes, done one by one on a daemon thread, retried through outages of up to ``window`` s."""

    def __init__(self, storage: str, window: float, out: Callable[[str], None]):
        self.storage, self.window, self.out = storage, window, out
        self.failed: str | None = None  # set when an outage outlasted the window
        self.errors: list[str] = []  # writes that failed for another reason (reported, not retried)
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="hpo-storage-writer", daemon=True)
        self._thread.start()

    def submit(self, write: Callable[[], None]) -> None:
        """Do ``write()`` after the writes handed over before it (dropped once the writer has failed)."""
        if self.failed is None:
            self._queue.put(write)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every write handed over so far is done, the writer failed, or ``timeout`` s passed;
        return whether they are done."""
        done = threading.Event()
        self._queue.put(done.set)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not done.wait(0.1):
            if self.failed is not None or (deadline is not None and time.monotonic() > deadline):
                return False
        return True

    def _run(self) -> None:
        while True:
            write = self._queue.get()
            if self.failed is None:
                self._attempt(write)

    def _attempt(self, write: Callable[[], None]) -> None:
        down_since: float | None = None
        delay = 0.25
        while True:
            try:
                write()
            except Exception as e:  # noqa: BLE001 - sorted below: outages wait, anything else is reported
                if not is_outage(e):
                    self.errors.append(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                    self.out(f"warning: a write to {self.storage} failed: {self.errors[-1]}")
                    return
                now = time.monotonic()
                if down_since is None:
                    down_since = now
                    self.out(f"storage {self.storage} is unreachable: the trials go on, their results wait on the "
                             f"driver, and writes are retried for up to {self.window:g} s")
                if now - down_since >= self.window:
                    self.failed = (f"storage {self.storage} was unreachable for more than {self.window:g} s "
                                   f"(storage_retry_window): {str(e).splitlines()[0] if str(e) else type(e).__name__}")
                    return
                time.sleep(min(delay, max(0.0, self.window - (now - down_since))))
                delay = min(delay * 2, 5.0)
                continue
            if down_since is not None:
                self.out(f"storage {self.storage} is back after {time.monotonic() - down_since:.1f} s")
            return

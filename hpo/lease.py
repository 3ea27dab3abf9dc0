"""One live driver per study: a lease the running driver renews, kept in the study's user attributes.

A driver takes the lease before it touches a study's trials and renews it every third of its
length from a background thread; a clean exit gives it back. Another driver (``hpo run --resume``)
refuses a study whose lease is held and unexpired, and takes over one whose driver died (its lease
ran out). Times are the storage writer's wall clock: drivers on different hosts need clocks that
agree to within a fraction of the lease.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

import optuna

from hpo.errors import StorageError
from hpo.writer import is_outage

LEASE_ATTR = "bmo_hpo_driver_lease"


class Lease:
    """The lease of ``study`` held by this process for ``seconds`` at a time, renewed until ``release``."""

    def __init__(self, study: optuna.Study, seconds: float, out: Callable[[str], None] = print):
        self.study, self.seconds, self.out = study, seconds, out
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self, expires: float) -> dict:
        return {"token": self.token, "host": socket.gethostname(), "pid": os.getpid(), "expires": expires}

    def acquire(self) -> None:
        """Take the lease, or raise ``StorageError`` naming the live driver that holds it."""
        held = self.study.user_attrs.get(LEASE_ATTR)
        now = time.time()
        if held and held.get("token") != self.token and held.get("expires", 0) > now:
            raise StorageError(
                f"study {self.study.study_name!r} is being run by a live driver (pid {held.get('pid')} on "
                f"{held.get('host')}, lease renewed until {held['expires'] - now:.0f} s from now); "
                "stop that driver first, or wait for its lease to run out if it died"
            )
        if held and held.get("expires", 0) > 0 and held.get("token") != self.token:
            self.out(f"taking over study {self.study.study_name!r} from a driver whose lease ran out "
                     f"(pid {held.get('pid')} on {held.get('host')})")
        self.study.set_user_attr(LEASE_ATTR, self._record(now + self.seconds))
        self._thread = threading.Thread(target=self._renew, name="hpo-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                self.study.set_user_attr(LEASE_ATTR, self._record(time.time() + self.seconds))
            except Exception as e:  # noqa: BLE001 - the next renewal tries again
                if not is_outage(e):  # an outage is reported once, by the storage writer
                    self.out(f"warning: could not renew the driver's lease on study {self.study.study_name!r}: "
                             f"{str(e).splitlines()[0] if str(e) else type(e).__name__}")

    def release(self) -> None:
        """Stop renewing and give the lease back (a later driver takes the study at once)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.study.set_user_attr(LEASE_ATTR, self._record(0.0))
        except Exception:  # noqa: BLE001 - the storage is gone; the lease runs out by itself
            pass

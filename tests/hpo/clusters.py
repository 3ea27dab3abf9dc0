"""Real multi-node Ray clusters on this machine for the cluster tests and the scaling benchmark.

``LocalCluster`` runs ``cluster/local.sh`` (a head without CPUs and N worker nodes, each its own
``ray start --block`` with its own raylet, temp directory and process group) on free ports and in a
temp directory of its own, so it never meets the tests' session Ray, another engineer's Ray or
Redis on 6379. A driver joins it from a subprocess (a process holds one Ray connection, and the
test process already holds the session's).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LOCAL_SH = REPO / "cluster" / "local.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class LocalCluster:
    """``cluster/local.sh up`` with token authentication, on free ports, in its own temp directory."""

    def __init__(self, workers: int = 2, cpus: int = 1, gpus: int = 0, env: dict[str, str] | None = None):
        self.workers, self.cpus, self.gpus = workers, cpus, gpus
        # short: Ray's socket paths live under it (at most 107 bytes)
        self.tmp = Path(tempfile.mkdtemp(prefix="rh-", dir="/tmp"))
        self.port, self.dashboard_port, self.client_port = free_port(), free_port(), free_port()
        self.extra_env = dict(env or {})

    @property
    def address(self) -> str:
        """The GCS address a driver joins (``hpo run --address``)."""
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def env(self) -> dict[str, str]:
        """The environment of a process that talks to this cluster (token authentication on)."""
        return {**os.environ, "HPO_RAY_TMPDIR": str(self.tmp), "RAY_AUTH_MODE": "token", **self.extra_env}

    def _local_sh(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(LOCAL_SH), *args], env=self.env(), capture_output=True, text=True, timeout=timeout)

    def up(self) -> str:
        proc = self._local_sh(
            "up", "--workers", str(self.workers), "--cpus-per-worker", str(self.cpus), "--gpus-per-worker", str(self.gpus),
            "--port", str(self.port), "--dashboard-port", str(self.dashboard_port), "--client-port", str(self.client_port),
        )
        if proc.returncode != 0:
            self.down()
            raise RuntimeError(f"local.sh up failed: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc.stdout

    def worker_pid(self, i: int) -> int:
        return int((self.tmp / "local-cluster" / f"worker-{i}.pid").read_text())

    def kill_worker(self, i: int) -> None:
        """Kill worker node ``i`` at once (SIGKILL to its raylet, agents and trial processes), as if its machine died."""
        os.killpg(self.worker_pid(i), signal.SIGKILL)
        kill_processes_under(self.tmp / f"w{i}")  # any process of that node that left its process group

    def down(self) -> None:
        try:
            self._local_sh("down", timeout=120)
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        self.up()
        return self

    def __exit__(self, *exc) -> None:
        self.down()


def kill_processes_under(directory: Path) -> None:
    """SIGKILL every process whose command line names ``directory`` (a Ray node's temp dir)."""
    needle = str(directory).rstrip("/") + "/"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmd:
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


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

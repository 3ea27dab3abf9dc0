"""``cluster/local.sh`` from Python: a real multi-node Ray cluster on this machine, on free ports.

``LocalCluster`` runs ``local.sh`` (a head without CPUs and N worker nodes, each its own
``ray start --block`` with its own raylet, temp directory and process group) on free ports and in a
temp directory of its own, so it never meets another Ray on this machine (a test session's,
another engineer's) or Redis on 6379. A driver joins it from a subprocess (a process holds one Ray
connection). Used by the cluster tests (``tests/hpo``) and the scaling benchmark
(``benchmarks/scaling.py``), which import it as ``cluster.local_cluster`` from the repository root.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

LOCAL_SH = Path(__file__).resolve().parent / "local.sh"


def free_port() -> int:
    """A TCP port no socket on this machine is bound to now (on any address)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


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

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


class FakeAutoscalingCluster:
    """A head whose autoscaler adds worker nodes on this machine: Ray's fake multi-node provider.

    ``ray start --head --autoscaling-config`` with ``RAY_FAKE_CLUSTER=1``: the head runs Ray's real
    (v1) autoscaler, which launches the configured ``worker_types`` as extra Ray nodes on this
    machine when trials ask for their resources, the way a cloud cluster adds machines. The head
    has no CPUs. Everything runs in its own temp directory and process group, on free ports.
    (Ray's own ``AutoscalingCluster`` runs ``ray stop --force`` first, which would stop every Ray
    on the machine, hence this.)
    """

    def __init__(self, worker_types: dict[str, dict]):
        self.tmp = Path(tempfile.mkdtemp(prefix="rh-as-", dir="/tmp"))
        self.port, self.dashboard_port, self.client_port = free_port(), free_port(), free_port()
        self.config = {
            "cluster_name": "fake", "max_workers": sum(t.get("max_workers", 1) for t in worker_types.values()),
            "upscaling_speed": 1.0, "idle_timeout_minutes": 10,
            "provider": {"type": "fake_multinode", "gcs_address": self.address, "disable_launch_config_check": True,
                         "disable_node_updaters": True, "use_node_id_as_ip": True},
            "auth": {"ssh_user": "nobody"},
            "available_node_types": {
                "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
                **{name: {"node_config": {}, "min_workers": 0, **t} for name, t in worker_types.items()},
            },
            "head_node_type": "ray.head.default",
            "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
            "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
            "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
            "worker_start_ray_commands": [],
        }
        self.head: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_TMPDIR": str(self.tmp)}

    def up(self, timeout: float = 120) -> None:
        import json

        config = self.tmp / "autoscaler.json"
        config.write_text(json.dumps(self.config))
        log = open(self.tmp / "head.log", "w")  # noqa: SIM115 - the head writes to it until down()
        env = {**self.env(), "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_USAGE_STATS_ENABLED": "0",
               "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
        self.head = subprocess.Popen(
            ["ray", "start", "--head", "--block", f"--port={self.port}", "--num-cpus=0", "--num-gpus=0",
             f"--autoscaling-config={config}", f"--temp-dir={self.tmp}", "--dashboard-host=127.0.0.1",
             f"--dashboard-port={self.dashboard_port}", f"--ray-client-server-port={self.client_port}",
             "--dashboard-agent-listen-port=0", "--min-worker-port=0", "--max-worker-port=0", "--disable-usage-stats"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            wait_for(lambda: "Ray runtime started" in (self.tmp / "head.log").read_text() or self.head.poll() is not None,
                     timeout, what="the autoscaling head's start")
            if self.head.poll() is not None:
                raise RuntimeError(f"the autoscaling head exited: {(self.tmp / 'head.log').read_text()[-2000:]}")
        except BaseException:
            self.down()
            raise

    def down(self) -> None:
        if self.head is not None and self.head.poll() is None:
            os.killpg(self.head.pid, signal.SIGTERM)
            try:
                self.head.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.head.pid, signal.SIGKILL)
        kill_processes_under(self.tmp)  # the nodes the autoscaler added, should any be left
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> FakeAutoscalingCluster:
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

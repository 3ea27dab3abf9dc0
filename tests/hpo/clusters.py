"""A Ray cluster whose real autoscaler adds nodes on this machine, for the cluster tests.

``FakeAutoscalingCluster`` is Ray's fake multi-node provider behind a head of its own, on free
ports and in a temp directory of its own. ``cluster/local.sh``'s clusters (a head and N worker
nodes) are ``cluster.local_cluster.LocalCluster``, shared with the scaling benchmark.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from cluster.local_cluster import free_port, kill_processes_under
from tests.support import wait_for


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

"""The cluster configs: valid YAML, and every `ray start` flag and port they use is one Ray knows and pins."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"
CONFIGS = ["aws-gpu.yaml", "gcp-gpu.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob.yaml", "kuberay/networkpolicy.yaml"]
PINNED = {"port", "object-manager-port", "node-manager-port", "runtime-env-agent-port", "dashboard-agent-grpc-port",
          "dashboard-agent-listen-port", "metrics-export-port", "min-worker-port", "max-worker-port"}


@pytest.fixture(scope="module")
def ray_start_flags() -> set[str]:
    help_text = subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "start", "--help"], capture_output=True,
                               text=True, timeout=120).stdout
    return set(re.findall(r"--([a-z][a-z0-9-]+)", help_text))


def _start_flags(config) -> list[dict[str, str]]:
    """The flags of each `ray start` in a config: command strings (ray up) or rayStartParams (KubeRay)."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            if "rayStartParams" in node:
                found.append({str(k): str(v) for k, v in node["rayStartParams"].items()})
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
        elif isinstance(node, str) and "ray start" in node:
            found.append(dict(re.findall(r"--([a-z][a-z0-9-]+)(?:=(\S+))?", node.split("ray start", 1)[1])))

    walk(config)
    return found


@pytest.mark.parametrize("name", CONFIGS)
def test_cluster_configs_parse_and_use_flags_ray_knows(name, ray_start_flags):
    docs = list(yaml.safe_load_all((CLUSTER / name).read_text()))
    assert docs and all(d is not None for d in docs)
    for flags in _start_flags(docs):
        assert set(flags) <= ray_start_flags, set(flags) - ray_start_flags
        worker = "address" in flags or ("head" not in flags and "port" not in flags)  # KubeRay sets no head flag
        missing = PINNED - set(flags) - ({"port"} if worker else set())  # the GCS port is the head's
        assert not missing, f"{name}: unpinned {sorted(missing)}"

"""Ray's private names that bmo-hpo uses (``hpo.ray_private``) exist and still do what it relies on.

Their callers degrade quietly when one is gone (Ray would listen on every interface, an
autoscaler's node types would go unseen), so these fail loudly instead: run them first after an
upgrade of Ray.
"""

import importlib
import os
import subprocess
import sys

import pytest

from hpo.ray_private import PRIVATE_NAMES, autoscaler_v1_report, reported_cluster_config
from tests.hpo.conftest import REPO


@pytest.mark.parametrize(("module", "name"), PRIVATE_NAMES, ids=[f"{m}.{n}" for m, n in PRIVATE_NAMES])
def test_every_private_ray_name_used_exists(module, name):
    try:
        found = importlib.import_module(module)
    except ImportError as e:
        pytest.fail(f"Ray no longer has {module} ({e}): update hpo/ray_private.py (see its docstring)")
    assert hasattr(found, name), f"Ray no longer has {module}.{name}: update hpo/ray_private.py (see its docstring)"


def test_loopback_node_keeps_a_loopback_address_during_ray_init_only():
    # in a fresh process: a process already connected to Ray answers with its node's address instead
    code = """
from ray._private import ray_constants, services
from hpo.ray_private import loopback_node

assert isinstance(ray_constants.ENABLE_RAY_CLUSTER, bool), ray_constants.ENABLE_RAY_CLUSTER
before = services.resolve_ip_for_localhost("127.0.0.1")
original = ray_constants.ENABLE_RAY_CLUSTER
with loopback_node(True):
    assert ray_constants.ENABLE_RAY_CLUSTER is False
    inside = services.resolve_ip_for_localhost("127.0.0.1")
assert ray_constants.ENABLE_RAY_CLUSTER is original
with loopback_node(False):
    assert ray_constants.ENABLE_RAY_CLUSTER is original
    off = services.resolve_ip_for_localhost("127.0.0.1")
print(before, inside, off, services.resolve_ip_for_localhost("127.0.0.1"))
"""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**env, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    before, inside, off, after = done.stdout.split()
    assert inside == "127.0.0.1"
    assert before == off == after  # the machine's address (or loopback on a machine without another)


@pytest.mark.slow
def test_the_autoscaler_readers_work_on_a_connected_ray(ray_address):
    # autoscaler_node_types treats any error of these as "not reported": here, none may be raised
    assert reported_cluster_config() is None  # a Ray without an autoscaler that reports its config
    assert isinstance(autoscaler_v1_report(), dict)

"""Chaos, in the spirit of Ray's worker fault-tolerance release test: worker nodes killed at random mid-job.

A multi-node ``ray.cluster_utils.Cluster`` (a head without CPUs, worker nodes of one CPU each, all
real raylets on this machine). While a job of long trials runs, a worker node chosen at random is
killed every few seconds and a fresh one added, for a bounded time. Every trial must end COMPLETE
as one Optuna trial, each restarted one from its checkpoint, with no validation lost or repeated.
"""

import random
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from tests.hpo.conftest import write_spec
from tests.support import wait_for

pytestmark = pytest.mark.slow

STEPS, EVERY = 3000, 250


def test_worker_nodes_killed_at_random_lose_no_trial(tmp_path):
    from ray.cluster_utils import Cluster

    # The GCS declares a dead node after 3 missed health checks 1 s apart (default: 5 of 3 s).
    fast = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "_system_config": fast})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    spec = write_spec(tmp_path, trials=4, concurrency=2, max_retries=20, checkpoint_every=EVERY, artifacts=False,
                      fixed={"K": 8, "outer_steps": STEPS, "eval_every": EVERY})
    driver = subprocess.Popen([sys.executable, "-m", "hpo.cli", "run", str(spec), "--address", cluster.address],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    rng = random.Random(0)
    kills = 0
    try:
        def checkpointed():
            if driver.poll() is not None:
                raise AssertionError(f"the driver exited early: {driver.stdout.read()[-3000:]}")
            try:
                trials = optuna.load_study(study_name="t", storage=storage).get_trials()
            except KeyError:
                return False
            return any("checkpoint" in t.user_attrs for t in trials)

        wait_for(checkpointed, 180, interval=0.2, what="a first checkpoint")
        end = time.monotonic() + 20
        while time.monotonic() < end and driver.poll() is None:
            victim = workers.pop(rng.randrange(len(workers)))
            cluster.remove_node(victim, allow_graceful=False)
            kills += 1
            workers.append(cluster.add_node(num_cpus=1))
            time.sleep(6)
        output = driver.communicate(timeout=600)[0]
    finally:
        driver.kill()
        cluster.shutdown()
    assert driver.returncode == 0, output[-3000:]
    trials = optuna.load_study(study_name="t", storage=storage).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4, output[-3000:]  # 0 lost, 0 copies
    assert kills >= 3
    restarted = [t for t in trials if t.user_attrs.get("retries")]
    assert restarted, output[-3000:]
    for t in trials:
        assert sorted(t.intermediate_values) == [1, *range(EVERY, STEPS + 1, EVERY)]  # none lost, none repeated
    assert any(t.user_attrs.get("resumed_from", 0) >= EVERY for t in restarted)  # continued from a checkpoint

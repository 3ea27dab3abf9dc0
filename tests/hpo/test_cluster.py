"""Jobs on real multi-node clusters: an error in the task, a worker node that dies mid-job.

The clusters are ``cluster/local.sh`` (head without CPUs + worker nodes, each its own raylet and
process group), on free ports and in their own temp directory (``tests/hpo/clusters.py``).
"""

import subprocess
import sys
import textwrap

import optuna
import pytest
from optuna.trial import TrialState

from tests.hpo.clusters import LocalCluster, wait_for
from tests.hpo.conftest import run_cli, write_spec

pytestmark = pytest.mark.slow

# A problem that checks in when its training starts and waits (up to `wait` s) until `expect` trials
# have checked in, so a trial only completes if that many ran at the same time. Each check-in
# records the CUDA_VISIBLE_DEVICES Ray gave the trial. `crash` raises in the operator once training
# has started instead, and counts the starts.
GATHER = '''
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from workers import Problem


@dataclass
class B:
    y: torch.Tensor
    x: torch.Tensor


class Gather(Problem):
    def __init__(self, log: str = "", expect: int = 1, wait: float = 90.0, crash: bool = False, t0: float = 0.5):
        super().__init__()
        self.t = torch.nn.Parameter(torch.tensor(t0))
        self.log, self.expect, self.wait, self.crash = Path(log), expect, wait, crash
        self.training = False
        g = torch.Generator().manual_seed(0)
        self.data = B(torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g))

    def start_training(self):
        if self.training or not self.log.name:
            return
        self.training = True
        if self.crash:
            with open(self.log / "started.txt", "a") as f:  # a line each time a worker starts training
                f.write(f"{os.getpid()}\\n")
            return
        (self.log / f"{os.getpid()}-{time.time_ns()}.in").write_text(os.environ.get("CUDA_VISIBLE_DEVICES", "-"))
        deadline = time.monotonic() + self.wait
        while len(list(self.log.glob("*.in"))) < self.expect:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(list(self.log.glob('*.in')))} of {self.expect} trials ran at once")
            time.sleep(0.1)

    def init(self, batch):
        return torch.zeros_like(batch.y)

    def operator(self, u, batch, k):
        if self.crash and self.training:
            raise RuntimeError("boom in the operator")
        return (1 - self.t) * u + self.t * batch.y

    def upper_loss(self, u, batch):
        return 0.5 * ((u - batch.x) ** 2).sum(-1).mean()

    def metrics(self, u, batch):
        return {"mse": float(((u - batch.x) ** 2).mean())}

    def batches(self, split):
        if split == "train":
            self.start_training()  # the trial runs (the driver's spec check only evaluates)
        while True:
            yield self.data
            if split != "train":
                return
'''


def _gather_spec(tmp_path, log, **changes):
    (tmp_path / "gather.py").write_text(textwrap.dedent(GATHER))
    log.mkdir(exist_ok=True)
    task_args = {"log": str(log), **changes.pop("task_args", {})}
    return write_spec(
        tmp_path, name=f"{changes.get('study', 't')}.yaml", task="gather:Gather", task_args=task_args,
        fixed={"K": 3, "outer_steps": 20, "eval_every": 5}, space={"t0": {"type": "float", "low": 0.1, "high": 0.9}},
        objective={"metric": "mse", "mode": "min"}, **changes,
    )


def _trials(tmp_path, study="t"):
    return optuna.load_study(study_name=study, storage=f"sqlite:///{tmp_path / 'studies.db'}").get_trials()


def test_an_error_in_the_task_fails_its_trial_at_once_and_is_never_retried(tmp_path, ray_address):
    log = tmp_path / "log"
    spec = _gather_spec(tmp_path, log, task_args={"crash": True}, trials=2, concurrency=2, max_retries=3)
    proc = run_cli("run", str(spec), "--address", ray_address, cwd=tmp_path)
    assert proc.returncode == 1 and "no trial completed" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    trials = _trials(tmp_path)
    assert [t.state for t in trials] == [TrialState.FAIL] * 2
    for t in trials:
        assert t.user_attrs["fail_reason"] == "RuntimeError: boom in the operator"
        assert "gather.py" in t.user_attrs["traceback"] and "retries" not in t.user_attrs
    assert len((log / "started.txt").read_text().split()) == 2  # each trial trained once: no retry
    assert "restarting" not in proc.stdout


def test_a_worker_node_that_dies_mid_job_loses_no_trial(tmp_path):
    # The GCS declares a silent node dead after 3 missed health checks 1 s apart (default: 5 of 3 s).
    fast_detection = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}
    with LocalCluster(workers=2, cpus=1, env=fast_detection) as cluster:
        # No node has a GPU: refused before anything is written.
        gpu_spec = write_spec(tmp_path, name="gpu.yaml", study="gpu", resources={"cpu": 1, "gpu": 1})
        proc = run_cli("run", str(gpu_spec), "--address", cluster.address, cwd=tmp_path, env=cluster.env())
        assert proc.returncode != 0
        assert "resources.gpu=1 per trial, but the largest node has 0 GPUs" in proc.stderr

        # 4 trials of a few seconds, 2 at a time on the 2 one-CPU worker nodes; no scheduler (none pruned).
        spec = write_spec(tmp_path, trials=4, concurrency=2, report_interval=0, max_retries=2,
                          fixed={"K": 8, "outer_steps": 300, "eval_every": 25})
        storage = f"sqlite:///{tmp_path / 'studies.db'}"
        driver = subprocess.Popen([sys.executable, "-m", "hpo.cli", "run", str(spec), "--address", cluster.address],
                                  cwd=tmp_path, env=cluster.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            def both_mid_run():  # each worker node is in the middle of a trial
                try:
                    trials = optuna.load_study(study_name="t", storage=storage).get_trials()
                except KeyError:
                    return False
                return len([t for t in trials if t.state == TrialState.RUNNING and t.intermediate_values]) == 2

            wait_for(both_mid_run, 180, what="two trials reporting at once")
            cluster.kill_worker(2)
            output = driver.communicate(timeout=300)[0]
        finally:
            driver.kill()
        assert driver.returncode == 0, output[-3000:]

    trials = _trials(tmp_path)
    assert len(trials) == 4 and [t.state for t in trials] == [TrialState.COMPLETE] * 4, output[-3000:]
    retried = [t for t in trials if t.user_attrs.get("retries")]
    assert len(retried) == 1, output[-3000:]  # the trial on the dead node, and only it
    (t,) = retried
    assert t.user_attrs["retries"] == 1
    (reason,) = t.user_attrs["retry_reasons"]
    assert "node has died" in reason
    dead_node = reason.split("Node Id: ")[1][:12]
    assert all(u.user_attrs["ray_node"] != dead_node for u in trials)  # restarted and finished on the other node
    assert t.value is not None and t.user_attrs["final_step"] == 300
    assert f"trial {t.number}: The actor died because its node has died" in output and "restarting it (retry 1 of 2)" in output
    assert "4/4 finished: 4 complete, 0 pruned, 0 failed" in output

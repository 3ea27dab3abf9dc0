"""hpo submit / jobs against a real Ray head with its jobs API (one head for this module)."""

import os
import signal
import subprocess
import time

import optuna
import pytest
from optuna.trial import TrialState

from hpo.cli import main
from tests.hpo.conftest import run_cli, write_spec
from tests.support import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def jobs_address():
    """A Ray head (2 CPUs) with the dashboard and jobs API on 127.0.0.1 and token authentication."""
    port, dash = free_port(), free_port()
    # Own agent ports: the session's other Ray instance already holds the default ones.
    agent_ports = [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                   f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}"]
    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "token"  # the head and this process's clients (token in ~/.ray/auth_token)
    head = subprocess.Popen(
        ["ray", "start", "--head", "--block", f"--port={port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         "--num-cpus=2", "--include-dashboard=true", "--disable-usage-stats", *agent_ports],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    address = f"http://127.0.0.1:{dash}"
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + 90
    while True:
        try:
            JobSubmissionClient(address).list_jobs()
            break
        except Exception:
            if time.monotonic() > deadline or head.poll() is not None:
                os.killpg(head.pid, signal.SIGTERM)
                pytest.fail("the Ray head did not start its jobs API in 90 s")
            time.sleep(1)
    yield address
    if saved is None:
        os.environ.pop("RAY_AUTH_MODE", None)
    else:
        os.environ["RAY_AUTH_MODE"] = saved
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=5)  # `ray start --block` often outlives SIGTERM by its own 30 s grace: the group goes anyway
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)


def _wait(address: str, job_id: str, timeout: float = 300) -> str:
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = str(client.get_job_status(job_id).value)
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status
        time.sleep(1)
    return "TIMEOUT"


def test_submit_follow_to_success_and_find_every_trial(tmp_path, jobs_address, capsys):
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    spec = write_spec(tmp_path, trials=3, storage=storage, results_dir=str(tmp_path / "ray"))
    assert main(["submit", str(spec), "--address", jobs_address]) == 0
    out = capsys.readouterr().out
    job_id = out.split()[2].rstrip(":")
    assert f"storage on the head node: {storage}" in out
    assert _wait(jobs_address, job_id) == "SUCCEEDED"
    trials = optuna.load_study(study_name="t", storage=storage).get_trials()
    assert len(trials) == 3 and all(t.state == TrialState.COMPLETE for t in trials)

    assert main(["jobs", "list", "--address", jobs_address]) == 0
    assert job_id in capsys.readouterr().out
    assert main(["jobs", "status", job_id, "--address", jobs_address]) == 0
    assert "SUCCEEDED" in capsys.readouterr().out
    assert main(["jobs", "logs", job_id, "--address", jobs_address]) == 0
    assert "3/3 finished" in capsys.readouterr().out


def test_stop_a_running_job(tmp_path, jobs_address, capsys):
    spec = write_spec(tmp_path, trials=50, concurrency=1, storage=f"sqlite:///{tmp_path / 's.db'}",
                      results_dir=str(tmp_path / "ray"), fixed={"K": 8, "outer_steps": 2000, "eval_every": 100})
    assert main(["submit", str(spec), "--address", jobs_address]) == 0
    job_id = capsys.readouterr().out.split()[2].rstrip(":")
    time.sleep(5)
    assert main(["jobs", "stop", job_id, "--address", jobs_address]) == 0
    assert _wait(jobs_address, job_id, timeout=60) == "STOPPED"


def test_errors_are_one_line(tmp_path, jobs_address, capsys):
    assert main(["jobs", "status", "raysubmit_nope", "--address", jobs_address]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no job 'raysubmit_nope'" in err
    assert main(["jobs", "list", "--address", f"http://127.0.0.1:{free_port()}"]) == 2
    assert "no Ray cluster's jobs API" in capsys.readouterr().err
    proc = run_cli("jobs", "list", "--address", jobs_address, env={"RAY_AUTH_MODE": "disabled"})
    assert proc.returncode == 2 and "requires token authentication" in proc.stderr and "Traceback" not in proc.stderr
    relative = write_spec(tmp_path, storage="sqlite:///relative.db")
    assert main(["submit", str(relative), "--address", jobs_address]) == 2
    assert "would land in the job's temporary working directory" in capsys.readouterr().err

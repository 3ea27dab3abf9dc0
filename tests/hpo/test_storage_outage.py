"""Storage outages, for real: a PostgreSQL server the test starts, stops and starts again under a running job."""

import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from tests.hpo.conftest import run_cli, write_spec
from tests.support import wait_for

pytestmark = pytest.mark.slow

STEPS = [1, *range(100, 1501, 100)]


def _trials(url: str) -> list:
    try:
        return optuna.load_study(study_name="t", storage=url).get_trials()
    except Exception:  # noqa: BLE001 - not created yet, or the server is down
        return []


def _start_job(tmp_path, server, ray_address, **changes) -> tuple[subprocess.Popen, object]:
    spec = write_spec(tmp_path, storage=server.url, trials=4, concurrency=2, checkpoint_every=100, driver_lease=3,
                      fixed={"K": 8, "outer_steps": 1500, "eval_every": 100}, **changes)
    driver = subprocess.Popen([sys.executable, "-m", "hpo.cli", "run", str(spec), "--address", ray_address],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: any(t.intermediate_values for t in _trials(server.url)) or driver.poll() is not None, 180,
             what="the first trial's first report")
    assert driver.poll() is None, driver.stdout.read()[-3000:]
    return driver, spec


@pytest.mark.parametrize("down_s", [1, 20])
def test_a_job_waits_out_a_storage_outage(tmp_path, ray_address, own_postgres, down_s):
    driver, _ = _start_job(tmp_path, own_postgres, ray_address)
    own_postgres.stop()
    time.sleep(down_s)
    own_postgres.start()
    output = driver.communicate(timeout=300)[0]
    assert driver.returncode == 0, output[-3000:]
    assert output.count("is unreachable: the trials go on") == 1 and "is back after" in output  # said once
    trials = _trials(own_postgres.url)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4, output[-3000:]
    for t in trials:  # every validation recorded once: none lost in the outage
        assert sorted(t.intermediate_values) == STEPS


def test_an_outage_past_the_window_ends_the_job_cleanly_and_resume_finishes_it(tmp_path, ray_address, own_postgres):
    driver, spec = _start_job(tmp_path, own_postgres, ray_address, storage_retry_window=4)
    own_postgres.stop()
    output = driver.communicate(timeout=300)[0]
    assert driver.returncode == 2, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("hpo: error:")]
    assert len(errors) == 1 and own_postgres.url in errors[0] and "more than 4 s" in errors[0], output[-3000:]
    assert "Traceback" not in output
    own_postgres.start()
    time.sleep(3)  # the stopped driver's lease runs out (it could not give it back)
    proc = run_cli("run", str(spec), "--resume", "--address", ray_address, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trials = _trials(own_postgres.url)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    for t in trials:
        assert sorted(t.intermediate_values) == STEPS

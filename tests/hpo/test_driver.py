"""End to end on a real local Ray: trial states, attributes, user problems, resume after SIGKILL, PostgreSQL."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import optuna
import pytest
from optuna.trial import TrialState

from hpo.driver import INTERRUPTED, run_job
from hpo.errors import ClusterError, StorageError
from hpo.spec import load_spec
from tests.hpo.conftest import REPO, USER_PROBLEM, run_cli, write_spec

pytestmark = pytest.mark.slow


def _study(spec):
    return optuna.load_study(study_name=spec.study, storage=spec.storage)


def test_quickstart_end_to_end_with_two_concurrent_trials(tmp_path, ray_address):
    spec = load_spec(
        REPO / "search_spaces" / "quickstart.yaml",
        {"storage": f"sqlite:///{tmp_path / 's.db'}", "results_dir": str(tmp_path / "ray"), "trials": 6,
         "fixed.outer_steps": 100, "fixed.eval_every": 10, "scheduler.grace_period": 10, "report_interval": 0},
    )
    lines = []
    result = run_job(spec, out=lines.append)
    trials = _study(spec).get_trials()
    assert len(trials) == 6
    assert result.complete + result.pruned + result.failed == 6 and result.complete >= 1 and result.pruned >= 1
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert len({t.user_attrs["ray_trial_id"] for t in trials}) == 6  # one Tune trial = one Optuna trial
    for t in trials:
        assert t.user_attrs["device"] == "cpu" and t.user_attrs["node"] and t.user_attrs["wall_time_s"] > 0
        assert len(t.user_attrs["ray_node"]) == 12
        assert t.user_attrs["fp_residual"] >= 0
        final = t.user_attrs["final_step"]
        assert max(t.intermediate_values) == final  # the final step's value is reported too
        assert t.value == pytest.approx(t.intermediate_values[final])
        if t.state == TrialState.COMPLETE:
            assert final == 100 and "refined_lam" in t.user_attrs  # searched λ and its refined value
        else:
            assert final < 100 and t.user_attrs["stopped_by"] == "scheduler"
        if t.params.get("hypergrad") != "truncated":
            assert "truncate" not in t.params  # conditional parameter
    for t in (t for t in trials if t.state == TrialState.COMPLETE):  # figures of finished trials, stored by the driver
        stored = tmp_path / "artifacts" / t.user_attrs["artifact_convergence"]
        assert stored.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    spans = sorted((t.datetime_start, t.datetime_complete) for t in trials)
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:]))  # trials ran side by side
    assert any("6/6 finished" in line for line in lines)
    assert result.best and result.best[0]["values"][0] == min(t.value for t in trials if t.state == TrialState.COMPLETE)


def test_user_problem_from_a_file_outside_the_package_and_failed_trials(tmp_path, ray_address):
    (tmp_path / "my_problem.py").write_text(textwrap.dedent(USER_PROBLEM))
    spec_path = write_spec(
        tmp_path, task="my_problem:Shrink", task_args={}, fixed={"K": 3, "outer_steps": 20, "eval_every": 5},
        space={"explode": {"type": "categorical", "choices": [False, True]}, "t0": {"type": "float", "low": 0.1, "high": 0.9}},
        objective={"metric": "mse", "mode": "min"}, sampler={"name": "random", "seed": 3}, trials=6,
    )
    proc = run_cli("run", str(spec_path), "--address", ray_address, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    trials = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path / 'studies.db'}").get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert failed and complete and len(failed) + len(complete) == 6
    for t in failed:
        assert t.params["explode"] is True
        assert "diverged: u is not finite at outer step 1, inner step 2" in t.user_attrs["fail_reason"]
    for t in complete:
        assert t.params["explode"] is False and "refined_t" in t.user_attrs
    assert "failed" in proc.stdout and "best trial" in proc.stdout


def test_resources_no_node_offers_are_rejected_before_writing(tmp_path, ray_address):
    spec = load_spec(write_spec(tmp_path, resources={"cpu": 64, "gpu": 0}))
    with pytest.raises(ClusterError, match="resources.cpu=64"):
        run_job(spec, out=lambda line: None)
    spec = load_spec(write_spec(tmp_path, resources={"cpu": 1, "gpu": 1}))
    with pytest.raises(ClusterError, match="resources.gpu=1"):
        run_job(spec, out=lambda line: None)
    assert not (tmp_path / "studies.db").exists()


def test_existing_study_needs_resume_and_resume_needs_a_study(tmp_path, ray_address):
    spec = load_spec(write_spec(tmp_path, trials=1, report_interval=1e9))
    with pytest.raises(StorageError, match="no study 't'"):
        run_job(spec, resume=True, out=lambda line: None)
    run_job(spec, out=lambda line: None)
    (trial,) = _study(spec).get_trials()
    assert list(trial.intermediate_values) == [40]  # throttled reports: only the last step
    with pytest.raises(StorageError, match="already exists .* pass --resume"):
        run_job(spec, out=lambda line: None)
    changed = load_spec(write_spec(tmp_path, trials=1, report_interval=1e9, fixed={"K": 5, "outer_steps": 40, "eval_every": 10}))
    with pytest.raises(StorageError, match="fixed differ"):
        run_job(changed, resume=True, out=lambda line: None)


def _finished(storage: str, study: str) -> list:
    try:
        trials = optuna.load_study(study_name=study, storage=storage).get_trials()
    except KeyError:
        return []
    return [t for t in trials if t.state.is_finished()]


def test_resume_after_sigkill_finishes_the_study(tmp_path, ray_address):
    spec_path = write_spec(tmp_path, trials=6, concurrency=2, fixed={"K": 8, "outer_steps": 300, "eval_every": 50})
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    driver = subprocess.Popen(
        [sys.executable, "-m", "hpo.cli", "run", str(spec_path), "--address", ray_address],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    deadline = time.monotonic() + 240
    while len(_finished(storage, "t")) < 2 and time.monotonic() < deadline and driver.poll() is None:
        time.sleep(0.5)
    assert driver.poll() is None, driver.stdout.read().decode()[-2000:]
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    before = {t.number: (t.state, t.value) for t in _finished(storage, "t")}
    assert 2 <= len(before) < 6
    time.sleep(2)  # let Ray reap the dead driver's trial actors

    proc = run_cli("run", str(spec_path), "--resume", "--address", ray_address, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    trials = optuna.load_study(study_name="t", storage=storage).get_trials()
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    for number, (state, value) in before.items():  # nothing finished is lost or changed
        assert (trials[number].state, trials[number].value) == (state, value)
    counted = [t for t in trials if t.state.is_finished() and t.user_attrs.get("fail_reason") != INTERRUPTED]
    assert len(counted) == 6  # exactly the asked-for number: no trial repeated
    interrupted = [t for t in trials if t.user_attrs.get("fail_reason") == INTERRUPTED]
    retried = {t.user_attrs.get("retry_of") for t in trials} - {None}
    assert retried == {t.number for t in interrupted if t.params}
    for t in (t for t in interrupted if t.params):  # rerun with the same parameters
        assert any(r.user_attrs.get("retry_of") == t.number and r.params == t.params for r in trials)


def test_two_jobs_write_two_studies_into_one_postgresql_database(tmp_path, ray_address, postgres_url):
    # A fresh database: both jobs also race to create Optuna's tables.
    storage = postgres_url
    names = ["pg-a", "pg-b"]
    specs = [write_spec(tmp_path, name=f"{n}.yaml", study=n, storage=storage, trials=3, concurrency=1) for n in names]
    procs = [
        subprocess.Popen([sys.executable, "-m", "hpo.cli", "run", str(s), "--address", ray_address],
                         cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for s in specs
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    try:
        for p, out in zip(procs, outputs):
            assert p.returncode == 0, out[-2000:]
        for n in names:
            trials = optuna.load_study(study_name=n, storage=storage).get_trials()
            assert len(trials) == 3 and all(t.state == TrialState.COMPLETE for t in trials)
        listed = json.loads(run_cli("studies", "--storage", storage, "--json").stdout)
        assert {row["study"] for row in listed} == set(names)
    finally:
        for p in procs:
            p.kill()


def test_multi_objective_study_records_both_values(tmp_path, ray_address):
    spec = load_spec(write_spec(
        tmp_path, trials=3, sampler={"name": "nsga2", "seed": 0},
        objective=[{"metric": "nmse_db", "mode": "min"}, {"metric": "fp_residual", "mode": "min"}],
    ))
    result = run_job(spec, out=lambda line: None)
    trials = _study(spec).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    for t in trials:
        assert len(t.values) == 2 and t.values[1] == pytest.approx(t.user_attrs["fp_residual"])
    assert result.best and all(len(b["values"]) == 2 for b in result.best)


def test_time_budget_stops_the_job_and_leaves_nothing_running(tmp_path, ray_address):
    spec = load_spec(write_spec(tmp_path, trials=20, time_budget=6, report_interval=0,
                                fixed={"K": 8, "outer_steps": 3000, "eval_every": 100}))
    start = time.monotonic()
    run_job(spec, out=lambda line: None)
    assert time.monotonic() - start < 60
    trials = _study(spec).get_trials()
    assert 1 <= len(trials) < 20
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    stopped = [t for t in trials if t.state == TrialState.PRUNED]
    assert stopped and all(t.user_attrs["stopped_by"] == "driver" for t in stopped)


def test_image_task_trials_store_a_restoration_figure(tmp_path, ray_address):
    spec = load_spec(write_spec(
        tmp_path, task="deconvolution", trials=1, concurrency=1, space={"mu": {"type": "float", "low": 0.0, "high": 0.2}},
        task_args={"size": 32, "patch": 16, "kernel_size": 9, "batch_size": 2, "width": 4, "depth": 2},
        fixed={"K": 2, "outer_steps": 4, "eval_every": 2}, objective={"metric": "psnr", "mode": "max"},
    ))
    run_job(spec, out=lambda line: None)
    (trial,) = _study(spec).get_trials()
    assert trial.state == TrialState.COMPLETE
    for name in ("artifact_convergence", "artifact_restoration"):
        assert (tmp_path / "artifacts" / trial.user_attrs[name]).stat().st_size > 1000

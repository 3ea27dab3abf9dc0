"""End to end on a real local Ray: trial states, attributes, user problems, resume after SIGKILL, PostgreSQL."""

import json
import os
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo.driver import run_job
from hpo.errors import ClusterError, StorageError
from hpo.spec import load_spec
from tests.hpo.conftest import BASE_SPEC, REPO, USER_PROBLEM, run_cli, write_spec
from tests.support import wait_for

pytestmark = pytest.mark.slow


def _study(spec):
    return optuna.load_study(study_name=spec.study, storage=spec.storage)


def test_quickstart_end_to_end_prunes_leaves_tpe_startup_and_beats_the_median(tmp_path, ray_address):
    """The README's quick start as shipped (only where results go differs): on a fast machine too, ASHA
    prunes, TPE goes past its random start-up trials, and the best trial beats the median one."""
    spec = load_spec(REPO / "search_spaces" / "quickstart.yaml",
                     {"storage": f"sqlite:///{tmp_path / 's.db'}", "results_dir": str(tmp_path / "ray")})
    lines = []
    result = run_job(spec, out=lines.append)
    trials = _study(spec).get_trials()
    n = spec.trials
    assert len(trials) == n > spec.sampler.n_startup_trials  # TPE models the results after its start-up trials
    assert any(f"(tpe: {spec.sampler.n_startup_trials} random start-up trials, then guided by the results)" in line
               for line in lines)
    assert result.complete + result.pruned == n and result.complete >= 2 and result.pruned > 0
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert len({t.user_attrs["ray_trial_id"] for t in trials}) == n  # one Tune trial = one Optuna trial
    outer_steps = spec.fixed["outer_steps"]
    for t in trials:
        assert t.user_attrs["device"] == "cpu" and t.user_attrs["node"] and t.user_attrs["wall_time_s"] > 0
        assert len(t.user_attrs["ray_node"]) == 12
        assert t.user_attrs["fp_residual"] >= 0
        final = t.user_attrs["final_step"]
        assert max(t.intermediate_values) == final  # the final step's value is reported too
        assert t.value == pytest.approx(t.intermediate_values[final])
        if t.state == TrialState.COMPLETE:
            assert final == outer_steps and "refined_lam" in t.user_attrs  # searched λ and its refined value
        else:
            assert final < outer_steps and t.user_attrs["stopped_by"] == "scheduler"
        if t.params.get("hypergrad") != "truncated":
            assert "truncate" not in t.params  # conditional parameter
    for t in (t for t in trials if t.state == TrialState.COMPLETE):  # figures of finished trials, stored by the driver
        stored = tmp_path / "artifacts" / t.user_attrs["artifact_convergence"]
        assert stored.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    spans = sorted((t.datetime_start, t.datetime_complete) for t in trials)
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:]))  # trials ran side by side
    assert any(f"{n}/{n} finished" in line for line in lines)
    values = sorted(t.value for t in trials if t.state == TrialState.COMPLETE)
    assert result.best and result.best[0]["values"][0] == values[0]
    assert result.median == pytest.approx(statistics.median(values)) and values[0] < result.median - 1.0  # dB


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
    diverged = [t for t in trials if t.state == TrialState.PRUNED]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert diverged and complete and len(diverged) + len(complete) == 6
    for t in diverged:  # PRUNED and infeasible: the sampler learns from it (it ignores FAIL trials)
        assert t.params["explode"] is True and t.constraints == {"diverged": 1.0}
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
    spec = load_spec(write_spec(tmp_path, trials=1))
    with pytest.raises(StorageError, match="no study 't'"):
        run_job(spec, resume=True, out=lambda line: None)
    run_job(spec, out=lambda line: None)
    (trial,) = _study(spec).get_trials()
    assert list(trial.intermediate_values) == [1, 10, 20, 30, 40]  # every validation (eval_every: 10), never by the clock
    with pytest.raises(StorageError, match="already exists .* pass --resume"):
        run_job(spec, out=lambda line: None)
    changed = load_spec(write_spec(tmp_path, trials=1, fixed={"K": 5, "outer_steps": 40, "eval_every": 10}))
    with pytest.raises(StorageError, match=r"differs from study 't'.s at fixed.K \(4 in the study, 5 now\)"):
        run_job(changed, resume=True, out=lambda line: None)


def _straight_value(spec, params: dict) -> float:
    """The final validation value of ``params`` trained in this process, without interruption."""
    from workers import BMOConfig, make_problem, split_settings, train

    config, task_args = split_settings({**spec.fixed, **params})
    result = train(make_problem(spec.task, {**spec.task_args, **task_args}), BMOConfig.from_dict(config))
    return result.final[spec.objectives[0].reported]


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGINT"])
def test_a_killed_or_interrupted_driver_is_resumed_and_its_trials_continue_from_their_checkpoints(tmp_path, ray_address, sig):
    spec_path = write_spec(tmp_path, trials=4, concurrency=2, checkpoint_every=100, driver_lease=6,
                           fixed={"K": 8, "outer_steps": 2000, "eval_every": 100})
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    driver = subprocess.Popen(
        [sys.executable, "-m", "hpo.cli", "run", str(spec_path), "--address", ray_address],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )

    def two_checkpointed():
        if driver.poll() is not None:
            raise AssertionError(f"the driver exited early: {driver.stdout.read()[-2000:]}")
        running = [t for t in _trials_or_none(storage) if t.state == TrialState.RUNNING]
        return len([t for t in running if t.user_attrs.get("checkpoint", {}).get("step", 0) >= 300]) == 2

    wait_for(two_checkpointed, 240, what="two trials past their third checkpoint")
    if sig == "SIGKILL":
        second = run_cli("run", str(spec_path), "--resume", "--address", ray_address, cwd=tmp_path)
        assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
        assert "is being run by a live driver" in second.stderr and driver.poll() is None  # refused; the first goes on
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        early = run_cli("run", str(spec_path), "--resume", "--address", ray_address, cwd=tmp_path)
        assert early.returncode == 2 and "is being run by a live driver" in early.stderr  # its lease has not run out
        time.sleep(6)
    else:
        os.kill(driver.pid, signal.SIGINT)  # what Ctrl-C sends the driver
        output = driver.communicate(timeout=120)[0]
        assert driver.returncode == 130, output[-3000:]
        assert "the run was interrupted;" in output and f"hpo run {spec_path} --address {ray_address} --resume" in output
    before = {t.number: t for t in _trials_or_none(storage)}
    open_trials = [t for t in before.values() if t.state == TrialState.RUNNING]
    assert len(open_trials) >= 2 and not [t for t in before.values() if t.state == TrialState.PRUNED]
    time.sleep(2)  # let Ray reap the dead driver's trial actors

    proc = run_cli("run", str(spec_path), "--resume", "--address", ray_address, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert ("taking over study 't' from a driver whose lease ran out" in proc.stdout) == (sig == "SIGKILL")
    trials = optuna.load_study(study_name="t", storage=storage).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4  # 0 lost, 0 copies, 0 left running
    steps = [1, *range(100, 2001, 100)]
    for old in open_trials:
        t = trials[old.number]
        assert "continuing it from its checkpoint at step" in proc.stdout
        assert t.params == old.params and sorted(t.intermediate_values) == steps  # none missing, none twice
        for step, value in old.intermediate_values.items():
            assert t.intermediate_values[step] == value  # reported before the stop, kept as it was
        if old.user_attrs.get("checkpoint"):
            assert not Path(old.user_attrs["checkpoint"]["uri"]).exists()  # replaced: one checkpoint per trial
            resumed = t.user_attrs["resumed_from"]
            assert max(old.intermediate_values) - 100 <= resumed <= max(old.intermediate_values)  # at most one interval lost
    t = trials[open_trials[0].number]
    assert t.value == pytest.approx(_straight_value(load_spec(spec_path), t.params), rel=1e-4, abs=1e-4)


def _trials_or_none(storage: str) -> list:
    try:
        return optuna.load_study(study_name="t", storage=storage).get_trials()
    except KeyError:
        return []


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
    spec = load_spec(write_spec(tmp_path, trials=20, time_budget=6,
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


def test_keep_models_best_keeps_one_solver_and_init_from_starts_a_study_from_it(tmp_path, ray_address):
    spec = load_spec(write_spec(tmp_path, study="base", trials=3, keep_models="best"))
    run_job(spec, out=lambda line: None)
    trials = _study(spec).get_trials()
    best = _study(spec).best_trial
    dropped = _study(spec).user_attrs.get("bmo_hpo_models_dropped", {})
    assert [t.number for t in trials if "artifact_solver" in t.user_attrs and str(t.number) not in dropped] == [best.number]
    for t in trials:  # a model given up by an earlier best is gone from the artifact store
        if str(t.number) in dropped:
            assert not (tmp_path / "artifacts" / t.user_attrs["artifact_solver"]).exists()
            proc = run_cli("model", "base", "--trial", str(t.number), "--storage", spec.storage)
            assert proc.returncode == 2 and "has no trained solver any more (keep_models: best" in proc.stderr
    assert (tmp_path / "artifacts" / best.user_attrs["artifact_solver"]).exists()

    tuned = load_spec(write_spec(tmp_path, name="tuned.yaml", study="tuned", trials=1,
                                 init_from={"study": "base", "trial": best.number}, space={"mu": {"type": "float", "low": 0.0, "high": 0.3}}))
    run_job(tuned, out=lambda line: None)
    (trial,) = _study(tuned).get_trials()
    assert min(trial.intermediate_values) == 0  # its first report: the solver it starts from, before any step
    assert trial.intermediate_values[0] == pytest.approx(best.value, rel=1e-5)

    solver = tmp_path / "base-solver.pt"
    assert run_cli("model", "base", "--storage", spec.storage, "-o", str(solver)).returncode == 0
    other = write_spec(tmp_path, name="other.yaml", study="other", init_from=str(solver),
                       task_args={**BASE_SPEC["task_args"], "operator": "untied_coupled"})
    proc = run_cli("run", str(other), "--address", ray_address, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("hpo: error: init_from: ") and "tensor 'W' is (1, 16, 32) in the file but (16, 16, 32)" in proc.stderr
    assert "other" not in [s.study_name for s in optuna.get_all_study_summaries(spec.storage)]


SLOW_PROBLEM = '''
import time

from workers.tasks import SparseCoding


class Slow(SparseCoding):
    """Sparse coding whose every training batch costs `delay` more seconds: a slower machine."""

    def __init__(self, delay: float = 0.0, m: int = 16, n: int = 32, batch_size: int = 16, val_size: int = 64,
                 test_size: int = 16):
        super().__init__(m=m, n=n, batch_size=batch_size, val_size=val_size, test_size=test_size)
        self.delay = delay

    def batches(self, split):
        for batch in super().batches(split):
            if split == "train":
                time.sleep(self.delay)
            yield batch
'''


def test_the_same_spec_prunes_the_same_trials_on_a_fast_and_a_slowed_down_machine(tmp_path, ray_address):
    (tmp_path / "slow.py").write_text(SLOW_PROBLEM)
    outcomes = []
    for delay in (0.0, 0.03):
        spec = write_spec(tmp_path, name=f"slow-{delay}.yaml", study=f"slow-{delay}", task="slow:Slow",
                          task_args={"delay": delay}, trials=6, concurrency=1, sampler={"name": "tpe", "seed": 0},
                          fixed={"K": 4, "outer_steps": 40, "eval_every": 5},
                          scheduler={"name": "asha", "grace_period": 5, "reduction_factor": 2})
        proc = run_cli("run", str(spec), "--address", ray_address, cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        trials = optuna.load_study(study_name=f"slow-{delay}", storage=f"sqlite:///{tmp_path / 'studies.db'}").get_trials()
        outcomes.append([(t.params, t.state, sorted(t.intermediate_values)) for t in trials])
    assert outcomes[0] == outcomes[1]
    assert any(state == TrialState.PRUNED for _, state, _ in outcomes[0])


def test_the_sampler_learns_from_diverged_trials(tmp_path, ray_address):
    (tmp_path / "my_problem.py").write_text(textwrap.dedent(USER_PROBLEM))
    spec = write_spec(  # 70% of the range diverges at once
        tmp_path, task="my_problem:Shrink", task_args={"touchy": 0.3}, fixed={"K": 3, "outer_steps": 4, "eval_every": 2},
        space={"t0": {"type": "float", "low": 0.0, "high": 1.0}}, objective={"metric": "mse", "mode": "min"},
        sampler={"name": "tpe", "seed": 0, "n_startup_trials": 6}, trials=24, concurrency=1, artifacts=False,
    )
    proc = run_cli("run", str(spec), "--address", ray_address, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    trials = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path / 'studies.db'}").get_trials()
    diverged = [t.constraints == {"diverged": 1.0} for t in trials]
    assert all(d == (t.params["t0"] > 0.3) for d, t in zip(diverged, trials))
    assert sum(diverged[12:]) < sum(diverged[:12]), diverged


def test_a_last_step_without_a_usable_value_is_fail(tmp_path, ray_address):
    (tmp_path / "bad_metric.py").write_text(textwrap.dedent(USER_PROBLEM) + """

class BadMetric(Shrink):
    def metrics(self, u, batch):
        return {"mse": float("inf")}
""")
    spec = load_spec(write_spec(tmp_path, task="bad_metric:BadMetric", task_args={}, fixed={"K": 3, "outer_steps": 4, "eval_every": 2},
                                space={"t0": {"type": "float", "low": 0.1, "high": 0.9}}, objective={"metric": "mse", "mode": "min"},
                                trials=1, concurrency=1))
    proc = run_cli("run", str(spec_path := tmp_path / "spec.yaml"), "--address", ray_address, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:] + str(spec_path)
    (trial,) = _study(spec).get_trials()
    assert trial.state == TrialState.FAIL and trial.user_attrs["fail_reason"] == "the final val_mse is inf, not a finite number"


def test_the_objective_is_the_last_the_best_or_the_averaged_value(tmp_path, ray_address):
    common = dict(trials=1, concurrency=1, artifacts=False, space={"mu": {"type": "float", "low": 0.0, "high": 0.3}},
                  fixed={"K": 4, "outer_steps": 40, "eval_every": 5, "gamma": 0.1, "average": 0.8})
    trials = {}
    for value in ("last", "best", "averaged"):
        spec = load_spec(write_spec(tmp_path, name=f"{value}.yaml", study=value, **common,
                                    objective={"metric": "nmse_db", "mode": "min", "value": value}))
        run_job(spec, out=lambda line: None)
        (trials[value],) = _study(spec).get_trials()
    last, best, averaged = trials["last"], trials["best"], trials["averaged"]
    assert last.params == best.params == averaged.params  # the same seed: the same trajectory three times
    trace = [last.intermediate_values[s] for s in sorted(last.intermediate_values)]
    assert last.value == trace[-1]
    assert [best.intermediate_values[s] for s in sorted(best.intermediate_values)] == pytest.approx(
        [min(trace[: i + 1]) for i in range(len(trace))])  # the best so far, at every validation
    assert best.value == pytest.approx(min(trace)) and best.value < last.value  # gamma 0.1: the trace wanders
    # the kept solver is the best step's: its validation equals the trial's value
    from workers import evaluate, load_solver

    solver_file = tmp_path / "best.pt"
    assert run_cli("model", "best", "--storage", f"sqlite:///{tmp_path / 'studies.db'}", "-o", str(solver_file)).returncode == 0
    solver = load_solver(solver_file)
    assert evaluate(solver.problem, solver.config, "val")["nmse_db"] == pytest.approx(best.value, rel=1e-5)
    # averaged: the value of the moving average of omega, as train computes it in this process
    from workers import BMOConfig, make_problem, train

    result = train(make_problem("sparse_coding", BASE_SPEC["task_args"]),
                   BMOConfig.from_dict({**common["fixed"], "mu": averaged.params["mu"]}))
    assert averaged.value == pytest.approx(result.final["val_avg_nmse_db"], rel=1e-5)


def test_a_long_study_runs_as_several_tune_runs_and_asha_carries_over(tmp_path, ray_address, monkeypatch):
    import hpo.driver

    monkeypatch.setattr(hpo.driver, "TUNE_RUN_TRIALS", 3)  # Tune runs of 3 trials: 7 trials take 3 of them
    spec = load_spec(write_spec(tmp_path, trials=7, scheduler={"name": "asha", "grace_period": 10, "reduction_factor": 2}))
    result = run_job(spec, out=lambda line: None)
    trials = _study(spec).get_trials()
    assert len(trials) == 7 and result.complete + result.pruned == 7 and result.pruned >= 1
    assert len({t.user_attrs["ray_trial_id"] for t in trials}) == 7
    assert len(list((tmp_path / "ray").glob("t-*"))) == 3  # three Tune experiments, one study


def test_seed_from_queues_another_studys_best_configurations_clipped_or_dropped(tmp_path, ray_address):
    hypergrad = {"type": "categorical", "choices": ["unroll", "implicit", "jfb"]}
    source = load_spec(write_spec(tmp_path, study="source", trials=4, sampler={"name": "random", "seed": 1},
                                  space={**BASE_SPEC["space"], "hypergrad": hypergrad}))
    run_job(source, out=lambda line: None)
    space = {"mu": {"type": "float", "low": 0.0, "high": 0.1}, "gamma": BASE_SPEC["space"]["gamma"],
             "hypergrad": {"type": "categorical", "choices": ["unroll", "jfb"]}}
    target = write_spec(tmp_path, name="target.yaml", study="target", trials=4, space=space)
    proc = run_cli("run", str(target), "--seed-from", "source", "--address", ray_address, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    best_first = sorted(_study(source).get_trials(), key=lambda t: t.value)
    kept = [t for t in best_first if t.params["hypergrad"] != "implicit"]
    assert len(kept) < 4 and any(t.params["mu"] > 0.1 for t in kept)  # both cases happen with this seed
    for t in best_first:
        if t.params["hypergrad"] == "implicit":
            assert f"seed_from: trial {t.number} of 'source' dropped: hypergrad='implicit' is not among the choices" in proc.stdout
        elif t.params["mu"] > 0.1:
            assert f"seed_from: trial {t.number} of 'source' (value {t.value:.5g}) queued, clipped: mu {t.params['mu']!r} -> 0.1" in proc.stdout
    seeded = optuna.load_study(study_name="target", storage=source.storage).get_trials()[: len(kept)]
    for t, s in zip(seeded, kept):  # the first trials are the source's best, fitted to the space
        assert t.user_attrs["seeded_from"] == f"source#{s.number}"
        assert t.params == {**s.params, "mu": min(s.params["mu"], 0.1)}
    missing = write_spec(tmp_path, name="missing.yaml", study="other", seed_from="nope")
    proc = run_cli("run", str(missing), "--address", ray_address, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("hpo: error: seed_from.study: no study 'nope'"), proc.stderr


def test_closing_lines_name_the_best_against_the_median_of_complete_trials():
    from hpo.driver import JobResult, print_result

    lines = []
    result = JobResult("s", "sqlite:///x.db", complete=3, pruned=2, metric="nmse_db", median=-4.0,
                       best=[{"number": 4, "values": [-9.5], "params": {"mu": 0.1}}])
    print_result(result, out=lines.append)
    assert "best nmse_db=-9.5 against a median of -4 over the 3 complete trials" in lines
    lines.clear()
    print_result(JobResult("s", "sqlite:///x.db", complete=1, metric="nmse_db", median=-9.5,
                           best=[{"number": 0, "values": [-9.5], "params": {}}]), out=lines.append)
    assert not any("median" in line for line in lines)  # one complete trial: nothing to compare

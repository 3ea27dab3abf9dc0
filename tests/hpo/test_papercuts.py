"""Small things a newcomer trips on: each is one clear line, or does what was meant."""

import argparse
import time

import optuna
import pytest
import yaml

from hpo.cli import _spec_overrides, main
from hpo.errors import HPOError, StorageError, UsageError
from hpo.jobs import job_rows
from hpo.space import define_by_run
from hpo.spec import load_spec
from hpo.task_check import check_against_task
from hpo.storage import check_storage, default_results_dir
from tests.hpo.conftest import write_spec


def test_every_user_error_has_one_root():
    assert issubclass(UsageError, HPOError)


def test_a_dashboard_port_out_of_range_is_one_line(tmp_path, capsys):
    assert main(["dashboard", "--port", "99999", "--storage", f"sqlite:///{tmp_path / 'x.db'}"]) == 2
    assert capsys.readouterr().err == "hpo: error: port must be in 0..65535 (0 picks a free one), got 99999\n"


def _overrides(spec, *pairs):
    return _spec_overrides(argparse.Namespace(spec=str(spec), set=list(pairs), trials=None, storage=None, study=None))


def test_set_pins_a_searched_parameter_and_says_so(tmp_path, capsys):
    path = write_spec(tmp_path)
    overrides = _overrides(path, "mu=0.2", "K=6")
    assert capsys.readouterr().out == "pinned mu=0.2 (taken out of the search space)\n"
    spec = load_spec(path, overrides)
    assert spec.fixed == {"K": 6, "outer_steps": 40, "eval_every": 10, "mu": 0.2}
    assert [p.name for p in spec.space] == ["gamma"]
    check_against_task(spec)


def test_a_pinned_task_argument_leaves_the_space(tmp_path, capsys):
    path = write_spec(tmp_path, space={"lam": {"type": "float", "low": 0.05, "high": 0.5, "log": True},
                                       "mu": {"type": "float", "low": 0.0, "high": 0.3}})
    spec = load_spec(path, _overrides(path, "task_args.lam=0.1"))
    assert capsys.readouterr().out == "pinned lam=0.1 (taken out of the search space)\n"
    assert spec.task_args["lam"] == 0.1 and [p.name for p in spec.space] == ["mu"]


@pytest.mark.parametrize("pinned, expected", [("truncated", {"truncate"}), ("jfb", set())])
def test_conditional_parameters_follow_a_pinned_parent(tmp_path, capsys, pinned, expected):
    path = write_spec(tmp_path, space={
        "hypergrad": {"type": "categorical", "choices": ["jfb", "truncated"]},
        "truncate": {"type": "int", "low": 1, "high": 3, "when": {"hypergrad": "truncated"}},
    })
    spec = load_spec(path, _overrides(path, f"hypergrad={pinned}"))
    assert f"pinned hypergrad={pinned}" in capsys.readouterr().out
    check_against_task(spec)
    study = optuna.create_study()
    trial = study.ask()
    define_by_run(spec)(trial)
    assert set(trial.params) == expected


def test_a_sqlite_path_missing_its_fourth_slash_gets_a_hint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./tmp here, but there is a /tmp
    with pytest.raises(StorageError) as e:
        check_storage("sqlite:///tmp/no-such-dir/x.db")
    assert str(e.value) == ("storage 'sqlite:///tmp/no-such-dir/x.db': directory 'tmp/no-such-dir' does not exist; "
                            "did you mean sqlite:////tmp/no-such-dir/x.db (an absolute path needs four slashes)?")
    with pytest.raises(StorageError) as e:
        check_storage("sqlite:///no-such-dir/x.db")  # no /no-such-dir either: no hint
    assert "four slashes" not in str(e.value)
    (tmp_path / "tmp").mkdir()  # a relative tmp/ exists: the path is meant relative
    with pytest.raises(StorageError) as e:
        check_storage("sqlite:///tmp/no-such-dir/x.db")
    assert "four slashes" not in str(e.value)


@pytest.mark.parametrize("url, expected", [
    ("sqlite:///hpo-results/studies.db", "hpo-results/ray"),
    ("sqlite:////data/hpo/studies.db", "/data/hpo/ray"),
    ("sqlite:///studies.db", "ray"),
    ("postgresql://127.0.0.1:5432/hpo", "hpo-results/ray"),
])
def test_results_go_beside_a_sqlite_storage_by_default(url, expected):
    assert default_results_dir(url) == expected


def test_a_spec_without_results_dir_puts_them_beside_its_storage(tmp_path):
    path = write_spec(tmp_path, storage=f"sqlite:///{tmp_path / 'db' / 'studies.db'}")
    data = yaml.safe_load(path.read_text())
    del data["results_dir"]
    path.write_text(yaml.safe_dump(data))
    assert load_spec(path).results_dir == str(tmp_path / "db" / "ray")
    assert load_spec(path, {"storage": "postgresql://127.0.0.1:5432/hpo"}).results_dir == "hpo-results/ray"


# JobDetails as Ray 2.60's JobSubmissionClient.list_jobs returned them from a head with cluster/local.sh's wait
# driver, a plain driver and a submitted job.
JOBS = [
    {"type": "DRIVER", "job_id": "01000000", "submission_id": None, "status": "SUCCEEDED",
     "entrypoint": "python3 - 127.0.0.1:6380 2 170 111 222", "start_time": 1796034292812, "end_time": 1796034293338,
     "metadata": {}, "runtime_env": {}, "driver_info": {"id": "01000000", "node_ip_address": "127.0.0.1", "pid": "10245"}},
    {"type": "DRIVER", "job_id": "02000000", "submission_id": None, "status": "RUNNING",
     "entrypoint": "hpo run spec.yaml --address 127.0.0.1:6380", "start_time": 1796034297626, "end_time": None,
     "metadata": {}, "runtime_env": {}, "driver_info": {"id": "02000000", "node_ip_address": "127.0.0.1", "pid": "10343"}},
    {"type": "SUBMISSION", "job_id": None, "submission_id": "raysubmit_vufWWJiCS11C3Fzr", "status": "SUCCEEDED",
     "entrypoint": "python -m hpo.cli run spec.yaml --address auto", "start_time": 1796034298758,
     "end_time": 1796034299889, "metadata": {"study": "s", "tool": "bmo-hpo"}, "runtime_env": {},
     "message": "Job finished successfully.", "driver_exit_code": 0},
]


@pytest.fixture
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_jobs_list_shows_local_times_and_hides_local_sh_own_driver(utc):
    from ray.job_submission import JobDetails

    rows = job_rows([JobDetails(**job) for job in JOBS])
    assert rows == [
        {"job": "02000000", "status": "RUNNING", "study": None, "started": "2026-11-30 10:24:57",
         "entrypoint": "hpo run spec.yaml --address 127.0.0.1:6380"},
        {"job": "raysubmit_vufWWJiCS11C3Fzr", "status": "SUCCEEDED", "study": "s", "started": "2026-11-30 10:24:58",
         "entrypoint": "python -m hpo.cli run spec.yaml --address auto"},
    ]

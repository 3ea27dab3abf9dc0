"""hpo studies / trials / best / export against a real SQLite study."""

import csv
import io
import json

import optuna
import pytest
from optuna.trial import TrialState

from hpo.cli import main


@pytest.fixture
def storage(tmp_path):
    """A study with complete, pruned and failed trials, as the driver records them."""
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    study = optuna.create_study(study_name="s", storage=url, direction="minimize")
    for i, (state, value) in enumerate([(TrialState.COMPLETE, -3.0), (TrialState.PRUNED, None),
                                         (TrialState.FAIL, None), (TrialState.COMPLETE, -5.0)]):
        t = study.ask({"mu": optuna.distributions.FloatDistribution(0, 1)})
        t.report(-1.0 - i, 10)
        t.set_user_attr("fp_residual", 0.01 * (i + 1))
        t.set_user_attr("device", "cpu")
        if state == TrialState.FAIL:
            t.set_user_attr("fail_reason", "diverged: u is not finite at outer step 3, inner step 2")
        study.tell(t, value, state=state)
    optuna.create_study(study_name="other", storage=url, directions=["minimize", "maximize"])
    return url


def test_studies_lists_counts_and_best(storage, capsys):
    assert main(["studies", "--storage", storage, "--json"]) == 0
    rows = {r["study"]: r for r in json.loads(capsys.readouterr().out)}
    assert (rows["s"]["complete"], rows["s"]["pruned"], rows["s"]["failed"], rows["s"]["best"]) == (2, 1, 1, -5.0)
    assert rows["other"]["trials"] == 0 and rows["other"]["directions"] == ["minimize", "maximize"]
    assert main(["studies", "--storage", storage]) == 0
    assert "other" in capsys.readouterr().out


def test_trials_table_shows_states_params_and_reasons(storage, capsys):
    assert main(["trials", "s", "--storage", storage]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["number", "state", "value", "mu"]
    assert len(out) == 5 and "PRUNED" in out[2] and "diverged" in out[3]


def test_best_prints_the_best_trial(storage, capsys):
    assert main(["best", "s", "--storage", storage, "--json"]) == 0
    best = json.loads(capsys.readouterr().out)
    assert best["number"] == 3 and best["values"] == [-5.0] and "mu" in best["params"]


def test_export_csv_and_json(storage, capsys, tmp_path):
    assert main(["export", "s", "--storage", storage, "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["state"] for r in rows] == ["COMPLETE", "PRUNED", "FAIL", "COMPLETE"]
    assert rows[3]["value"] == "-5.0" and rows[0]["user_attrs_fp_residual"] == "0.01"
    target = tmp_path / "s.json"
    assert main(["export", "s", "--storage", storage, "--format", "json", "-o", str(target)]) == 0
    doc = json.loads(target.read_text())
    assert doc["trials"][1]["intermediate_values"] == {"10": -2.0}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".s.json")] == []  # no temp file left


@pytest.mark.parametrize("argv, words", [
    (["best", "nope"], ["no study 'nope'", "studies: s, other"]),
    (["best", "other"], ["has no complete trial"]),
    (["export", "s", "-o", "/nonexistent-dir/x.csv"], ["--output", "does not exist"]),
])
def test_inspection_errors_are_one_line(storage, capsys, argv, words):
    assert main([*argv, "--storage", storage]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(w in err for w in words)


def test_reading_never_creates_a_database(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'missing.db'}"
    assert main(["studies", "--storage", url]) == 2
    assert "no database" in capsys.readouterr().err
    assert not (tmp_path / "missing.db").exists()


def test_study_plots_are_saved_for_the_dashboard(storage):
    from optuna_dashboard._custom_plot_data import list_graph_object_ids  # what the dashboard reads

    from hpo.plots import save_study_plots

    study = optuna.load_study(study_name="s", storage=storage)
    save_study_plots(study, "nmse_db", {"K": 8})
    save_study_plots(study, "nmse_db", {"K": 8})  # a rerun replaces, not adds
    graphs = list_graph_object_ids(study._storage.get_study_system_attrs(study._study_id))
    assert sorted(graphs) == ["convergence-best", "objective-vs-mu-K"]

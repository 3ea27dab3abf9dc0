"""Trained solvers from a study: `hpo model`, `hpo apply`, `hpo train --init-from` (no Ray: the study is built by hand)."""

import numpy as np
import optuna
import pytest
import torch
from optuna.artifacts import upload_artifact
from optuna.trial import TrialState
from PIL import Image

from hpo.cli import main
from hpo.errors import ModelError
from hpo.models import fetch_solver
from hpo.storage import open_artifact_store
from tests.hpo.conftest import run_cli
from workers import BMOConfig, apply_solver, load_solver, make_problem, save_solver, train

SPARSE_ARGS = {"m": 16, "n": 32, "batch_size": 16, "val_size": 64, "test_size": 16}
DECONV_ARGS = {"size": 32, "patch": 16, "kernel_size": 9, "batch_size": 2, "width": 4, "depth": 2}
SPARSE_SET = [f"--set={k}={v}" for k, v in SPARSE_ARGS.items()]


def _solver(directory, task, args, steps):
    problem = make_problem(task, args)
    config = BMOConfig(K=4, outer_steps=steps, gamma=1e-2, device="cpu")
    if steps:
        train(problem, config)
    return save_solver(directory, problem, config, task=task, task_args=args)


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """A storage with studies as the driver leaves them, and the solver files it uploaded.

    s (minimize): 0 COMPLETE -5 (untrained solver), 1 COMPLETE -8 (trained solver: the best),
    2 COMPLETE -1 (no solver), 3 PRUNED, 4 COMPLETE -2 (its solver file is gone),
    5 COMPLETE -3 (solver dropped by keep_models: best); d (maximize): 0 with a deconvolution solver;
    mo (minimize, maximize): 0 and 1 on the Pareto front, with solvers.
    """
    root = tmp_path_factory.mktemp("models")
    url = f"sqlite:///{root / 'studies.db'}"
    store = open_artifact_store(url)
    files = {
        "fresh": _solver(root / "fresh", "sparse_coding", SPARSE_ARGS, 0),
        "trained": _solver(root / "trained", "sparse_coding", SPARSE_ARGS, 3),
        "deconvolution": _solver(root / "deconvolution", "deconvolution", DECONV_ARGS, 2),
    }

    def add(study, values, solver=None, state=TrialState.COMPLETE, **attrs):
        trial = study.ask()
        if solver is not None:
            for key, path in (("artifact_solver", files[solver]), ("artifact_solver_json", files[solver].with_name("solver.json"))):
                trial.set_user_attr(key, upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial))
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        study.tell(trial, values, state=state)

    s = optuna.create_study(study_name="s", storage=url, direction="minimize")
    add(s, -5.0, "fresh", test_nmse_db=-5.1)
    add(s, -8.0, "trained", test_nmse_db=-8.1)
    add(s, -1.0)
    add(s, None, state=TrialState.PRUNED)
    add(s, -2.0, artifact_solver="0123456789abcdef-gone")
    add(s, -3.0, model_dropped="keep_models: best (a better trial took its place)")
    add(optuna.create_study(study_name="d", storage=url, direction="maximize"), 20.0, "deconvolution")
    mo = optuna.create_study(study_name="mo", storage=url, directions=["minimize", "maximize"])
    add(mo, [-5.0, 1.0], "fresh")
    add(mo, [-3.0, 2.0], "trained")
    return url, files


def _fails_in_one_line(capsys, argv, *words, absent=()):
    """``hpo argv`` exits 2 with one stderr line naming ``words`` and writes none of ``absent``."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("hpo: error: ") and err.count("\n") == 1, err
    assert all(w in err for w in words), err
    assert not any(p.exists() for p in absent)
    return err


def test_model_writes_the_best_trials_solver_by_default(studies, tmp_path):
    url, files = studies
    proc = run_cli("model", "s", "--storage", url, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "s-trial1-solver.pt"
    assert out.read_bytes() == files["trained"].read_bytes()
    line = proc.stdout.strip()
    assert "\n" not in line and "sparse_coding" in line and "trial 1" in line and "value=-8" in line
    assert "workers.load_solver('s-trial1-solver.pt')" in line and "hpo apply s-trial1-solver.pt" in line


def test_model_takes_a_trial_by_number_and_replaces_the_output(studies, tmp_path, capsys):
    url, files = studies
    out = tmp_path / "m.pt"
    out.write_text("old")
    assert main(["model", "s", "--trial", "0", "-o", str(out), "--storage", url]) == 0
    assert out.read_bytes() == files["fresh"].read_bytes()
    assert main(["model", "mo", "--trial", "1", "-o", str(out), "--storage", url]) == 0
    assert "value_0=-3, value_1=2" in capsys.readouterr().out
    assert out.read_bytes() == files["trained"].read_bytes()
    assert list(tmp_path.iterdir()) == [out]  # no temporary file left


@pytest.mark.parametrize("argv, words", [
    (["s", "--trial", "9"], ["study 's' has no trial 9 (trials 0 to 5)"]),
    (["s", "--trial", "2"], ["trial 2 (COMPLETE) has no trained solver", "keep_models"]),
    (["s", "--trial", "3"], ["trial 3 (PRUNED) has no trained solver"]),
    (["s", "--trial", "4"], ["trial 4's solver", "0123456789abcdef-gone", "missing"]),
    (["s", "--trial", "5"], ["trial 5 (COMPLETE) has no trained solver any more (keep_models: best"]),
    (["s", "--trial", "-1"], ["--trial must be a trial number >= 0, got -1"]),
    (["mo"], ["study 'mo' has 2 objectives", "Pareto front (0, 1)"]),
    (["nope"], ["no study 'nope'", "studies: s, d, mo"]),
])
def test_model_errors_are_one_line(studies, tmp_path, capsys, argv, words):
    out = tmp_path / "m.pt"
    _fails_in_one_line(capsys, ["model", *argv, "-o", str(out), "--storage", studies[0]], *words, absent=[out])
    assert not list(tmp_path.iterdir())


def test_fetch_solver_returns_the_file_or_raises_model_error(studies, tmp_path):
    url, files = studies
    dest = fetch_solver(url, "s", None, tmp_path / "best.pt")
    assert dest == tmp_path / "best.pt" and load_solver(dest).meta["task"] == "sparse_coding"
    with pytest.raises(ModelError, match="does not exist"):
        fetch_solver(url, "s", 1, tmp_path / "no" / "best.pt")


def _png(path, image, bits):
    scale, dtype = (65535, np.uint16) if bits == 16 else (255, np.uint8)
    Image.fromarray(np.round(np.clip(image, 0, 1) * scale).astype(dtype)).save(path)
    return np.asarray(Image.open(path)).astype(np.float64) / scale  # what the solver will see


def test_apply_restores_a_png_as_the_solver_does_in_process(studies, tmp_path, capsys):
    _, files = studies
    solver = load_solver(files["deconvolution"])
    y = next(iter(solver.problem.batches("test"))).y[0, 0].numpy()
    seen = _png(tmp_path / "y.png", y, 16)
    proc = run_cli("apply", str(files["deconvolution"]), "--input", "y.png", "--output", "x.png", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "wrote x.png (32x32, 16-bit): deconvolution solver, 4 steps; it assumes gaussian blur 9x9 (sigma 1.6" in proc.stdout
    with Image.open(tmp_path / "x.png") as image:
        assert image.mode == "I;16"
        restored = np.asarray(image).astype(np.float64) / 65535
    expected = apply_solver(solver, torch.from_numpy(seen)[None, None])[0, 0].double().numpy()
    assert np.abs(restored - expected.clip(0, 1)).max() <= 0.5 / 65535 + 1e-7
    _png(tmp_path / "y8.png", y, 8)  # 8-bit input, fewer steps
    assert main(["apply", str(files["deconvolution"]), "-i", str(tmp_path / "y8.png"), "-o", str(tmp_path / "x8.png"), "--K", "2"]) == 0
    assert "2 steps" in capsys.readouterr().out and (tmp_path / "x8.png").exists()


def test_apply_reads_and_writes_npy_for_sparse_coding(studies, tmp_path, capsys):
    _, files = studies
    solver = load_solver(files["trained"])
    y = next(iter(solver.problem.batches("test"))).y
    np.save(tmp_path / "y.npy", y[0].numpy())
    proc = run_cli("apply", str(files["trained"]), "--input", "y.npy", "--output", "x.npy", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "wrote x.npy (shape (32,)): sparse_coding solver, 4 steps; it assumes y = Ax + noise with this task's A" in proc.stdout
    assert np.array_equal(np.load(tmp_path / "x.npy"), apply_solver(solver, y[:1])[0].numpy())
    np.save(tmp_path / "batch.npy", y[:3].double().numpy())
    assert main(["apply", str(files["trained"]), "-i", str(tmp_path / "batch.npy"), "-o", str(tmp_path / "xb.npy")]) == 0
    assert np.array_equal(np.load(tmp_path / "xb.npy"), apply_solver(solver, y[:3]).numpy())


def test_apply_errors_are_one_line_and_write_nothing(studies, tmp_path, capsys):
    _, files = studies
    sparse, deconv = str(files["trained"]), str(files["deconvolution"])
    _png(tmp_path / "small.png", np.full((8, 40), 0.5), 16)
    _png(tmp_path / "ok.png", np.full((16, 16), 0.5), 8)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "rgb.png")
    np.save(tmp_path / "y20.npy", np.zeros(20))
    np.save(tmp_path / "y16.npy", np.zeros(16))
    np.save(tmp_path / "cube.npy", np.zeros((2, 2, 16)))
    (tmp_path / "bad.pt").write_bytes(b"not a solver at all" * 10)
    out_png, out_npy = tmp_path / "out.png", tmp_path / "out.npy"
    cases = [
        ([deconv, "-i", "small.png", "-o", out_png], "small.png: a deconvolution solver expects images of at least 9x9 pixels",
         "got (1, 1, 8, 40)"),
        ([deconv, "-i", "y16.npy", "-o", out_png], "y16.npy is not an image", "grayscale PNG"),
        ([deconv, "-i", "rgb.png", "-o", out_png], "rgb.png is a PNG of mode RGB"),
        ([deconv, "-i", "ok.png", "-o", out_npy], "a deconvolution solver writes .png files"),
        ([sparse, "-i", "ok.png", "-o", out_npy], "ok.png is not a .npy array", "(m,) or a batch (B, m)"),
        ([sparse, "-i", "y20.npy", "-o", out_npy],
         "y20.npy: a sparse_coding solver expects shape (B, m) = (B, 16), got (1, 20)"),
        ([sparse, "-i", "cube.npy", "-o", out_npy], "array of shape (2, 2, 16)"),
        ([sparse, "-i", "missing.npy", "-o", out_npy], "missing.npy: no such file"),
        ([sparse, "-i", "y16.npy", "-o", out_npy, "--K", "0"], "--K must be a positive integer, got 0"),
        ([str(tmp_path / "bad.pt"), "-i", "y16.npy", "-o", out_npy], "bad.pt is not a bmo-hpo solver file"),
        ([str(tmp_path / "gone.pt"), "-i", "y16.npy", "-o", out_npy], "gone.pt' does not exist"),
    ]
    for argv, *words in cases:
        argv = [str(tmp_path / a) if a in ("small.png", "y16.npy", "rgb.png", "ok.png", "y20.npy", "cube.npy", "missing.npy")
                else str(a) for a in argv]
        _fails_in_one_line(capsys, ["apply", *argv], *words, absent=[out_png, out_npy])


def test_train_starts_from_a_solver_file(studies, tmp_path, capsys):
    _, files = studies
    proc = run_cli("train", "sparse_coding", *SPARSE_SET, "--set=K=4", "--set=outer_steps=2", "--init-from",
                   str(files["trained"]), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"ω starts from {files['trained']} (a sparse_coding solver)" in proc.stdout and "done in" in proc.stdout
    _fails_in_one_line(capsys, ["train", "sparse_coding", *SPARSE_SET, "--set=operator=untied_coupled", "--init-from",
                                str(files["trained"])], "--init-from:", "tensor 'W' is (1, 16, 32) in the file but (16, 16, 32)")
    _fails_in_one_line(capsys, ["train", "sparse_coding", "--init-from", str(tmp_path / "none.pt")], "none.pt' does not exist")

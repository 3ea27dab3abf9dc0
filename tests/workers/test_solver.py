"""The trained solver as a file: save, load, fine-tune from, and run on a user's observation."""

import json

import pytest
import torch

from workers import (
    BMOConfig, SolverFileError, apply_solver, evaluate, evaluate_solve, load_solver, load_weights, make_problem,
    save_solver, train,
)
from workers.checks import CheckError
from workers.solver import SOLVER_FORMAT

SPARSE = ("sparse_coding", {"m": 16, "n": 32, "batch_size": 16, "val_size": 64, "test_size": 16})
DECONV = ("deconvolution", {"size": 32, "patch": 16, "kernel_size": 9, "batch_size": 2, "width": 4, "depth": 2})
CONFIG = BMOConfig(K=4, outer_steps=3, gamma=1e-2, device="cpu")


@pytest.fixture(scope="module", params=[SPARSE, DECONV], ids=["sparse_coding", "deconvolution"])
def trained(request, tmp_path_factory):
    """(task, task_args, trained problem, its test metrics, its solver file)."""
    task, args = request.param
    problem = make_problem(task, args)
    train(problem, CONFIG)
    metrics = evaluate(problem, CONFIG, "test")
    path = save_solver(tmp_path_factory.mktemp("solver"), problem, CONFIG, task=task, task_args=args, metrics=metrics)
    return task, args, problem, metrics, path


def _one_line_error(call, *names) -> str:
    with pytest.raises(SolverFileError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and all(name in message for name in names), message
    return message


def test_the_files_describe_the_solver(trained):
    task, args, problem, metrics, path = trained
    assert path.name == "solver.pt"
    meta = json.loads(path.with_name("solver.json").read_text())
    assert meta["format"] == SOLVER_FORMAT and meta["task"] == task and meta["task_args"] == args
    assert meta["config"]["K"] == 4 and meta["test_metrics"] == metrics
    assert meta["learned_values"] == problem.learned_values()
    assert meta["dtype"] == "torch.float32" and meta["device"] == "cpu"
    assert meta["parameters"] == sum(p.numel() for p in problem.parameters())
    assert set(meta["versions"]) == {"bmo_hpo", "torch"}
    assert torch.load(path, weights_only=True)["meta"] == meta  # plain data, the same in both files


def test_a_loaded_solver_reproduces_the_test_metrics_exactly(trained):
    task, _, problem, metrics, path = trained
    solver = load_solver(path.parent)  # the directory works as well as the file
    assert solver.config == CONFIG and solver.meta["task"] == task
    assert solver.problem.dtype == problem.dtype and solver.problem.device == problem.device
    assert evaluate(solver.problem, solver.config, "test") == metrics


def test_apply_solver_on_the_observation_alone_equals_the_evaluation_solve(trained):
    _, _, _, _, path = trained
    solver, problem = load_solver(path), load_solver(path).problem
    batch = next(iter(problem.batches("test")))
    u, _ = evaluate_solve(problem, batch, CONFIG)
    assert torch.equal(apply_solver(solver, batch.y), problem.estimate(u, batch))
    u, _ = evaluate_solve(problem, batch, CONFIG, K=7)
    assert torch.equal(apply_solver(solver, batch.y.double(), K=7), problem.estimate(u, batch))
    with pytest.raises(ValueError, match="^K: expected an int >= 1, got 0$"):
        apply_solver(solver, batch.y, K=0)


@pytest.mark.parametrize("task, args", [SPARSE, (DECONV[0], {**DECONV[1], "operator": "pnp_convex"})],
                         ids=["sparse_coding", "deconvolution"])
def test_load_weights_starts_a_fresh_problem_from_the_trained_weights(tmp_path, task, args):
    problem = make_problem(task, args)
    train(problem, CONFIG)
    path = save_solver(tmp_path, problem, CONFIG, task=task, task_args=args)
    metrics = evaluate(problem, CONFIG, "test")
    fresh = make_problem(task, args)
    assert evaluate(fresh, CONFIG, "test") != metrics
    assert load_weights(fresh, path)["task"] == task
    assert evaluate(fresh, CONFIG, "test") == metrics


def test_load_weights_recalibrates_the_power_iteration_of_a_lipschitz_network(tmp_path):
    task, args = DECONV  # operator pnp_lipschitz: spectrally normalised convolutions
    problem = make_problem(task, args)
    train(problem, CONFIG)
    path = save_solver(tmp_path, problem, CONFIG, task=task, task_args=args)
    metrics = evaluate(problem, CONFIG, "test")
    fresh = make_problem(task, args)
    load_weights(fresh, path)
    for name, p in fresh.named_parameters():
        assert torch.equal(p, problem.get_parameter(name)), name
    # v is not loaded (buffers are the problem's own) but converged on the loaded weights: the trained
    # solver's estimate after a few steps of one power iteration each is a little behind it
    assert evaluate(fresh, CONFIG, "test")["psnr"] == pytest.approx(metrics["psnr"], abs=0.5)


@pytest.mark.parametrize("changed, names", [
    ({"operator": "untied_coupled"}, ["'W'", "(1, 16, 32)", "(16, 16, 32)"]),  # a shape
    ({"operator": "lista_tied"}, ["'W1'", "missing from the file"]),  # a tensor the file lacks
    ({"operator": "ista"}, ["'W'", "the problem has not"]),  # a tensor the problem lacks
])
def test_load_weights_names_the_first_tensor_that_does_not_fit_and_changes_nothing(tmp_path, changed, names):
    task, args = SPARSE
    problem = make_problem(task, args)
    path = save_solver(tmp_path, problem, CONFIG, task=task, task_args=args)
    other = make_problem(task, {**args, **changed})
    before = {k: v.clone() for k, v in other.state_dict().items()}
    _one_line_error(lambda: load_weights(other, path), str(path), *names)
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())


def test_load_weights_names_a_mismatched_layer_of_a_network(tmp_path):
    task, args = DECONV
    path = save_solver(tmp_path, make_problem(task, args), CONFIG, task=task, task_args=args)
    _one_line_error(lambda: load_weights(make_problem(task, {**args, "width": 6}), path),
                    "'denoiser.convs.0.weight'", "(4, 1, 3, 3)", "(6, 1, 3, 3)")


def test_unreadable_files_are_one_line_errors_naming_them(tmp_path):
    _one_line_error(lambda: load_solver(tmp_path / "nope.pt"), "nope.pt", "does not exist")
    random_bytes = tmp_path / "random.pt"
    random_bytes.write_bytes(bytes(range(256)) * 8)
    _one_line_error(lambda: load_solver(random_bytes), "random.pt", "not a bmo-hpo solver file")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    _one_line_error(lambda: load_weights(make_problem(*SPARSE), foreign), "foreign.pt", "no 'format' entry")
    future = tmp_path / "future.pt"
    torch.save({"format": "bmo-hpo-solver/9", "meta": {}, "state_dict": {}}, future)
    _one_line_error(lambda: load_solver(future), "future.pt", "'bmo-hpo-solver/9'", SOLVER_FORMAT)
    task, args = SPARSE
    whole = save_solver(tmp_path / "whole", make_problem(task, args), CONFIG, task=task, task_args=args)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(whole.read_bytes()[:2000])
    _one_line_error(lambda: load_solver(truncated), "truncated.pt", "not a bmo-hpo solver file")


def test_a_solver_whose_task_cannot_be_rebuilt_or_does_not_fit_it_is_named(tmp_path):
    task, args = SPARSE
    problem = make_problem(task, args)
    gone = save_solver(tmp_path / "gone", problem, CONFIG, task="no_such_module_here:Problem", task_args={})
    _one_line_error(lambda: load_solver(gone), "cannot rebuild", "no_such_module_here")
    lying = save_solver(tmp_path / "lying", problem, CONFIG, task=task, task_args={**args, "m": 20})
    _one_line_error(lambda: load_solver(lying), "'W'", "(1, 16, 32) in the file", "(1, 20, 32) in the problem")


def test_save_solver_refuses_arguments_that_are_not_plain_data(tmp_path):
    task, args = SPARSE
    with pytest.raises(ValueError, match="plain data"):
        save_solver(tmp_path, make_problem(task, args), CONFIG, task=task, task_args={**args, "seed": torch.tensor(0)})
    assert not list(tmp_path.iterdir())


def test_observation_batch_checks_the_shape():
    problem = make_problem(*SPARSE)
    with pytest.raises(CheckError, match=r"^y: expected shape \(B, m\) = \(B, 16\), got \(2, 20\)$"):
        problem.observation_batch(torch.zeros(2, 20))
    deconv = make_problem(*DECONV)
    with pytest.raises(CheckError, match=r"^y: expected images of at least 9x9 pixels .*, got \(1, 1, 8, 40\)$"):
        deconv.observation_batch(torch.zeros(1, 1, 8, 40))
    with pytest.raises(CheckError, match=r"^y: expected shape \(B, 1, H, W\) \(grayscale images\), got \(1, 3, 16, 16\)$"):
        deconv.observation_batch(torch.zeros(1, 3, 16, 16))
    assert "gaussian blur 9x9 (sigma 1.6" in deconv.degradation()

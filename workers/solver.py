"""A trained solver as a file: ω, the BMO config and the task that built it, readable without the study.

``save_solver`` writes two files into a directory (names from ``workers.protocol``)::

    solver.pt     torch.save({"format": SOLVER_FORMAT, "meta": meta, "state_dict": ω and buffers on the CPU})
    solver.json   the meta alone, readable without torch

``meta`` is plain data (loadable with ``torch.load(weights_only=True)``): the task and its full
arguments, the ``BMOConfig``, the learned scalar values, the test metrics, dtype, device, versions
and the number of parameters. ``load_solver`` rebuilds the problem from it; ``load_weights`` starts
another problem's ω from it (fine-tuning); ``apply_solver`` runs the evaluation solve on a user's
observation.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from workers.bmo import BMOConfig, evaluate_solve
from workers.checks import check_int
from workers.problem import Problem
from workers.protocol import SOLVER_FILE, SOLVER_META_FILE
from workers.tasks import make_problem

SOLVER_FORMAT = "bmo-hpo-solver/1"


class SolverFileError(ValueError):
    """A solver file that is missing, not a solver, damaged, or does not fit: one line naming the file."""


class Solver(NamedTuple):
    """A loaded solver: the problem holding the trained ω, its BMO config and the file's meta."""

    problem: Problem
    config: BMOConfig
    meta: dict


def _write_atomically(path: Path, write) -> None:
    """``write(temporary path)`` then rename it to ``path``: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_solver(directory, problem: Problem, config: BMOConfig, *, task: str, task_args: dict,
                metrics: dict | None = None) -> Path:
    """Write ``solver.pt`` and ``solver.json`` for ``problem`` (built by ``make_problem(task, task_args)``
    and trained with ``config``) into ``directory``; ``metrics`` are its test metrics. Returns the
    path of ``solver.pt``."""
    from hpo import __version__  # a constant: hpo/__init__ imports nothing

    meta = {
        "format": SOLVER_FORMAT,
        "task": task,
        "task_args": dict(task_args),
        "config": dataclasses.asdict(config),
        "learned_values": problem.learned_values(),
        "test_metrics": dict(metrics or {}),
        "dtype": str(problem.dtype),
        "device": str(problem.device),
        "versions": {"bmo_hpo": __version__, "torch": torch.__version__},
        "parameters": sum(p.numel() for p in problem.parameters()),
    }
    try:  # the round trip makes meta plain data (tuples become lists), the same in both files
        meta = json.loads(json.dumps(meta))
    except TypeError as e:
        raise ValueError(f"save_solver: task_args, metrics and learned values must be plain data: {e}") from None
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: t.detach().to("cpu", copy=True) for name, t in problem.state_dict().items()}
    path = directory / SOLVER_FILE
    _write_atomically(path, lambda tmp: torch.save({"format": SOLVER_FORMAT, "meta": meta, "state_dict": state}, tmp))
    _write_atomically(directory / SOLVER_META_FILE, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2) + "\n"))
    return path


def _read(path) -> tuple[Path, dict, dict]:
    """``(path, meta, state_dict)`` of a solver file (or of the ``solver.pt`` in a directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / SOLVER_FILE
    if not path.is_file():
        raise SolverFileError(f"solver file {str(path)!r} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated zips, foreign pickles and random bytes raise different errors
        raise SolverFileError(f"{path} is not a bmo-hpo solver file (torch.load cannot read it: {type(e).__name__})") from None
    if not isinstance(data, dict) or "format" not in data:
        raise SolverFileError(f"{path} is not a bmo-hpo solver file (it has no 'format' entry)")
    if data["format"] != SOLVER_FORMAT:
        raise SolverFileError(f"{path} has format {data['format']!r}; this bmo-hpo reads {SOLVER_FORMAT!r}")
    meta, state = data.get("meta"), data.get("state_dict")
    if not (isinstance(meta, dict) and isinstance(state, dict) and isinstance(meta.get("task"), str)
            and isinstance(meta.get("task_args"), dict) and isinstance(meta.get("config"), dict)):
        raise SolverFileError(f"{path} is a damaged solver file (its meta or state_dict is missing or malformed)")
    return path, meta, state


def _shape(t) -> str:
    return str(tuple(t.shape)) if isinstance(t, Tensor) else f"a {type(t).__name__}, not a tensor"


def _misfit(own: dict[str, Tensor], saved: dict) -> str | None:
    """The first tensor of ``saved`` that does not fit ``own`` (missing, unexpected, another shape), or None."""
    for name, t in own.items():
        if name not in saved:
            return f"tensor {name!r} {_shape(t)} is missing from the file"
        if not isinstance(saved[name], Tensor) or saved[name].shape != t.shape:
            return f"tensor {name!r} is {_shape(saved[name])} in the file but {_shape(t)} in the problem"
    for name, t in saved.items():
        if name not in own:
            return f"the file has tensor {name!r} {_shape(t)}, which the problem has not"
    return None


def _device(meta: dict, device) -> torch.device:
    if device is None:  # where it was trained, when that is here
        saved = torch.device(meta.get("device") or "cpu")
        return torch.device("cuda") if saved.type == "cuda" and torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r}: torch sees no CUDA device")
    return device


def load_solver(path, *, device=None) -> Solver:
    """Load a solver file (``solver.pt``, or a directory holding one): rebuild its problem from the task
    and arguments it records, load its state (strict) and move it to ``device`` (default: the device
    it was trained on when available here, else the CPU). A ``module:Class`` task must be importable."""
    path, meta, state = _read(path)
    try:
        problem = make_problem(meta["task"], meta["task_args"])
        config = BMOConfig.from_dict(meta["config"])
    except ValueError as e:
        raise SolverFileError(f"{path}: cannot rebuild its solver: {e}") from None
    misfit = _misfit(problem.state_dict(), state)
    if misfit:
        raise SolverFileError(f"{path} does not fit task {meta['task']!r} built from its task_args: {misfit}")
    problem.load_state_dict(state)
    return Solver(problem.to(_device(meta, device)), config, meta)


def load_weights(problem: Problem, path) -> dict:
    """Start ``problem``'s ω (its parameters) from a solver file, for fine-tuning; returns the file's meta.

    Buffers stay the problem's own (they hold its task: a sensing matrix, a blur kernel), and
    spectrally normalised layers recalibrate their power iteration to the loaded weights. Every
    parameter must match by name and shape, else ``SolverFileError`` names the first that does not
    and ``problem`` is left unchanged.
    """
    path, meta, state = _read(path)
    own = dict(problem.named_parameters())
    buffers = {name for name, _ in problem.named_buffers()}
    misfit = _misfit(own, {name: t for name, t in state.items() if name not in buffers})
    if misfit:
        raise SolverFileError(f"{path} does not fit this {type(problem).__name__}: {misfit}")
    with torch.no_grad():
        for name, p in own.items():
            p.copy_(state[name])
    for module in problem.modules():
        if hasattr(module, "calibrate"):
            module.calibrate(50)
    return meta


def apply_solver(solver: Solver, y: Tensor, *, K: int | None = None) -> Tensor:
    """Run ``solver``'s evaluation solve (``K`` steps, default the config's ``eval_steps``) on an
    observation ``y`` (the shape of the task's ``observation_batch``) and return the estimate."""
    if K is not None:
        check_int("K", K, minimum=1)
    problem = solver.problem
    batch = problem.observation_batch(y.to(device=problem.device, dtype=problem.dtype))
    u, _ = evaluate_solve(problem, batch, solver.config, K=K)
    with torch.no_grad():
        return problem.estimate(u, batch)

"""What runs inside a worker: the Problem interface, the BMO solver and the tasks (torch, never Optuna)."""

from workers.bmo import (
    HYPERGRAD_MODES,
    BMOConfig,
    BMOError,
    DivergenceError,
    Hypergradient,
    InnerSolution,
    TrainResult,
    evaluate,
    evaluate_solve,
    fp_residual,
    hypergradient,
    inner_solve,
    layer_metrics,
    train,
)
from workers.problem import Problem
from workers.tasks import TASKS, make_problem, resolve_task, split_settings

__all__ = [
    "HYPERGRAD_MODES",
    "TASKS",
    "BMOConfig",
    "BMOError",
    "DivergenceError",
    "Hypergradient",
    "InnerSolution",
    "Problem",
    "TrainResult",
    "evaluate",
    "evaluate_solve",
    "fp_residual",
    "hypergradient",
    "inner_solve",
    "layer_metrics",
    "make_problem",
    "resolve_task",
    "split_settings",
    "train",
]

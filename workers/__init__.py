"""What runs inside a worker: the Problem interface, the BMO solver and the tasks (torch, never Optuna).

The public names load lazily, so ``workers.protocol`` (the keys a trial reports, torch-free) can be
imported by the driver without importing torch.
"""

from importlib import import_module

_EXPORTS = {
    "workers.bmo": (
        "HYPERGRAD_MODES", "BMOConfig", "BMOError", "DivergenceError", "Hypergradient", "InnerSolution",
        "TrainResult", "TrainState", "evaluate", "evaluate_solve", "fp_residual", "hypergradient", "inner_solve",
        "layer_metrics", "train",
    ),
    "workers.problem": ("Problem",),
    "workers.tasks": ("TASKS", "make_problem", "resolve_task", "split_settings"),
    "workers.solver": ("Solver", "SolverFileError", "apply_solver", "load_solver", "load_weights", "save_solver"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'workers' has no attribute {name!r}")
    value = getattr(import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])

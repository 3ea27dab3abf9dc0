"""The trial protocol: the keys a trial reports to the driver and the files it leaves in a checkpoint.

Torch-free and Optuna-free: the trainable (``workers.trainable``) writes these keys and the driver
(``hpo``) reads them, so neither side spells a key the other invented.
"""

# --- keys of every result a trial reports -------------------------------------------
OUTER_STEP = "outer_step"  # Tune's time attribute: the outer step just finished
OUTER_STEPS = "outer_steps"  # the trial's budget; a result with OUTER_STEP == OUTER_STEPS is its last
VAL_STEP = "val_step"  # the outer step of the validation the val_* values come from
VAL_PREFIX = "val_"  # validation metrics: val_<metric>
TEST_PREFIX = "test_"  # test metrics of the final solver, in the last result only
REFINED_PREFIX = "refined_"  # refined values of low-dimensional learned variables, in the last result only
DEVICE = "device"
NODE = "node"  # host name
RAY_NODE = "ray_node"  # Ray node id (12 characters)
GPUS = "gpus"  # the GPU ids Ray gave the trial
CPU_SECONDS = "cpu_s"  # CPU seconds the trial's process spent on it so far (this attempt): its compute, on a busy machine too

# --- a trial that ends without a usable value ----------------------------------------
DIVERGED = "diverged"  # why the solve diverged during training (u, ω or the loss stopped being finite)
TRIAL_ERROR = "trial_error"  # why the trial could not run or ended without a usable value
DIVERGED_RESIDUAL = 1e3  # a final relative fixed-point residual above this is no solution
TRIAL_TRACEBACK = "trial_traceback"

# --- per-trial settings the driver adds to the searched parameters --------------------
OPTUNA_TRIAL = "__optuna_trial"  # the Optuna trial number this Tune trial trains
RESUME_FROM = "__resume_from"  # a checkpoint directory to continue from (after a driver restart)

# --- files of a checkpoint directory --------------------------------------------------
STATE_FILE = "state.pt"  # the full training state (workers.bmo.TrainState)
SOLVER_FILE = "solver.pt"  # the trained solver, self-describing (workers.solver)
SOLVER_META_FILE = "solver.json"  # the solver's description, readable without torch
FIGURE_SUFFIX = ".png"  # figures the driver stores as artifacts


def is_final(result: dict) -> bool:
    """Whether ``result`` is a trial's report of its last outer step."""
    return result.get(OUTER_STEP) is not None and result.get(OUTER_STEP) == result.get(OUTER_STEPS)


def failure(result: dict) -> str | None:
    """The reason a trial failed, when ``result`` says it did."""
    return result.get(DIVERGED) or result.get(TRIAL_ERROR)


def unusable_final(result: dict, objectives: list[str]) -> str | None:
    """Why a last step's ``result`` holds no meaningful objective value (None when it does)."""
    residual = result.get("val_fp_residual")
    for key in objectives:
        value = result.get(key)
        if not isinstance(value, (int, float)) or value != value or value in (float("inf"), float("-inf")):
            return f"the final {key} is {value!r}, not a finite number"
    if residual is not None and not residual <= DIVERGED_RESIDUAL:  # also catches NaN
        return f"the final relative fixed-point residual is {residual:.3g} (above {DIVERGED_RESIDUAL:g}): the solve diverged"
    return None

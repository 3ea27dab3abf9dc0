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

# --- a trial that ends without a usable value ----------------------------------------
DIVERGED = "diverged"  # why the solve diverged
TRIAL_ERROR = "trial_error"  # why the trial could not run (bad settings, a bug in the task)
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

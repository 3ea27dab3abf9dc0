"""Trained solvers kept with a study: which trial's solver to take, and fetching its file (torch-free).

The driver uploads each finished trial's ``solver.pt`` and ``solver.json`` (``workers.solver``) to the
study's artifact store (``hpo.storage.open_artifact_store``) and records their artifact ids in the
trial's user attributes ``artifact_solver`` and ``artifact_solver_json``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.errors import ModelError
from hpo.results import load
from hpo.storage import artifact_dir, open_artifact_store

SOLVER_ATTR = "artifact_solver"  # artifact id of the trial's solver.pt
SOLVER_META_ATTR = "artifact_solver_json"  # artifact id of its solver.json
DROPPED_ATTR = "model_dropped"  # why a trial's solver was removed (keep_models: best), on the trial
MODELS_DROPPED_ATTR = "bmo_hpo_models_dropped"  # the same, for finished trials: {trial number: why}, on the study


def solver_trial(study: optuna.Study, trial: int | None) -> FrozenTrial:
    """Trial number ``trial`` of ``study``, or its best trial when None, provided it has a trained solver."""
    name = study.study_name
    if trial is None:
        if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
            raise ModelError(f"study {name!r} has no complete trial yet")
        if len(study.directions) > 1:
            front = ", ".join(str(t.number) for t in sorted(study.best_trials, key=lambda t: t.number))
            raise ModelError(f"study {name!r} has {len(study.directions)} objectives and no single best trial: "
                             f"name a trial of its Pareto front ({front})")
        chosen = study.best_trial
    else:
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        if trial not in trials:
            span = f"trials 0 to {max(trials)}" if trials else "no trials"
            raise ModelError(f"study {name!r} has no trial {trial} ({span})")
        chosen = trials[trial]
    dropped = chosen.user_attrs.get(DROPPED_ATTR) or study.user_attrs.get(MODELS_DROPPED_ATTR, {}).get(str(chosen.number))
    if SOLVER_ATTR in chosen.user_attrs and not dropped:
        return chosen
    head = f"trial {chosen.number} ({chosen.state.name}) has no trained solver"
    if dropped:
        raise ModelError(f"{head} any more ({dropped})")
    if chosen.state == TrialState.COMPLETE:
        raise ModelError(f"{head} (keep_models: best keeps only the best trial's, none keeps none)")
    if chosen.state in (TrialState.RUNNING, TrialState.WAITING):
        raise ModelError(f"{head} yet (it has not finished)")
    raise ModelError(f"{head} (only trials that train to their last step keep one)")


def download_solver(storage_url: str, trial: FrozenTrial, dest) -> Path:
    """Write ``trial``'s solver file (from ``solver_trial``) to ``dest`` atomically (an existing file is
    replaced); returns ``dest``."""
    from optuna.artifacts import download_artifact
    from optuna.artifacts.exceptions import ArtifactNotFound

    dest = Path(dest)
    if not dest.parent.is_dir():
        raise ModelError(f"cannot write {str(dest)!r}: directory {str(dest.parent)!r} does not exist")
    if dest.is_dir():
        raise ModelError(f"cannot write {str(dest)!r}: it is a directory")
    artifact_id = trial.user_attrs[SOLVER_ATTR]
    if not artifact_dir(storage_url).is_dir():  # never created here
        raise ModelError(f"trial {trial.number}'s solver (artifact {artifact_id}) is missing: no artifact directory "
                         f"{str(artifact_dir(storage_url))!r}")
    store = open_artifact_store(storage_url)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.") as tmp:
        part = Path(tmp) / dest.name
        try:
            download_artifact(artifact_store=store, artifact_id=artifact_id, file_path=str(part))
        except ArtifactNotFound:
            raise ModelError(f"trial {trial.number}'s solver (artifact {artifact_id}) is missing from the artifact "
                             f"store {str(artifact_dir(storage_url))!r}") from None
        os.replace(part, dest)
    return dest


def solver_meta(storage_url: str, trial: FrozenTrial) -> dict | None:
    """The ``solver.json`` of ``trial``'s solver (task, task arguments, config, test metrics), read without
    torch; None when the trial has none or it cannot be read."""
    from optuna.artifacts.exceptions import ArtifactNotFound

    artifact_id = trial.user_attrs.get(SOLVER_META_ATTR)
    if artifact_id is None or not artifact_dir(storage_url).is_dir():
        return None
    try:
        with open_artifact_store(storage_url).open_reader(artifact_id) as f:
            meta = json.load(f)
    except (ArtifactNotFound, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def fetch_solver(storage_url: str, study: str, trial: int | None, dest) -> Path:
    """Write the solver file of ``study``'s trial number ``trial`` (None: the best trial of a
    single-objective study) to ``dest``; returns ``dest``. ``ModelError`` (or ``StorageError`` for a
    missing storage or study) says why it cannot."""
    return download_solver(storage_url, solver_trial(load(storage_url, study), trial), dest)

"""Resuming a study: what a new run finds in the storage, and which trials it continues.

The storage is the single source of truth. Trials a dead or interrupted driver left RUNNING are
continued as the same Optuna trials, each from its latest checkpoint (the ``checkpoint`` user
attribute), by the next ``hpo run --resume``; only the trials still missing are drawn anew.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.errors import StorageError
from hpo.space import is_active
from hpo.spec import JobSpec
from hpo.storage import find_study

SPEC_ATTR = "bmo_hpo_spec"
INTERRUPTED = "interrupted: the driver stopped before the trial finished"  # set by bmo-hpo before 0.2
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def spec_fingerprint(spec: JobSpec) -> dict:
    """What must not change between a study's runs: task, fixed values, space, objectives."""
    d = spec.to_dict()
    return json.loads(json.dumps({k: d[k] for k in ("task", "task_args", "fixed", "space", "objectives")}, default=str))


def _differences(saved, current, where: str = "") -> list[str]:
    """Dotted keys at which two fingerprints differ, first difference first."""
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        for key in [*saved, *(k for k in current if k not in saved)]:
            out += _differences(saved.get(key), current.get(key), f"{where}.{key}" if where else str(key))
        return out
    return [] if saved == current else [f"{where} ({json.dumps(saved, default=str)} in the study, {json.dumps(current, default=str)} now)"]


def _has_all_params(spec: JobSpec, trial: FrozenTrial) -> bool:
    values = dict(spec.fixed)
    for p in spec.space:
        if is_active(p, values):
            if p.name not in trial.params:
                return False
            values[p.name] = trial.params[p.name]
    return True


def prepare_study(spec: JobSpec, storage, resume: bool, out: Callable[[str], None],
                  take: Callable[[optuna.Study], None]) -> tuple[dict, list[FrozenTrial]]:
    """Check the study for a new run or ``resume``; return (finished trials by state, trials to continue).

    ``take(study)`` is called on an existing study before any of its trials is touched (the lease).
    """
    summary = find_study(storage, spec.study)
    if summary is not None and not resume:
        raise StorageError(
            f"study {spec.study!r} already exists in {spec.storage} with {summary.n_trials} trials; "
            "pass --resume to continue it or --study NAME for a new one"
        )
    if summary is None and resume:
        raise StorageError(f"--resume: no study {spec.study!r} in {spec.storage}")
    if summary is None:
        return {}, []
    study = optuna.load_study(study_name=spec.study, storage=storage)
    saved = study.user_attrs.get(SPEC_ATTR)
    if saved is not None and saved != spec_fingerprint(spec):
        changed = _differences(saved, spec_fingerprint(spec))
        raise StorageError(f"--resume: the spec differs from study {spec.study!r}'s at {changed[0]}; use a new --study")
    take(study)
    continuing = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if _has_all_params(spec, t):
            continuing.append(t)
            checkpoint = t.user_attrs.get("checkpoint")
            where = f"its checkpoint at step {checkpoint['step']}" if checkpoint else "step 1 (it had no checkpoint yet)"
            out(f"trial {t.number} was left running by the previous driver: continuing it from {where}")
        else:  # killed while its parameters were drawn: nothing to continue
            study.tell(t.number, state=TrialState.FAIL)
            out(f"trial {t.number} was left running before its parameters were drawn: marked failed")
    counts = {state: 0 for state in FINISHED}
    for t in study.get_trials(deepcopy=False, states=FINISHED):
        if t.user_attrs.get("fail_reason") != INTERRUPTED and not (t.state == TrialState.FAIL and not t.params):
            counts[t.state] += 1
    return counts, continuing


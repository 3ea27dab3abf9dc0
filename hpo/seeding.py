"""Transfer between studies: a new study starts with the best configurations of another (``seed_from``).

The best ``k`` finished trials of the source study are enqueued (Optuna's ``enqueue_trial``) as the
first trials of the new one, fitted to its search space: a value outside a range is clipped to it
(and put on its step grid), and a configuration that lacks a searched parameter or holds a choice
the space does not offer is dropped. The run says which were clipped and which dropped.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import optuna
from optuna.trial import TrialState

from hpo.errors import SpecError
from hpo.space import is_active
from hpo.spec import JobSpec, Param


def _fit(p: Param, value) -> tuple[object, str | None]:
    """``value`` fitted to ``p``'s range: (the value, a note when it was clipped); raises ValueError if it cannot fit."""
    if p.type == "categorical":
        if value not in p.choices:
            raise ValueError(f"{p.name}={value!r} is not among the choices {list(p.choices)!r}")
        return value, None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{p.name}={value!r} is not a number")
    fitted = min(max(value, p.low), p.high)
    if p.step:
        fitted = p.low + round((fitted - p.low) / p.step) * p.step
        fitted = min(fitted, p.high)
    if p.type == "int":
        fitted = int(round(fitted))
    note = None if fitted == value else f"{p.name} {value!r} -> {fitted!r}"
    return fitted, note


def source_study(spec: JobSpec) -> optuna.Study:
    """The study ``seed_from`` names, read-only; a ``SpecError`` when it is missing or multi-objective."""
    from hpo.errors import StorageError
    from hpo.results import load

    source = spec.seed_from
    try:
        other = load(source.get("storage") or spec.storage, source["study"])
    except StorageError as e:
        raise SpecError(f"seed_from.study: {e}") from None
    if len(other.directions) != 1:
        raise SpecError(f"seed_from.study: {source['study']!r} is multi-objective; seed from a single-objective study")
    return other


def seed_study(spec: JobSpec, study: optuna.Study, out: Callable[[str], None]) -> int:
    """Enqueue into ``study`` the best ``spec.seed_from["k"]`` trials of the source study; return how many."""
    source = spec.seed_from
    other = source_study(spec)
    sign = 1.0 if other.direction == optuna.study.StudyDirection.MINIMIZE else -1.0
    finished = [t for t in other.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    best = sorted(finished, key=lambda t: sign * t.value)[: source.get("k", 5)]
    enqueued = 0
    for t in best:
        values, params, notes = dict(spec.fixed), {}, []
        try:
            for p in spec.space:
                if not is_active(p, values):
                    continue
                if p.name not in t.params:
                    raise ValueError(f"it has no value for {p.name}")
                value, note = _fit(p, t.params[p.name])
                params[p.name] = values[p.name] = value
                notes += [note] if note else []
        except ValueError as e:
            out(f"seed_from: trial {t.number} of {source['study']!r} dropped: {e}")
            continue
        study.enqueue_trial(params, user_attrs={"seeded_from": f"{source['study']}#{t.number}"})
        enqueued += 1
        out(f"seed_from: trial {t.number} of {source['study']!r} (value {t.value:.5g}) queued"
            + (f", clipped: {', '.join(notes)}" if notes else ""))
    return enqueued

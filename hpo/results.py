"""Reading studies back: list studies, trial tables, the best trial, CSV / JSON export."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.errors import StorageError
from hpo.storage import check_storage, open_storage, sqlite_path

SHOWN_ATTRS = ("final_step", "fp_residual", "device", "node", "wall_time_s", "fail_reason")


def open_existing(url: str):
    """Open a storage for reading, refusing to create a new SQLite file."""
    path = sqlite_path(url)
    if path is not None and not path.exists():
        raise StorageError(f"storage {url!r}: no database at {str(path)!r} (run `hpo run` first or pass --storage)")
    check_storage(url)
    return open_storage(url)


def load(url: str, study: str) -> optuna.Study:
    """Load ``study`` from ``url``; a missing study is a ``StorageError`` listing those present."""
    storage = open_existing(url)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if study not in names:
        raise StorageError(f"no study {study!r} in {url} (studies: {', '.join(names) or 'none'})")
    return optuna.load_study(study_name=study, storage=storage)


def _jsonable(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def trial_record(t: FrozenTrial) -> dict:
    """One trial as plain data (JSON-ready)."""
    return {
        "number": t.number,
        "state": t.state.name,
        "values": None if t.values is None else [_jsonable(v) for v in t.values],
        "params": t.params,
        "user_attrs": {k: _jsonable(v) for k, v in t.user_attrs.items()},
        "intermediate_values": {str(k): _jsonable(v) for k, v in sorted(t.intermediate_values.items())},
        "datetime_start": t.datetime_start.isoformat() if t.datetime_start else None,
        "datetime_complete": t.datetime_complete.isoformat() if t.datetime_complete else None,
        "duration_s": t.duration.total_seconds() if t.duration else None,
    }


def list_studies(url: str) -> list[dict]:
    """One row per study: name, directions, trial counts by state, best value(s)."""
    storage = open_existing(url)
    rows = []
    for s in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=s.study_name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        counts = state_counts(trials)
        best = None
        if counts["complete"]:
            best = [t.values for t in study.best_trials] if len(study.directions) > 1 else study.best_value
        rows.append({
            "study": s.study_name,
            "directions": [d.name.lower() for d in study.directions],
            "trials": len(trials),
            **counts,
            "best": best,
        })
    return rows


def state_counts(trials: list[FrozenTrial]) -> dict[str, int]:
    """How many of ``trials`` are COMPLETE, PRUNED, FAIL and RUNNING: ``{"complete", "pruned", "failed", "running"}``."""
    states = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "failed": TrialState.FAIL,
              "running": TrialState.RUNNING}
    return {name: sum(t.state == state for t in trials) for name, state in states.items()}


def best_of(study: optuna.Study) -> list[FrozenTrial]:
    """The best trial (single objective) or the Pareto front (multi-objective); [] before a trial is COMPLETE."""
    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        return []
    return study.best_trials if len(study.directions) > 1 else [study.best_trial]


def best_trials(url: str, study: str) -> list[dict]:
    """The best trial (single objective) or the Pareto front (multi-objective), as records."""
    best = best_of(load(url, study))
    if not best:
        raise StorageError(f"study {study!r} has no complete trial yet")
    return [trial_record(t) for t in best]


def format_table(rows: list[dict], columns: list[str]) -> str:
    """A plain fixed-width text table."""
    def cell(v) -> str:
        if isinstance(v, float):
            return f"{v:.5g}"
        if isinstance(v, (list, dict)):
            return json.dumps(v, default=str)
        return "" if v is None else str(v)

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def trials_rows(url: str, study: str) -> tuple[list[dict], list[str]]:
    """Rows and column names for ``hpo trials``: number, state, value(s), params, key attributes."""
    s = load(url, study)
    trials = s.get_trials(deepcopy=False)
    params = sorted({p for t in trials for p in t.params})
    value_cols = ["value"] if len(s.directions) == 1 else [f"value_{i}" for i in range(len(s.directions))]
    rows = []
    for t in trials:
        row = {"number": t.number, "state": t.state.name}
        for i, col in enumerate(value_cols):
            row[col] = None if t.values is None else t.values[i]
        row.update({p: t.params.get(p) for p in params})
        row.update({a: t.user_attrs.get(a) for a in SHOWN_ATTRS})
        rows.append(row)
    return rows, ["number", "state", *value_cols, *params, *SHOWN_ATTRS]


def export(url: str, study: str, fmt: str) -> str:
    """The study's trials as CSV (one row per trial, params and attributes flattened) or JSON."""
    s = load(url, study)
    trials = s.get_trials(deepcopy=False)
    if fmt == "json":
        doc = {
            "study": study,
            "directions": [d.name.lower() for d in s.directions],
            "user_attrs": s.user_attrs,
            "trials": [trial_record(t) for t in trials],
        }
        return json.dumps(doc, indent=2, default=str) + "\n"
    if fmt != "csv":
        raise StorageError(f"--format must be csv or json, got {fmt!r}")
    params = sorted({p for t in trials for p in t.params})
    attrs = sorted({a for t in trials for a in t.user_attrs})
    n_values = len(s.directions)
    header = ["number", "state", *(["value"] if n_values == 1 else [f"value_{i}" for i in range(n_values)]),
              "duration_s", *[f"params_{p}" for p in params], *[f"user_attrs_{a}" for a in attrs]]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for t in trials:
        values = t.values if t.values is not None else [None] * n_values
        writer.writerow([
            t.number, t.state.name, *values, t.duration.total_seconds() if t.duration else None,
            *[t.params.get(p) for p in params], *[t.user_attrs.get(a) for a in attrs],
        ])
    return buf.getvalue()


def write_atomically(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, so a failure never leaves half a file."""
    path = Path(path)
    if not path.parent.is_dir():
        raise StorageError(f"--output: directory {str(path.parent)!r} does not exist")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

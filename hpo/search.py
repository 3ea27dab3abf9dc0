"""The searcher: Tune asks it for trials, it asks Optuna (``study.ask``) and tells Optuna the outcome.

A ``ray.tune.search.Searcher`` on Optuna's public ask/tell API. It keeps a map from Tune trial id
to Optuna trial, so one Optuna trial is one Tune trial across Tune's restarts of a lost worker, and
an Optuna trial a dead or interrupted driver left RUNNING is continued, from its checkpoint, by a
new Tune trial after ``--resume`` (``continuing``).

What it records in the storage (the driver is the only writer):

- trial states: a trial the scheduler stopped is PRUNED (not COMPLETE with its low-budget value);
  a diverged or broken trial is FAIL with the reason in ``fail_reason``; a trial the driver was
  interrupted in stays RUNNING, resumable;
- an intermediate value at every validation the trial reports (once per step, across restarts);
- user attributes: final fixed-point residual, wall time, device, node, refined values, test
  metrics, the Ray trial id, the latest checkpoint's location;
- artifacts from the trial's last checkpoint: the trained solver (``keep_models``) and figures.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState
from ray.tune.search import Searcher

from hpo.spec import JobSpec
from workers import protocol as P

CHECKPOINT_ATTR = "checkpoint"  # user attribute: {"uri", "step"} of the trial's latest checkpoint
MIMETYPES = {".png": "image/png", ".json": "application/json", ".pt": "application/octet-stream"}


class StudySearch(Searcher):
    """Hands Optuna trials to Tune and records their results, states and artifacts in the study."""

    def __init__(
        self,
        *,
        spec: JobSpec,
        study: optuna.Study,
        storage: optuna.storages.BaseStorage,
        define_by_run: Callable[[optuna.Trial], None],
        new_trials: int,
        continuing: list[FrozenTrial],
        artifacts,
        out: Callable[[str], None],
        on_finished: Callable[[int, TrialState, list[float] | None, str], None],
    ):
        metric = [o.reported for o in spec.objectives]
        mode = [o.mode for o in spec.objectives]
        super().__init__(metric=metric if spec.multi_objective else metric[0], mode=mode if spec.multi_objective else mode[0])
        self.spec, self.study, self._storage, self._define_by_run = spec, study, storage, define_by_run
        self._keys = metric
        self._new_left = new_trials
        self._continuing = deque(continuing)
        self._artifacts, self._out, self._on_finished = artifacts, out, on_finished
        self._trials: dict[str, optuna.Trial] = {}  # Tune trial id -> Optuna trial
        self._reported: dict[str, set[int]] = {}
        self._last: dict[str, dict] = {}
        self._started: dict[str, float] = {}
        self._checkpoints: dict[str, object] = {}  # Tune trial id -> its latest ray.tune.Checkpoint
        self.tune_trials: dict[str, object] = {}  # Tune trial id -> Tune's Trial (its error file), from the driver
        self._done: set[str] = set()
        self.stopped_by_scheduler: set[str] = set()
        self.retry_reasons: dict[str, list[str]] = {}
        self.interrupted = False  # set on Ctrl-C: open trials stay RUNNING, to be resumed
        self._best: tuple[float, int] | None = None  # (value, number) of the best trial that keeps its model

    # --- Tune's side ---------------------------------------------------------------------

    def suggest(self, trial_id: str) -> dict | None:
        if self.interrupted:
            return Searcher.FINISHED
        if self._continuing:
            frozen = self._continuing.popleft()
            trial = self._trial(frozen.number)
            config = {**frozen.params, P.OPTUNA_TRIAL: frozen.number}
            checkpoint = frozen.user_attrs.get(CHECKPOINT_ATTR)
            if checkpoint:
                config[P.RESUME_FROM] = checkpoint["uri"]
            self._reported[trial_id] = set(frozen.intermediate_values)
        elif self._new_left > 0:
            self._new_left -= 1
            trial = self.study.ask()
            self._define_by_run(trial)
            config = {**trial.params, P.OPTUNA_TRIAL: trial.number}
            self._reported[trial_id] = set()
        else:
            return Searcher.FINISHED
        self._trials[trial_id] = trial
        self._started[trial_id] = time.monotonic()
        trial.set_user_attr("ray_trial_id", trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._last[trial_id] = result
        if not P.failure(result):
            self._report(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._done or trial_id not in self._trials:
            return
        last = result or self._last.get(trial_id) or {}
        reason = P.failure(last)
        if not reason and error:  # the task reports its own errors, so Tune saw the worker die (max_retries used up)
            retries = len(self.retry_reasons.get(trial_id, ()))
            trial = self.tune_trials.get(trial_id)
            reason = (f"its Ray worker was lost {retries + 1} time(s) (max_retries: {self.spec.max_retries}); "
                      f"last: {lost_reason(trial) if trial is not None else 'unknown'}")
        if not reason and not P.is_final(last) and self.interrupted:
            self._done.add(trial_id)  # stays RUNNING: `hpo run --resume` continues it from its checkpoint
            return
        self._finish(trial_id, last, reason)

    def save(self, checkpoint_path: str) -> None:
        # Resume reads the Optuna storage, the single source of truth; Tune's searcher state is not used.
        Path(checkpoint_path).write_text(self.spec.study)

    def restore(self, checkpoint_path: str) -> None:
        raise NotImplementedError("bmo-hpo resumes from the Optuna storage: use `hpo run SPEC --resume`")

    # --- called by the driver's Tune callback ---------------------------------------------

    def checkpointed(self, trial_id: str, checkpoint, step: int) -> None:
        """Remember ``checkpoint`` (of outer step ``step``) as the trial's latest and record where it is."""
        self._checkpoints[trial_id] = checkpoint
        trial = self._trials.get(trial_id)
        if trial is not None:
            trial.set_user_attr(CHECKPOINT_ATTR, {"uri": checkpoint_uri(checkpoint, self.spec.results_dir), "step": step})

    def number(self, trial_id: str) -> int | None:
        """The Optuna trial number of Tune trial ``trial_id`` (None before it is suggested)."""
        trial = self._trials.get(trial_id)
        return None if trial is None else trial.number

    def open_trials(self) -> list[str]:
        """Tune trial ids whose Optuna trial has not been told."""
        return [t for t in self._trials if t not in self._done]

    def finish_open_trials(self) -> None:
        """Close the trials Tune stopped without telling the searcher (a time budget): PRUNED."""
        for trial_id in self.open_trials():
            self.on_trial_complete(trial_id, self._last.get(trial_id))

    # --- Optuna's side -------------------------------------------------------------------

    def _trial(self, number: int) -> optuna.Trial:
        study_id = self._storage.get_study_id_from_name(self.study.study_name)
        return optuna.Trial(self.study, self._storage.get_trial_id_from_study_id_trial_number(study_id, number))

    def _report(self, trial_id: str, result: dict) -> None:
        if self.spec.multi_objective or result.get(P.VAL_STEP) != result.get(P.OUTER_STEP):
            return  # Optuna keeps intermediate values for one objective; report validations only
        value, step = result.get(self._keys[0]), int(result[P.OUTER_STEP])
        done = self._reported.setdefault(trial_id, set())
        if value is not None and math.isfinite(value) and step not in done:
            self._trials[trial_id].report(float(value), step)
            done.add(step)

    def _finish(self, trial_id: str, last: dict, reason: str | None) -> None:
        trial = self._trials[trial_id]
        values, note = None, ""
        if reason:
            state, note = TrialState.FAIL, reason
            trial.set_user_attr("fail_reason", reason)
        elif P.is_final(last):
            state = TrialState.COMPLETE
            values = [float(last[k]) for k in self._keys]
        else:
            state = TrialState.PRUNED
            by = "scheduler" if trial_id in self.stopped_by_scheduler else "driver"
            note = "stopped by the scheduler" if by == "scheduler" else "stopped by the driver (time budget)"
            trial.set_user_attr("stopped_by", by)
        if state != TrialState.FAIL and last:
            self._report(trial_id, last)  # Tune may pass the last result to on_trial_complete only
        self._record_attrs(trial, trial_id, last)
        if state == TrialState.COMPLETE:
            self._store_artifacts(trial, trial_id, values)
        self.study.tell(trial, values if values is None or len(values) > 1 else values[0], state=state)
        self._done.add(trial_id)
        self._on_finished(trial.number, state, values, note)

    def _record_attrs(self, trial: optuna.Trial, trial_id: str, last: dict) -> None:
        # Each attribute is one storage commit: record what a user needs, nothing Optuna already keeps.
        attrs = {
            "wall_time_s": round(time.monotonic() - self._started.get(trial_id, time.monotonic()), 3),
            "device": last.get(P.DEVICE),
            "node": last.get(P.NODE),
            "ray_node": last.get(P.RAY_NODE),
            "gpus": last.get(P.GPUS) or None,
            "final_step": last.get(P.OUTER_STEP),
            "fp_residual": last.get("val_fp_residual"),
            "traceback": last.get(P.TRIAL_TRACEBACK),
            "resumed_from": last.get("resumed_from") or None,
            "checkpoint_error": last.get("checkpoint_error"),
            "retries": len(self.retry_reasons.get(trial_id, ())) or None,
            "retry_reasons": self.retry_reasons.get(trial_id),
        }
        attrs.update({k: v for k, v in last.items() if k.startswith((P.REFINED_PREFIX, P.TEST_PREFIX))})
        for key, value in attrs.items():
            if value is not None and not (isinstance(value, float) and not math.isfinite(value)):
                trial.set_user_attr(key, value)

    def _keeps_model(self, number: int, values: list[float] | None) -> bool:
        """Whether trial ``number`` keeps its solver under ``keep_models`` (for ``best``: it is the best so far)."""
        keep = self.spec.keep_models
        if keep != "best" or self.spec.multi_objective:
            return keep != "none"
        value = values[0]
        sign = 1.0 if self.spec.objectives[0].mode == "min" else -1.0
        if self._best is None:
            best = [t for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                    if "artifact_solver" in t.user_attrs]
            self._best = min(((sign * t.value, t.number) for t in best), default=(math.inf, -1))
        if sign * value >= self._best[0]:
            return False
        old = self._best[1]
        self._best = (sign * value, number)
        if old >= 0:  # the earlier best gives its model up
            frozen = self.study.get_trials(deepcopy=False)[old]
            for key in ("artifact_solver", "artifact_solver_json"):
                artifact_id = frozen.user_attrs.get(key)
                if artifact_id:
                    self._artifacts.remove(artifact_id)
            self._trial(old).set_user_attr("model_dropped", "keep_models: best (a better trial took its place)")
        return True

    def _store_artifacts(self, trial: optuna.Trial, trial_id: str, values: list[float] | None) -> None:
        """Upload the solver and figures of the trial's last checkpoint to the artifact store."""
        from optuna.artifacts import upload_artifact

        checkpoint = self._checkpoints.get(trial_id)
        if checkpoint is None:
            return
        keep_model = self._keeps_model(trial.number, values)
        with checkpoint.as_directory() as directory:
            for path in sorted(Path(directory).iterdir()):
                if path.name in (P.SOLVER_FILE, P.SOLVER_META_FILE):
                    if not keep_model:
                        continue
                    key = "artifact_solver" if path.name == P.SOLVER_FILE else "artifact_solver_json"
                elif path.suffix == P.FIGURE_SUFFIX:
                    key = f"artifact_{path.stem}"
                else:
                    continue
                artifact_id = upload_artifact(artifact_store=self._artifacts, file_path=str(path), study_or_trial=trial,
                                              mimetype=MIMETYPES.get(path.suffix))
                trial.set_user_attr(key, artifact_id)


def lost_reason(trial) -> str:
    """One line on why Tune's ``trial`` failed, from the error file Tune writes for it."""
    text = ""
    try:
        if trial.error_file:
            text = Path(trial.error_file).read_text(errors="replace")
    except OSError:
        pass
    text = text.rsplit("Failure # ", 1)[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if "node" in line and ("died" in line or "dead" in line):
            return line[:300]  # e.g. "The actor is dead because its node has died. Node Id: ..."
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line[:300]
    return lines[-1][:300] if lines else "its worker failed"


def checkpoint_uri(checkpoint, results_dir: str) -> str:
    """A location of ``checkpoint`` that ``ray.tune.Checkpoint(uri)`` opens on any node: the path, with
    the results directory's scheme (``s3://``, ``gs://``) when it is remote."""
    path = str(checkpoint.path)
    if "://" in results_dir and "://" not in path:
        return f"{results_dir.split('://', 1)[0]}://{path}"
    return path

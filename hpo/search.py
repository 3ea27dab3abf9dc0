"""The searcher: Tune asks it for trials, it asks Optuna (``study.ask``) and tells Optuna the outcome.

A ``ray.tune.search.Searcher`` on Optuna's public ask/tell API. It keeps a map from Tune trial id
to Optuna trial, so one Optuna trial is one Tune trial across Tune's restarts of a lost worker, and
an Optuna trial a dead or interrupted driver left RUNNING is continued, from its checkpoint, by a
new Tune trial after ``--resume`` (``continuing``).

What it records in the storage (the driver is the only writer):

- trial states: a trial the scheduler stopped is PRUNED (not COMPLETE with its low-budget value);
  a trial that diverged in training is PRUNED with the constraint ``diverged`` = 1 (infeasible: the
  samplers learn from it, which they never do from FAIL) and ``fail_reason``; a broken trial, or one
  whose last step has no usable value (not finite, or a fixed-point residual past
  ``protocol.DIVERGED_RESIDUAL``), is FAIL with ``fail_reason``; a trial the driver was interrupted
  in stays RUNNING, resumable;
- an intermediate value at every validation the trial reports (once per step, across restarts);
- user attributes: final fixed-point residual, wall time, device, node, refined values, test
  metrics, the Ray trial id, the latest checkpoint's location;
- artifacts from the trial's last checkpoint: the trained solver (``keep_models``) and figures.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import optuna
from optuna.trial import FrozenTrial, TrialState
from ray.tune.search import Searcher

from hpo.spec import JobSpec
from hpo.writer import StorageWriter, is_outage
from workers import protocol as P

CHECKPOINT_ATTR = "checkpoint"  # user attribute: {"uri", "step"} of the trial's latest checkpoint
MODELS_DROPPED_ATTR = "bmo_hpo_models_dropped"  # study user attribute: {trial number: why its model was removed}
MIMETYPES = {".png": "image/png", ".json": "application/json", ".pt": "application/octet-stream"}


class _Ended(NamedTuple):
    """What the driver still needs of a trial once Tune is done with it."""

    seconds: float  # wall time since it was handed to Tune
    retry_reasons: list[str]


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
        writer: StorageWriter,
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
        self._artifacts, self._writer, self._out, self._on_finished = artifacts, writer, out, on_finished
        self._trials: dict[str, optuna.Trial] = {}  # Tune trial id -> Optuna trial
        self._reported: dict[str, set[int]] = {}
        self._last: dict[str, dict] = {}
        self._started: dict[str, float] = {}
        self._superseded: dict[str, str] = {}  # continued trials: the previous run's checkpoint, removed once replaced
        self._checkpoints: dict[str, tuple] = {}  # Tune trial id -> (its latest ray.tune.Checkpoint, its step)
        self._checkpoint_added = threading.Condition()  # notified by `checkpointed`, awaited by `_final_checkpoint`
        self.tune_trials: dict[str, object] = {}  # Tune trial id -> Tune's Trial (its error file), from the driver
        self._done: set[str] = set()
        self.stopped_by_scheduler: set[str] = set()
        self.retry_reasons: dict[str, list[str]] = {}
        self.interrupted = False  # set on Ctrl-C: open trials stay RUNNING, to be resumed
        self._best: tuple[float, int] | None = None  # (value, number) of the best trial that keeps its model

    # --- Tune's side ---------------------------------------------------------------------

    def suggest(self, trial_id: str) -> dict | None:
        if self.interrupted or self._writer.failed:
            return Searcher.FINISHED
        if not (self._continuing or self._new_left > 0):
            return Searcher.FINISHED
        if not self._continuing and not self._writer.drain(timeout=2.0):
            return None  # the sampler must see what finished trials told; the storage is behind (an outage)
        try:  # asking needs the storage; in an outage no new trial starts (Tune asks again later)
            trial, config, reported = self._next()
        except Exception as e:
            if is_outage(e):
                return None
            raise
        self._trials[trial_id] = trial
        self._reported[trial_id] = reported
        if config.get(P.RESUME_FROM):
            self._superseded[trial_id] = config[P.RESUME_FROM]
        self._started[trial_id] = time.monotonic()
        self._writer.submit(lambda: trial.set_user_attr("ray_trial_id", trial_id))
        return config

    def _next(self) -> tuple[optuna.Trial, dict, set[int]]:
        """The next trial to run: an interrupted one to continue, else a new one from ``study.ask``."""
        if self._continuing:
            frozen = self._continuing[0]
            trial = self._trial(frozen.number)
            self._continuing.popleft()
            config = {**frozen.params, P.OPTUNA_TRIAL: frozen.number}
            checkpoint = frozen.user_attrs.get(CHECKPOINT_ATTR)
            if checkpoint:
                config[P.RESUME_FROM] = checkpoint["uri"]
            return trial, config, set(frozen.intermediate_values)
        trial = self.study.ask()
        self._new_left -= 1
        self._define_by_run(trial)
        return trial, {**trial.params, P.OPTUNA_TRIAL: trial.number}, set()

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._last[trial_id] = result
        item = None if P.failure(result) else self._intermediate(trial_id, result)
        if item is not None:
            trial, value, step = item
            self._writer.submit(lambda: trial.report(value, step))

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
        self._done.add(trial_id)
        # What the driver keeps per trial ends here (flat memory over thousands of trials)
        ended = _Ended(time.monotonic() - self._started.pop(trial_id, time.monotonic()), self.retry_reasons.pop(trial_id, []))
        self._last.pop(trial_id, None)
        self.tune_trials.pop(trial_id, None)
        if not reason and not P.is_final(last) and (self.interrupted or self._writer.failed):
            self._trials.pop(trial_id, None)
            self._checkpoints.pop(trial_id, None)
            self._done.discard(trial_id)
            return  # stays RUNNING: `hpo run --resume` continues it from its checkpoint
        self._writer.submit(lambda: self._finish(trial_id, last, reason, ended))

    def __getstate__(self) -> dict:
        # Tune pickles its search algorithm into the experiment directory (for Tuner.restore, which bmo-hpo
        # does not use: it resumes from the storage); threads, storages and callbacks do not pickle
        return {"spec": self.spec}

    def __setstate__(self, state: dict) -> None:
        self.spec = state["spec"]

    def save(self, checkpoint_path: str) -> None:
        # Resume reads the Optuna storage, the single source of truth; Tune's searcher state is not used.
        Path(checkpoint_path).write_text(self.spec.study)

    def restore(self, checkpoint_path: str) -> None:
        raise NotImplementedError("bmo-hpo resumes from the Optuna storage: use `hpo run SPEC --resume`")

    # --- called by the driver's Tune callback ---------------------------------------------

    def checkpointed(self, trial_id: str, checkpoint, step: int) -> None:
        """Remember ``checkpoint`` (of outer step ``step``) as the trial's latest and record where it is."""
        trial = self._trials.get(trial_id)
        if trial is None:
            return
        with self._checkpoint_added:
            previous = self._checkpoints.get(trial_id)
            self._checkpoints[trial_id] = (checkpoint, step)
            self._checkpoint_added.notify_all()
        where = {"uri": checkpoint_uri(checkpoint, self.spec.results_dir), "step": step}
        self._writer.submit(lambda: trial.set_user_attr(CHECKPOINT_ATTR, where))
        # Only the latest checkpoint is kept per trial, across runs too, removed once the storage points at the new
        # one. (Tune's own num_to_keep would do it within a run, but forces a rewrite of its experiment state,
        # every trial as JSON, after each checkpoint: a third of the driver's time in a 1,000-trial run.)
        old = self._superseded.pop(trial_id, None) or (None if previous is None else checkpoint_uri(previous[0], self.spec.results_dir))
        if old is not None and old != where["uri"]:
            self._writer.submit(lambda: remove_checkpoint(old))

    def _final_checkpoint(self, trial_id: str, step: int | None, wait_s: float = 30.0):
        """The trial's checkpoint of outer step ``step`` (its last). Tune may tell the searcher that a trial
        ended before its callbacks see the last checkpoint, so this waits for it (on the writer's thread)."""
        with self._checkpoint_added:
            self._checkpoint_added.wait_for(lambda: self._checkpoints.get(trial_id, (None, None))[1] == step, timeout=wait_s)
            checkpoint, at = self._checkpoints.get(trial_id, (None, None))
        return checkpoint if at == step else None

    def remaining(self) -> int:
        """Trials not yet handed to Tune: interrupted ones to continue and new ones to ask for."""
        return len(self._continuing) + self._new_left

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
        self._writer.drain()

    # --- Optuna's side -------------------------------------------------------------------

    def _trial(self, number: int) -> optuna.Trial:
        study_id = self._storage.get_study_id_from_name(self.study.study_name)
        return optuna.Trial(self.study, self._storage.get_trial_id_from_study_id_trial_number(study_id, number))

    def _intermediate(self, trial_id: str, result: dict) -> tuple[optuna.Trial, float, int] | None:
        """(trial, value, step) of the intermediate value ``result`` holds, once per step; None if none."""
        if self.spec.multi_objective or result.get(P.VAL_STEP) != result.get(P.OUTER_STEP):
            return None  # Optuna keeps intermediate values for one objective; report validations only
        value, step = result.get(self._keys[0]), int(result[P.OUTER_STEP])
        done = self._reported.setdefault(trial_id, set())
        if value is None or not math.isfinite(value) or step in done:
            return None
        done.add(step)
        return self._trials[trial_id], float(value), step

    def _finish(self, trial_id: str, last: dict, reason: str | None, ended: _Ended) -> None:
        """Record a finished trial: state, last value, attributes, artifacts (on the writer's thread)."""
        trial = self._trials[trial_id]
        values, note = None, ""
        if last.get(P.DIVERGED):
            # Optuna's samplers skip FAIL trials; TPE, GP and NSGA-II read the constraints of PRUNED ones, so a
            # diverged trial is PRUNED and infeasible: the sampler learns to avoid where it diverged
            state, note = TrialState.PRUNED, reason
            trial.set_user_attr("fail_reason", reason)
            trial.set_constraint("diverged", 1.0)
        elif reason:
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
        item = self._intermediate(trial_id, last) if not reason and last else None
        if item is not None:  # Tune may pass the last result to on_trial_complete only
            trial.report(item[1], item[2])
        self._record_attrs(trial, last, ended)
        checkpoint = self._final_checkpoint(trial_id, last.get(P.OUTER_STEP)) if state == TrialState.COMPLETE else None
        if checkpoint is not None:
            try:
                self._store_artifacts(trial, checkpoint, values)
            except Exception as e:
                if is_outage(e):
                    raise  # the writer waits the outage out and does all of this again
                self._out(f"warning: trial {trial.number}'s solver and figures were not stored: {type(e).__name__}: {e}")
        # skip_if_finished: told already by an attempt whose answer an outage lost; never twice
        self.study.tell(trial, values if values is None or len(values) > 1 else values[0], state=state, skip_if_finished=True)
        self._on_finished(trial.number, state, values, note)
        self._trials.pop(trial_id, None)
        self._reported.pop(trial_id, None)
        self._checkpoints.pop(trial_id, None)
        self._done.discard(trial_id)

    def _record_attrs(self, trial: optuna.Trial, last: dict, ended: _Ended) -> None:
        # Each attribute is one storage commit: record what a user needs, nothing Optuna already keeps.
        attrs = {
            "wall_time_s": round(ended.seconds, 3),
            "cpu_time_s": None if last.get(P.CPU_SECONDS) is None else round(float(last[P.CPU_SECONDS]), 3),
            "device": last.get(P.DEVICE),
            "node": last.get(P.NODE),
            "ray_node": last.get(P.RAY_NODE),
            "gpus": last.get(P.GPUS) or None,
            "final_step": last.get(P.OUTER_STEP),
            "fp_residual": last.get("val_fp_residual"),
            "traceback": last.get(P.TRIAL_TRACEBACK),
            "resumed_from": last.get("resumed_from") or None,
            "checkpoint_error": last.get("checkpoint_error"),
            "retries": len(ended.retry_reasons) or None,
            "retry_reasons": ended.retry_reasons or None,
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
            dropped = self.study.user_attrs.get(MODELS_DROPPED_ATTR, {})
            best = [t for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                    if "artifact_solver" in t.user_attrs and str(t.number) not in dropped]
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
            # a finished trial's attributes are frozen: the study records which models are gone
            dropped = dict(self.study.user_attrs.get(MODELS_DROPPED_ATTR, {}))
            dropped[str(old)] = f"keep_models: best (trial {number} took its place)"
            self.study.set_user_attr(MODELS_DROPPED_ATTR, dropped)
        return True

    def _store_artifacts(self, trial: optuna.Trial, checkpoint, values: list[float] | None) -> None:
        """Upload the solver and figures of the trial's last checkpoint to the artifact store."""
        from optuna.artifacts import upload_artifact

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


def remove_checkpoint(uri: str) -> None:
    """Delete the checkpoint directory at ``uri`` (a path, or ``s3://``, ``gs://``), if it is still there."""
    import pyarrow.fs

    filesystem, path = pyarrow.fs.FileSystem.from_uri(uri if "://" in uri else str(Path(uri).resolve()))
    if filesystem.get_file_info(path).type == pyarrow.fs.FileType.Directory:
        filesystem.delete_dir(path)


def checkpoint_uri(checkpoint, results_dir: str) -> str:
    """A location of ``checkpoint`` that ``ray.tune.Checkpoint(uri)`` opens on any node: the path, with
    the results directory's scheme (``s3://``, ``gs://``) when it is remote."""
    path = str(checkpoint.path)
    if "://" in results_dir and "://" not in path:
        return f"{results_dir.split('://', 1)[0]}://{path}"
    return path

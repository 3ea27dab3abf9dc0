"""Run a tuning job: Ray Tune runs the trials, ``hpo.search.StudySearch`` chooses and records them.

``run_job`` validates the spec (nothing is written before), joins or starts Ray
(``hpo.ray_cluster``), prepares the study (``hpo.resume``: a resumed study continues the trials a
previous driver left running), and runs Tune with the searcher, a scheduler and a callback that
relays restarts, checkpoints and progress. A trial whose worker or node is lost is restarted by
Tune from its latest checkpoint (``max_retries`` times, elsewhere if its node is gone) and stays
one Optuna trial. Ctrl-C stops the job and leaves its running trials resumable.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import TrialState
from ray.tune import Callback, Stopper
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from hpo.errors import SpecError, StorageError
from hpo.lease import Lease
from hpo.progress import Progress
from hpo.ray_cluster import check_resources, check_results_dir, connect_ray
from hpo.results import best_of, state_counts
from hpo.resume import SPEC_ATTR, prepare_study, spec_fingerprint
from hpo.search import StudySearch, lost_reason
from hpo.seeding import seed_study, source_study
from hpo.space import define_by_run, make_sampler, startup_trials
from hpo.spec import DEFAULT_STORAGE, JobSpec
from hpo.storage import check_storage, open_artifact_store, open_storage
from hpo.task_check import check_against_task
from hpo.writer import StorageWriter
from workers import protocol as P


TUNE_RUN_TRIALS = 1000  # trials per Tune run (see _fit)


@dataclass
class JobResult:
    """Counts of the study's trials and its best trial(s) after a run."""

    study: str
    storage: str
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0  # left resumable by an interrupted run
    interrupted: bool = False
    best: list[dict] = field(default_factory=list)  # [{"number", "values", "params"}]
    metric: str = ""  # the (first) objective's metric
    median: float | None = None  # median value of the complete trials (single objective)


class TrialWatch(Callback):
    """Relays Tune's events to the searcher and the progress line: starts, restarts, checkpoints."""

    def __init__(self, search: StudySearch, progress: Progress, max_retries: int):
        self.search, self.progress, self.max_retries = search, progress, max_retries

    def __getstate__(self) -> dict:
        return {}  # pickled by Tune with the experiment, never used from there (see StudySearch.__getstate__)

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self.search.tune_trials[trial.trial_id] = trial  # for the reason when its worker is lost for good
        self.progress.started()

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        reasons = self.search.retry_reasons.setdefault(trial.trial_id, [])
        reasons.append(lost_reason(trial))
        number = self.search.number(trial.trial_id)
        name = f"trial {number}" if number is not None else f"Tune trial {trial.trial_id}"
        self.progress.out(f"{name}: {reasons[-1]}; restarting it from its latest checkpoint "
                          f"(retry {len(reasons)} of {self.max_retries})")

    def on_checkpoint(self, iteration: int, trials: list, trial, checkpoint, **info) -> None:
        self.search.checkpointed(trial.trial_id, checkpoint, int((trial.last_result or {}).get(P.OUTER_STEP, 0)))

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        self.progress.heartbeat()


class PruneTrackingASHA(ASHAScheduler):
    """ASHA that remembers which trials it stopped before their last step."""

    def __init__(self, stopped: set[str], **kwargs):
        super().__init__(**kwargs)
        self.stopped = stopped

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP and not P.is_final(result):
            self.stopped.add(trial.trial_id)
        return decision


class Interrupt(Stopper):
    """Ends the experiment after a Ctrl-C (SIGINT): Tune stops the trials, the searcher leaves them open."""

    def __init__(self, search: StudySearch, writer: StorageWriter, out: Callable[[str], None]):
        self.search, self.writer, self.out = search, writer, out

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def __getstate__(self) -> dict:
        return {}  # pickled by Tune with the experiment, never used from there (see StudySearch.__getstate__)

    def stop_all(self) -> bool:
        return self.search.interrupted or self.writer.failed is not None

    def handle(self, signum, frame) -> None:
        if self.search.interrupted:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.search.interrupted = True
        self.out("interrupted: stopping the running trials (they stay resumable; Ctrl-C again to quit at once)")


def _outer_steps(spec: JobSpec) -> int:
    from workers import BMOConfig  # noqa: PLC0415  (torch is imported here, on purpose, lazily)

    for p in spec.space:
        if p.name == "outer_steps":
            return int(p.high if p.type != "categorical" else max(p.choices))
    return int(spec.fixed.get("outer_steps", BMOConfig.outer_steps))



def _startup_note(spec: JobSpec, told: int) -> str:
    """How many of the study's first trials the sampler draws at random before it models the results
    (``told``: the study's COMPLETE and PRUNED trials, those the samplers count)."""
    startup = startup_trials(spec.sampler.name, spec.sampler.n_startup_trials)
    if startup is None:
        return ""
    left = max(0, startup - told)
    if left == 0:
        return f" ({spec.sampler.name}: past its {startup} random start-up trials)"
    return f" ({spec.sampler.name}: {left} random start-up trials, then guided by the results)"


def _quiet_libraries() -> None:
    import logging

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def validate(spec: JobSpec) -> JobSpec:
    """Every check that needs no Ray and writes nothing to the study: the spec against the task, the storage
    reachable, ``init_from`` a solver that fits the task. Returns the spec with ``init_from`` as a file."""
    check_against_task(spec)
    check_storage(spec.storage, create_dirs=spec.storage == DEFAULT_STORAGE)
    if spec.seed_from is not None:
        source_study(spec)
    if spec.init_from is None:
        return spec
    return dataclasses.replace(spec, init_from=check_init_from(spec, resolve_init_from(spec)))


def resolve_init_from(spec: JobSpec) -> str:
    """The solver file ``init_from`` names: the file itself, or a study's trial's model fetched into results_dir."""
    if isinstance(spec.init_from, str):
        return str(Path(spec.init_from).expanduser().resolve())
    from hpo.models import fetch_solver

    source = spec.init_from
    storage = source.get("storage", spec.storage)
    trial = source.get("trial")
    name = f"{source['study'].replace('/', '_')}-trial{'best' if trial is None else trial}-solver.pt"
    directory = Path(spec.results_dir) / "init" if "://" not in spec.results_dir else Path("hpo-results") / "init"
    directory.mkdir(parents=True, exist_ok=True)
    return str(fetch_solver(storage, source["study"], trial, directory.resolve() / name))


def check_init_from(spec: JobSpec, path: str) -> str:
    """``path`` when its solver's ω fits the task's problem; else a ``SpecError`` naming the first mismatch."""
    from workers import make_problem
    from workers.solver import SolverFileError, load_weights

    try:
        load_weights(make_problem(spec.task, spec.task_args), path)
    except SolverFileError as e:
        raise SpecError(f"init_from: {e}") from None
    return path



def run_job(spec: JobSpec, *, address: str | None = None, resume: bool = False, out: Callable[[str], None] = print) -> JobResult:
    """Run (or resume) the tuning job of ``spec`` and return the study's counts and best trial(s)."""
    _quiet_libraries()
    spec = validate(spec)
    ray_dashboard = connect_ray(address, spec.task)
    if ray_dashboard:
        out(f"Ray dashboard: {ray_dashboard}")
    check_resources(spec, out)
    check_results_dir(spec, out)
    storage = open_storage(spec.storage)
    leases: list[Lease] = []

    def take(study: optuna.Study) -> None:
        if not leases:
            lease = Lease(study, spec.driver_lease, out)
            lease.acquire()
            leases.append(lease)  # only a lease taken is given back

    try:
        return _run(spec, storage, resume, take, out)
    finally:
        for lease in leases:
            lease.release()


def _run(spec: JobSpec, storage, resume: bool, take: Callable[[optuna.Study], None], out: Callable[[str], None]) -> JobResult:
    counts, continuing = prepare_study(spec, storage, resume, out, take)
    finished = sum(counts.values())
    new = max(0, spec.trials - finished - len(continuing))
    result = JobResult(spec.study, spec.storage)
    if new + len(continuing) == 0:
        out(f"study {spec.study!r} already has {finished} finished trials (asked: {spec.trials}); nothing to run")
        return summarize(spec, storage, result)

    study = _open_study(spec, storage, finished + len(continuing), take, out)
    progress = Progress(spec, spec.trials, out)
    progress.counts.update(counts)  # resumed: count what is already there
    writer = StorageWriter(spec.storage, spec.storage_retry_window, out)
    search = StudySearch(spec=spec, study=study, storage=storage, define_by_run=define_by_run(spec), new_trials=new,
                         continuing=continuing, artifacts=open_artifact_store(spec.storage), writer=writer, out=out,
                         on_finished=progress.finished)
    scheduler = _scheduler(spec, search.stopped_by_scheduler)
    again = f", continuing {len(continuing)}" if continuing else ""
    out(f"study {spec.study!r} in {spec.storage}: running {new} new trials{again}, {spec.concurrency} at a time"
        f"{_startup_note(spec, counts.get(TrialState.COMPLETE, 0) + counts.get(TrialState.PRUNED, 0))}")
    interrupt = Interrupt(search, writer, out)
    try:
        _fit(spec, search, scheduler, TrialWatch(search, progress, spec.max_retries), interrupt, new + len(continuing))
    finally:
        if not search.interrupted and writer.failed is None:
            search.finish_open_trials()
        writer.drain()
    if writer.failed is not None:  # the trials it could not record stay RUNNING, resumable
        raise StorageError(f"{writer.failed}; the job stopped, and `hpo run SPEC --resume` continues it")
    result.interrupted = search.interrupted
    return summarize(spec, storage, result)


def _open_study(spec: JobSpec, storage, existing: int, take: Callable[[optuna.Study], None],
                out: Callable[[str], None]) -> optuna.Study:
    """Create (or load) the study with the spec's sampler; a new one records the spec and takes its seeds."""
    directions = ["minimize" if o.mode == "min" else "maximize" for o in spec.objectives]
    seed = None if spec.sampler.seed is None else spec.sampler.seed + existing  # fresh draws after a resume
    study = optuna.create_study(storage=storage, study_name=spec.study, directions=directions,
                                sampler=make_sampler(spec.sampler.name, seed, spec.sampler.n_startup_trials), load_if_exists=True)
    if SPEC_ATTR not in study.user_attrs:
        study.set_user_attr(SPEC_ATTR, spec_fingerprint(spec))
        take(study)
        if spec.seed_from is not None:  # a new study: its first trials are another study's best
            seed_study(spec, study, out)
    return study


def _scheduler(spec: JobSpec, stopped: set[str]) -> TrialScheduler:
    """Tune's scheduler for the spec: ASHA on the outer step (remembering whom it stopped), or FIFO."""
    if spec.scheduler.name != "asha":
        return FIFOScheduler()
    return PruneTrackingASHA(
        stopped,
        time_attr=P.OUTER_STEP,
        metric=spec.objectives[0].reported,
        mode=spec.objectives[0].mode,
        grace_period=spec.scheduler.grace_period,
        max_t=spec.scheduler.max_t or _outer_steps(spec),
        reduction_factor=spec.scheduler.reduction_factor,
    )


def _fit(spec: JobSpec, search: StudySearch, scheduler, watch: TrialWatch, interrupt: Interrupt, num_samples: int) -> None:
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the legacy reporter with verbose=0 prints nothing
    # The Optuna storage keeps every result; Tune's per-trial JSON/CSV/TensorBoard files would only cost time.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # ours (Interrupt) leaves the trials resumable
    # Tune's experiment state (every trial of the run as JSON) serves Tuner.restore, which bmo-hpo does not use
    # (it resumes from the storage): written every 10 minutes and at the end, not every few seconds.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "600")
    name = f"{spec.study.replace('/', '_')}-{time.strftime('%Y%m%d-%H%M%S')}"
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, interrupt.handle)
    start = time.monotonic()
    try:
        # Tune keeps every trial of a run in memory and in its experiment state, which it rewrites as
        # it goes: a long study runs as several Tune runs of TUNE_RUN_TRIALS trials, so the driver's
        # memory and speed do not depend on how many trials came before (the searcher and the
        # scheduler carry over)
        for part in range(1, 1 + math.ceil(num_samples / TUNE_RUN_TRIALS)):
            left = search.remaining()
            budget = None if spec.time_budget is None else spec.time_budget - (time.monotonic() - start)
            if left == 0 or (budget is not None and budget <= 0) or search.interrupted or interrupt.writer.failed:
                break
            run_name = name if part == 1 else f"{name}-part{part}"
            _tuner(spec, search, scheduler, watch, interrupt, min(left, TUNE_RUN_TRIALS), budget, run_name).fit()
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _job_settings(spec: JobSpec) -> dict:
    """What every trial of the job needs besides its own parameters (``workers.trainable``'s ``job``)."""
    return {
        "task": spec.task,
        "task_args": spec.task_args,
        "fixed": spec.fixed,
        "objectives": [(o.reported, o.mode) for o in spec.objectives],
        "objective_value": spec.objectives[0].value,
        "threads": max(1, int(spec.resources.cpu)),
        "artifacts": spec.artifacts,
        "checkpoint_every": spec.checkpoint_every,
        "keep_models": spec.keep_models,
        "init_from": spec.init_from,
    }


def _tuner(spec: JobSpec, search: StudySearch, scheduler, watch: TrialWatch, interrupt: Interrupt, num_samples: int,
           budget: float | None, name: str):
    """One Tune run of ``num_samples`` trials of the job."""
    from ray import tune

    from workers.trainable import trainable

    resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    results_dir = spec.results_dir if "://" in spec.results_dir else str(Path(spec.results_dir).resolve())
    return tune.Tuner(
        tune.with_resources(tune.with_parameters(trainable, job=_job_settings(spec)), resources),
        tune_config=tune.TuneConfig(
            search_alg=search,
            scheduler=scheduler,
            num_samples=num_samples,
            max_concurrent_trials=spec.concurrency,
            time_budget_s=budget,
            reuse_actors=True,  # saves a process start (and a torch import) per trial
            trial_dirname_creator=lambda trial: f"trial-{trial.config.get(P.OPTUNA_TRIAL)}-{trial.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=results_dir,
            verbose=0,
            stop=interrupt,
            # Only a lost worker or node reaches Tune as an error (the trainable reports the task's own
            # errors as results), so every Tune retry is a restart on a healthy node, never a rerun of a bug.
            failure_config=tune.FailureConfig(max_failures=spec.max_retries),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),  # the searcher removes old ones
            callbacks=[watch],
        ),
    )


def summarize(spec: JobSpec, storage, result: JobResult) -> JobResult:
    """Fill ``result`` with the study's state counts and best trial(s); refresh the study's dashboard plots."""
    from hpo.plots import save_study_plots

    study = optuna.load_study(study_name=spec.study, storage=storage)
    save_study_plots(study, spec.objectives[0].metric, spec.fixed)
    trials = study.get_trials(deepcopy=False)
    counts = state_counts(trials)
    result.complete, result.pruned, result.failed, result.running = (counts[k] for k in ("complete", "pruned", "failed", "running"))
    result.metric = spec.objectives[0].metric
    result.best = [{"number": t.number, "values": t.values, "params": t.params} for t in best_of(study)]
    if result.complete and not spec.multi_objective:
        result.median = statistics.median(t.value for t in trials if t.state == TrialState.COMPLETE)
    return result


def print_result(result: JobResult, out: Callable[[str], None] = print, resume_command: str = "hpo run SPEC --resume") -> None:
    """The closing lines of ``hpo run``: counts, then the best value(s) and parameters, and how to resume."""
    running = f", {result.running} left running" if result.running else ""
    out(f"study {result.study!r}: {result.complete} complete, {result.pruned} pruned, {result.failed} failed{running}")
    if not result.best:
        out("no trial completed")
    for b in result.best:
        out(f"best trial {b['number']}: values={b['values']} params={json.dumps(b['params'])}")
    if result.median is not None and result.complete > 1:
        out(f"best {result.metric}={result.best[0]['values'][0]:.4g} against a median of {result.median:.4g} "
            f"over the {result.complete} complete trials")
    storage = "" if result.storage == DEFAULT_STORAGE else f" --storage {result.storage}"
    out(f"dashboard: hpo dashboard{storage}  (then open http://127.0.0.1:8080/dashboard)")
    if result.interrupted:
        out(f"the run was interrupted; {result.running} trials continue from their checkpoints with: {resume_command}")


__all__ = ["JobResult", "print_result", "run_job", "summarize", "validate"]

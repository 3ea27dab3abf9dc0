"""Run a tuning job: Ray Tune runs the trials, OptunaSearch (bound to the storage) chooses them.

What this adds to plain Tune + OptunaSearch (see DESIGN.md, "Facts"):

- trial states: a trial ASHA stopped is PRUNED (not COMPLETE with its low-budget
  value); a diverged or broken trial is FAIL with the reason in its user
  attributes; the final step's value is reported as an intermediate value too;
- fault tolerance: a trial whose worker or node is lost is restarted by Tune
  (``max_retries`` times, elsewhere if its node is gone) and stays one Optuna
  trial, RUNNING until the retry finishes; an error in the task's own code is
  never retried (the trainable reports it, see ``workers.trainable``);
- user attributes per trial: final fixed-point residual, wall time, device, node,
  refined values of the searched hyper-training variables, the Ray trial id;
- resume from the storage, the single source of truth: trials left RUNNING by a
  killed driver are marked FAIL ("interrupted") and enqueued again with the same
  parameters, and only the trials still missing are run;
- validation before anything is written, and live progress on stdout.
"""

from __future__ import annotations

import base64
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import TrialState
from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from hpo.errors import ClusterError, StorageError
from hpo.space import define_by_run, make_sampler
from hpo.spec import DEFAULT_STORAGE, JobSpec, check_against_task
from hpo.storage import check_storage, find_study, open_artifact_store, open_storage

INTERRUPTED = "interrupted: the driver stopped before the trial finished"
SPEC_ATTR = "bmo_hpo_spec"
PROGRESS_EVERY_S = 30.0


@dataclass
class JobResult:
    """Counts of the study's finished trials and its best trial(s) after a run."""

    study: str
    storage: str
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    best: list[dict] = field(default_factory=list)  # [{"number", "values", "params"}]


class Progress:
    """Live counts of the job printed as one line per event (and a heartbeat while trials run)."""

    def __init__(self, spec: JobSpec, total: int, out: Callable[[str], None]):
        self.spec, self.total, self.out = spec, total, out
        self.start = time.monotonic()
        self.running = 0
        self.counts = {TrialState.COMPLETE: 0, TrialState.PRUNED: 0, TrialState.FAIL: 0}
        self.best: tuple[float, int] | None = None
        self.last_print = self.start

    def started(self) -> None:
        self.running += 1

    def finished(self, number: int, state: TrialState, values: list[float] | None, note: str = "") -> None:
        self.running = max(0, self.running - 1)
        self.counts[state] += 1
        if state == TrialState.COMPLETE and values and not self.spec.multi_objective:
            better = (lambda a, b: a < b) if self.spec.objectives[0].mode == "min" else (lambda a, b: a > b)
            if self.best is None or better(values[0], self.best[0]):
                self.best = (values[0], number)
        shown = "" if values is None else " " + ", ".join(f"{o.metric}={v:.5g}" for o, v in zip(self.spec.objectives, values))
        self.out(f"trial {number} {state.name.lower()}{shown}{(' (' + note + ')') if note else ''}")
        self.line()

    def line(self) -> None:
        self.last_print = time.monotonic()
        c = self.counts
        finished = sum(c.values())
        best = ""
        if self.best is not None:
            best = f" | best {self.spec.objectives[0].metric}={self.best[0]:.5g} (trial {self.best[1]})"
        self.out(
            f"[{time.monotonic() - self.start:7.1f}s] {finished}/{self.total} finished: {c[TrialState.COMPLETE]} complete, "
            f"{c[TrialState.PRUNED]} pruned, {c[TrialState.FAIL]} failed; {self.running} running{best}"
        )

    def heartbeat(self) -> None:
        if time.monotonic() - self.last_print >= PROGRESS_EVERY_S:
            self.line()


class StudySearch(OptunaSearch):
    """OptunaSearch that records the right trial state, the final step, and the trial's user attributes."""

    def __init__(self, *, spec: JobSpec, stopped_by_scheduler: set[str], progress: Progress, **kwargs):
        super().__init__(**kwargs)
        self._spec, self._stopped, self._progress = spec, stopped_by_scheduler, progress
        self._keys = [o.reported for o in spec.objectives]
        self._last: dict[str, dict] = {}
        self._reported: dict[str, set[int]] = {}
        self._artifact_store = None
        self._started: dict[str, float] = {}
        self._tune_trials: dict = {}  # trial id -> Tune's Trial (for its error file), filled by TrialWatch
        self._retry_reasons: dict[str, list[str]] = {}

    def suggest(self, trial_id: str):
        params = super().suggest(trial_id)
        if trial_id not in self._started:
            self._started[trial_id] = time.monotonic()
            self._ot_trials[trial_id].set_user_attr("ray_trial_id", trial_id)
            self._progress.started()
        return params

    def save(self, checkpoint_path: str) -> None:
        # Resume reads the Optuna storage, the single source of truth; Tune's searcher pickle is not used.
        Path(checkpoint_path).write_text(json.dumps({"study": self._spec.study, "storage": self._spec.storage}))

    def restore(self, checkpoint_path: str) -> None:
        raise NotImplementedError("bmo-hpo resumes from the Optuna storage: use `hpo run SPEC --resume`")

    @staticmethod
    def _failure(result: dict) -> str | None:
        return result.get("diverged") or result.get("trial_error")

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._last[trial_id] = result
        if not self._spec.multi_objective and not self._failure(result) and trial_id in self._ot_trials:
            self._report(trial_id, result)
        self._progress.heartbeat()

    def _report(self, trial_id: str, result: dict) -> None:
        value, step = result.get(self._keys[0]), int(result["outer_step"])
        done = self._reported.setdefault(trial_id, set())
        if value is not None and math.isfinite(value) and step not in done:
            self._ot_trials[trial_id].report(float(value), step)
            done.add(step)

    def retrying(self, trial) -> None:
        """Tune restarts ``trial`` after its worker or node was lost: the Optuna trial stays RUNNING."""
        reasons = self._retry_reasons.setdefault(trial.trial_id, [])
        reasons.append(_lost_reason(trial))
        ot_trial = self._ot_trials.get(trial.trial_id)
        name = f"trial {ot_trial.number}" if ot_trial is not None else f"Tune trial {trial.trial_id}"
        self._progress.out(f"{name}: {reasons[-1]}; restarting it (retry {len(reasons)} of {self._spec.max_retries})")

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        last = result or self._last.get(trial_id) or {}
        reason = self._failure(last)
        if not reason and error:  # the task reports its own errors, so Tune saw the worker die (max_retries used up)
            trial = self._tune_trials.get(trial_id)
            retries = len(self._retry_reasons.get(trial_id, ()))
            reason = (f"its Ray worker was lost {retries + 1} time(s) (max_retries: {self._spec.max_retries}); "
                      f"last: {_lost_reason(trial) if trial is not None else 'unknown'}")
        values = None
        note = ""
        if reason:
            state, note = TrialState.FAIL, reason
            ot_trial.set_user_attr("fail_reason", reason)
        elif last and last.get("outer_step") == last.get("outer_steps"):
            state = TrialState.COMPLETE
            values = [float(last[k]) for k in self._keys]
        else:
            state = TrialState.PRUNED
            note = "stopped by the scheduler" if trial_id in self._stopped else "stopped by the driver (time budget or interrupt)"
            ot_trial.set_user_attr("stopped_by", "scheduler" if trial_id in self._stopped else "driver")
        if state != TrialState.FAIL and not self._spec.multi_objective and last:
            # Tune may pass the last result to on_trial_complete only: record it as an intermediate value too.
            self._report(trial_id, last)
        self._record_attrs(ot_trial, trial_id, last)
        self._store_artifacts(ot_trial, last)
        try:
            self._ot_study.tell(ot_trial, values if values is None or len(values) > 1 else values[0], state=state)
        except RuntimeError as e:  # already finished (e.g. told before a resume); never tell twice
            note = f"{note}; {e}" if note else str(e)
        self._completed_trials.add(trial_id)
        self._progress.finished(ot_trial.number, state, values, note)

    def finish_open_trials(self) -> None:
        """Close the trials Tune stopped without telling the searcher (time budget, Ctrl-C) as PRUNED."""
        for trial_id in list(self._ot_trials):
            if trial_id not in self._completed_trials:
                self.on_trial_complete(trial_id, self._last.get(trial_id))

    def _store_artifacts(self, ot_trial, last: dict) -> None:
        """Write the figures a trial sent back (base64 PNGs in its last result) to the artifact store."""
        figures = {k.removeprefix("artifact:"): v for k, v in last.items() if k.startswith("artifact:")}
        if not figures:
            return
        from optuna.artifacts import upload_artifact

        if self._artifact_store is None:
            self._artifact_store = open_artifact_store(self._spec.storage)
        with tempfile.TemporaryDirectory() as tmp:
            for name, b64 in figures.items():
                path = Path(tmp) / f"trial{ot_trial.number}-{name}"
                path.write_bytes(base64.b64decode(b64))
                artifact_id = upload_artifact(artifact_store=self._artifact_store, file_path=str(path),
                                              study_or_trial=ot_trial, mimetype="image/png")
                ot_trial.set_user_attr(f"artifact_{name.removesuffix('.png')}", artifact_id)

    def _record_attrs(self, ot_trial, trial_id: str, last: dict) -> None:
        # Each attribute is one storage commit: record what a user needs, nothing Optuna already keeps.
        attrs = {
            "wall_time_s": round(time.monotonic() - self._started.get(trial_id, time.monotonic()), 3),
            "device": last.get("device"),
            "node": last.get("node"),
            "ray_node": last.get("ray_node"),
            "gpus": last.get("gpus") or None,
            "final_step": last.get("outer_step"),
            "fp_residual": last.get("val_fp_residual"),
            "traceback": last.get("trial_traceback"),
            "retries": len(self._retry_reasons.get(trial_id, ())) or None,
            "retry_reasons": self._retry_reasons.get(trial_id),
        }
        attrs.update({k: v for k, v in last.items() if k.startswith("refined_")})
        for key, value in attrs.items():
            if value is not None and not (isinstance(value, float) and not math.isfinite(value)):
                ot_trial.set_user_attr(key, value)


def _lost_reason(trial) -> str:
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


class TrialWatch(Callback):
    """Gives the searcher Tune's Trial objects and tells it about each restart of a lost trial."""

    def __init__(self, search: StudySearch):
        self.search = search

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self.search._tune_trials[trial.trial_id] = trial

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        self.search._tune_trials[trial.trial_id] = trial
        self.search.retrying(trial)


class PruneTrackingASHA(ASHAScheduler):
    """ASHA that remembers which trials it stopped before their last step."""

    def __init__(self, stopped: set[str], **kwargs):
        super().__init__(**kwargs)
        self.stopped = stopped

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP and result.get("outer_step") != result.get("outer_steps"):
            self.stopped.add(trial.trial_id)
        return decision


def _spec_fingerprint(spec: JobSpec) -> dict:
    """What must not change between a study's runs: task, fixed values, space, objectives."""
    d = spec.to_dict()
    return json.loads(json.dumps({k: d[k] for k in ("task", "task_args", "fixed", "space", "objectives")}, default=str))


def _outer_steps(spec: JobSpec) -> int:
    from workers import BMOConfig  # noqa: PLC0415  (torch is imported here, on purpose, lazily)

    for p in spec.space:
        if p.name == "outer_steps":
            return int(p.high if p.type != "categorical" else max(p.choices))
    return int(spec.fixed.get("outer_steps", BMOConfig.outer_steps))


def _module_root(task: str) -> str | None:
    """The directory that must be on PYTHONPATH for a ``module:Class`` task to import on workers."""
    if ":" not in task:
        return None
    import importlib.util

    top = task.split(":", 1)[0].split(".")[0]
    found = importlib.util.find_spec(top)
    if found is None or not found.origin:
        return None
    origin = Path(found.origin)
    return str(origin.parent.parent if origin.name == "__init__.py" else origin.parent)


def connect_ray(address: str | None, task: str) -> str | None:
    """Join ``address`` or start an embedded local Ray (reusing one already started in this process).

    Returns the URL of Ray's dashboard when the cluster runs one (a joined cluster; the embedded
    Ray starts none).
    """
    import ray

    if ray.is_initialized():
        return None
    paths = [p for p in (_module_root(task), os.getcwd(), os.environ.get("PYTHONPATH")) if p]
    runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(paths), "PYTHONWARNINGS": "ignore::DeprecationWarning"}}
    kwargs = dict(runtime_env=runtime_env, log_to_driver=False, logging_level="ERROR", configure_logging=True)
    try:
        if address:
            context = ray.init(address=address, **kwargs)
        else:
            context = ray.init(address="local", include_dashboard=False, **kwargs)  # never join a running cluster
    except (ConnectionError, RuntimeError, ValueError) as e:
        hint = ""
        if address and os.environ.get("RAY_AUTH_MODE") != "token" and Path("~/.ray/auth_token").expanduser().exists():
            hint = " (a cluster with token authentication needs RAY_AUTH_MODE=token)"
        raise ClusterError(f"cannot connect to Ray at {address or 'a new local instance'}: {str(e).splitlines()[0]}{hint}") from None
    url = getattr(context, "dashboard_url", None)
    return f"http://{url}" if url and not url.startswith("http") else url


BOOTSTRAP_CONFIG = Path("~/ray_bootstrap_config.yaml")  # `ray up` leaves the cluster's config here on the head node


def _readonly(node_type: str) -> bool:
    """Ray's name for a node no autoscaler manages (a cluster started by hand): ``node_<node id>``."""
    return node_type.startswith("node_") and len(node_type) > 40


def autoscaler_node_types(bootstrap: Path | None = None) -> tuple[str, dict[str, dict | None]] | None:
    """What the connected cluster's autoscaler can add: ``(where that was read, {node type: resources})``.

    None when the cluster has no autoscaler (nodes started by hand, an embedded Ray). The mapping
    holds the worker node types it may still add (``max_workers`` > 0) with their resources per
    node, ``None`` for a type whose resources are not visible; it is empty when an autoscaler runs
    but its node types are not visible from here. Read, in order: the cluster config the autoscaler
    reports to the GCS (what Ray Train and Ray Data read; not every autoscaler reports it), the
    cluster launcher's config on the head (``~/ray_bootstrap_config.yaml``, a ``ray up`` cluster),
    then the autoscaler's status (v1 and v2), whose node types name a read-only cluster's nodes
    ``node_<id>`` and an autoscaler's by their configured types (KubeRay groups, ``ray up`` types).
    """
    import ray

    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # noqa: BLE001 - an older Ray, or a GCS without the key
        config = None
    if config is not None and config.node_group_configs:
        types = {g.name or f"group-{i}": dict(g.resources) for i, g in enumerate(config.node_group_configs) if g.max_count != 0}
        return "the cluster config the autoscaler reported", types

    path = (bootstrap or BOOTSTRAP_CONFIG).expanduser()
    if path.is_file():
        import yaml

        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            data = {}
        node_types = data.get("available_node_types") or {}
        if isinstance(node_types, dict) and node_types:
            head = data.get("head_node_type")
            types = {
                name: (dict(t.get("resources")) if t.get("resources") else None)
                for name, t in node_types.items()
                if name != head and isinstance(t, dict) and t.get("max_workers", data.get("max_workers", 1)) != 0
            }
            return str(path), types

    seen: set[str] = set()
    try:
        from ray.autoscaler.v2.utils import is_autoscaler_v2

        if is_autoscaler_v2(fetch_from_server=True):
            from ray.autoscaler.v2.sdk import get_cluster_status

            status = get_cluster_status(ray.get_runtime_context().gcs_address)
            for node in [*status.active_nodes, *status.idle_nodes, *status.pending_nodes, *status.pending_launches]:
                seen.add(node.ray_node_type_name)
        else:
            from ray._private.ray_constants import DEBUG_AUTOSCALING_STATUS
            from ray.experimental.internal_kv import _internal_kv_get

            raw = _internal_kv_get(DEBUG_AUTOSCALING_STATUS)
            report = json.loads(raw).get("autoscaler_report") or {} if raw else {}
            for key in ("active_nodes", "idle_nodes", "pending_launches"):
                seen.update(report.get(key) or {})
            seen.update(row[1] for row in report.get("pending_nodes") or [] if len(row) > 1)
    except Exception:  # noqa: BLE001 - no status (yet), or a Ray whose status looks different
        return None
    seen.discard("")
    if seen and not all(_readonly(t) for t in seen):
        return f"the autoscaler's status (node types seen: {', '.join(sorted(seen))})", {}
    return None


def _offers(resources: dict, cpu: float, gpu: float) -> bool:
    return resources.get("CPU", 0.0) >= cpu and resources.get("GPU", 0.0) >= gpu


def check_resources(spec: JobSpec, out: Callable[[str], None] = print) -> None:
    """Fail unless some node has, or an autoscaler can add, the CPU and GPU one trial asks for.

    A trial no node can hold would stay PENDING forever. When no alive node has it, an autoscaling
    cluster that can add such a node (GPU workers that scale from zero) is fine: the trials wait for
    it, and this prints so. Without an autoscaler, or when none of its node types has it, this is an
    error. When an autoscaler runs but its node types cannot be read here (KubeRay, for one), this
    prints a warning and goes on.
    """
    import ray

    cpu, gpu = spec.resources.cpu, spec.resources.gpu
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if any(_offers(n, cpu, gpu) for n in nodes):
        return
    max_cpu = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
    max_gpu = max((n.get("GPU", 0.0) for n in nodes), default=0.0)
    if cpu > max_cpu:
        problem = f"resources.cpu={cpu:g} per trial, but the largest node has {max_cpu:g} CPUs"
    elif gpu > max_gpu:
        problem = f"resources.gpu={gpu:g} per trial, but the largest node has {max_gpu:g} GPUs"
    else:
        problem = f"resources: {cpu:g} CPUs and {gpu:g} GPUs per trial, but no node has both"
    need = f"{cpu:g} CPUs and {gpu:g} GPUs"
    scaling = autoscaler_node_types()
    if scaling is None:
        raise ClusterError(f"{problem}, and the cluster has no autoscaler that could add such a node")
    source, types = scaling
    fitting = [name for name, r in types.items() if r is not None and _offers(r, cpu, gpu)]
    if fitting:
        out(f"no node has {need} for a trial yet: the trials wait for the autoscaler to add a {fitting[0]!r} node")
        return
    if types and all(r is not None for r in types.values()):
        raise ClusterError(f"{problem}, and none of the autoscaler's node types ({', '.join(types)}) has it")
    out(f"warning: {problem}. The trials wait for the cluster's autoscaler to add a node that has it "
        f"(read from {source}); if none of its node types has {need}, they wait forever: stop the job then "
        "(Ctrl-C, or `hpo jobs stop`)")


def _prepare_study(spec: JobSpec, storage, resume: bool, out) -> tuple[dict, int]:
    """Check the study, repairing it for ``resume``; return (finished trials by state, existing trials)."""
    summary = find_study(storage, spec.study)
    if summary is not None and not resume:
        raise StorageError(
            f"study {spec.study!r} already exists in {spec.storage} with {summary.n_trials} trials; "
            "pass --resume to continue it or --study NAME for a new one"
        )
    if summary is None and resume:
        raise StorageError(f"--resume: no study {spec.study!r} in {spec.storage}")
    if summary is None:
        return {}, 0
    study = optuna.load_study(study_name=spec.study, storage=storage)
    saved = study.user_attrs.get(SPEC_ATTR)
    if saved is not None and saved != _spec_fingerprint(spec):
        changed = sorted(k for k in saved if saved[k] != _spec_fingerprint(spec).get(k))
        raise StorageError(f"--resume: the spec's {', '.join(changed)} differ from study {spec.study!r}'s; use a new --study")
    trials = study.get_trials(deepcopy=False)
    for t in trials:
        if t.state == TrialState.RUNNING:
            storage.set_trial_user_attr(t._trial_id, "fail_reason", INTERRUPTED)
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            if t.params:  # a trial killed before its parameters were drawn has nothing to retry
                study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
            out(f"trial {t.number} was left running by the previous driver: marked failed"
                + (" and queued again with the same parameters" if t.params else ""))
    trials = study.get_trials(deepcopy=False)
    counts = {state: 0 for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    for t in trials:
        if t.state in counts and t.user_attrs.get("fail_reason") != INTERRUPTED:
            counts[t.state] += 1
    return counts, len(trials)


def _quiet_libraries() -> None:
    import logging

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def validate(spec: JobSpec) -> None:
    """Every check that needs no Ray and writes nothing: the spec against the task, the storage reachable."""
    check_against_task(spec)
    check_storage(spec.storage, create_dirs=spec.storage == "sqlite:///hpo-results/studies.db")


def run_job(spec: JobSpec, *, address: str | None = None, resume: bool = False, out: Callable[[str], None] = print) -> JobResult:
    """Run (or resume) the tuning job of ``spec`` and return the study's counts and best trial(s)."""
    _quiet_libraries()
    validate(spec)
    ray_dashboard = connect_ray(address, spec.task)
    if ray_dashboard:
        out(f"Ray dashboard: {ray_dashboard}")
    check_resources(spec, out)
    storage = open_storage(spec.storage)
    counts, existing = _prepare_study(spec, storage, resume, out)
    finished = sum(counts.values())
    remaining = spec.trials - finished
    result = JobResult(spec.study, spec.storage)
    if remaining <= 0:
        out(f"study {spec.study!r} already has {finished} finished trials (asked: {spec.trials}); nothing to run")
        return summarize(spec, storage, result)

    directions = ["minimize" if o.mode == "min" else "maximize" for o in spec.objectives]
    seed = None if spec.sampler.seed is None else spec.sampler.seed + existing  # fresh draws after a resume
    sampler = make_sampler(spec.sampler.name, seed)
    study = optuna.create_study(storage=storage, study_name=spec.study, directions=directions, sampler=sampler, load_if_exists=True)
    if SPEC_ATTR not in study.user_attrs:
        study.set_user_attr(SPEC_ATTR, _spec_fingerprint(spec))

    progress = Progress(spec, spec.trials, out)
    progress.counts.update(counts)  # resumed: count what is already there
    stopped: set[str] = set()
    metric = [o.reported for o in spec.objectives]
    mode = [o.mode for o in spec.objectives]
    search = StudySearch(
        spec=spec,
        stopped_by_scheduler=stopped,
        progress=progress,
        space=define_by_run(spec),
        metric=metric if spec.multi_objective else metric[0],
        mode=mode if spec.multi_objective else mode[0],
        sampler=sampler,
        study_name=spec.study,
        storage=storage,
    )
    scheduler = FIFOScheduler()
    if spec.scheduler.name == "asha":
        scheduler = PruneTrackingASHA(
            stopped,
            time_attr="outer_step",
            metric=metric[0],
            mode=mode[0],
            grace_period=spec.scheduler.grace_period,
            max_t=spec.scheduler.max_t or _outer_steps(spec),
            reduction_factor=spec.scheduler.reduction_factor,
        )
    out(f"study {spec.study!r} in {spec.storage}: running {remaining} trials, {spec.concurrency} at a time")
    try:
        _fit(spec, search, scheduler, remaining)
    finally:
        search.finish_open_trials()
    return summarize(spec, storage, result)


def _fit(spec: JobSpec, search: StudySearch, scheduler, num_samples: int) -> None:
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the legacy reporter with verbose=0 prints nothing
    # The Optuna storage keeps every result; Tune's per-trial JSON/CSV/TensorBoard files would only cost time.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    from ray import tune

    from workers.trainable import trainable

    threads = max(1, int(spec.resources.cpu))
    job = {
        "task": spec.task,
        "task_args": spec.task_args,
        "fixed": spec.fixed,
        "objectives": [(o.reported, o.mode) for o in spec.objectives],
        "threads": threads,
        "report_interval": spec.report_interval,
        "artifacts": spec.artifacts,
    }
    resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    results_dir = spec.results_dir if "://" in spec.results_dir else str(Path(spec.results_dir).resolve())
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(trainable, job=job), resources),
        tune_config=tune.TuneConfig(
            search_alg=search,
            scheduler=scheduler,
            num_samples=num_samples,
            max_concurrent_trials=spec.concurrency,
            time_budget_s=spec.time_budget,
            reuse_actors=True,  # saves a process start (and a torch import) per trial
        ),
        run_config=tune.RunConfig(
            name=f"{spec.study}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=results_dir,
            verbose=0,
            # Only a lost worker or node reaches Tune as an error (the trainable reports the task's own
            # errors as results), so every Tune retry is a restart on a healthy node, never a rerun of a bug.
            failure_config=tune.FailureConfig(max_failures=spec.max_retries),
            callbacks=[TrialWatch(search)],
        ),
    )
    tuner.fit()


def summarize(spec: JobSpec, storage, result: JobResult) -> JobResult:
    """Fill ``result`` with the study's state counts and best trial(s); refresh the study's dashboard plots."""
    from hpo.plots import save_study_plots

    study = optuna.load_study(study_name=spec.study, storage=storage)
    save_study_plots(study, spec.objectives[0].metric, spec.fixed)
    trials = study.get_trials(deepcopy=False)
    result.complete = sum(t.state == TrialState.COMPLETE for t in trials)
    result.pruned = sum(t.state == TrialState.PRUNED for t in trials)
    result.failed = sum(t.state == TrialState.FAIL for t in trials)
    if result.complete:
        best = study.best_trials if spec.multi_objective else [study.best_trial]
        result.best = [{"number": t.number, "values": t.values, "params": t.params} for t in best]
    return result


def print_result(result: JobResult, out: Callable[[str], None] = print) -> None:
    """The closing lines of ``hpo run``: counts, then the best value(s) and parameters."""
    out(f"study {result.study!r}: {result.complete} complete, {result.pruned} pruned, {result.failed} failed")
    if not result.best:
        out("no trial completed")
    for b in result.best:
        out(f"best trial {b['number']}: values={b['values']} params={json.dumps(b['params'])}")
    storage = "" if result.storage == DEFAULT_STORAGE else f" --storage {result.storage}"
    out(f"dashboard: hpo dashboard{storage}  (then open http://127.0.0.1:8080/dashboard)")


__all__ = ["JobResult", "print_result", "run_job", "summarize", "validate"]

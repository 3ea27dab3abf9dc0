"""Tuning jobs on a Ray cluster through Ray Jobs: submit / list / status / logs / stop.

A submitted job runs ``python -m hpo.cli run spec.yaml`` on the head node. The spec travels in
the job's working directory and this project's packages (``hpo``, ``workers``) in ``py_modules``,
so the cluster needs only the dependencies installed. The study storage must outlive the job's
temporary working directory: a relative SQLite path is refused, and the default is
``$HOME/hpo-results/studies.db`` on the head node.
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import yaml

from hpo.errors import ClusterError, SpecError
from hpo.spec import DEFAULT_RESULTS_DIR, DEFAULT_STORAGE, JobSpec
from hpo.storage import sqlite_path

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
HEAD_STORAGE = "sqlite:///$HOME/hpo-results/studies.db"  # expanded by the job's shell on the head node
HEAD_RESULTS_DIR = "$HOME/hpo-results/ray"
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
AGENT_WAIT_S = 60.0  # how long a submission waits for a just-started cluster's job agent
# cluster/local.sh's wait for its nodes: `$PYTHON - 127.0.0.1:PORT WORKERS SECONDS PID...` (Ray records a
# driver's command line as its entrypoint)
LOCAL_SH_DRIVER = re.compile(r"\S*python[\w.]*\s+-\s+\S+:\d+\s+\d+\s+-?\d+(\s+\d+)*")


def default_address() -> str:
    """``$RAY_ADDRESS`` when it names the jobs API (http://...), else the local cluster's."""
    env = os.environ.get("RAY_ADDRESS", "")
    return env if env.startswith("http") else DEFAULT_ADDRESS


def client(address: str):
    """A Ray Jobs client for ``address``; no cluster there, or no token for it, is a ``ClusterError``.

    Clusters started with token authentication (``ray start`` does so by default since Ray 2.5x)
    need ``RAY_AUTH_MODE=token`` here and the cluster's token in ``RAY_AUTH_TOKEN`` or
    ``~/.ray/auth_token``.
    """
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except AuthenticationError:
        raise ClusterError(
            f"the cluster at {address} requires token authentication: set RAY_AUTH_MODE=token and put "
            "its token in RAY_AUTH_TOKEN or ~/.ray/auth_token"
        ) from None
    except (ConnectionError, RuntimeError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ClusterError(f"no Ray cluster's jobs API at {address}: {reason}") from None


def head_paths(spec: JobSpec) -> JobSpec:
    """The spec with storage and results_dir that survive the job: defaults move to the head's $HOME."""
    storage, results = spec.storage, spec.results_dir
    if storage == DEFAULT_STORAGE:
        storage = HEAD_STORAGE
    else:
        path = sqlite_path(storage)
        if path is not None and not path.is_absolute():
            raise SpecError(
                f"storage: {storage!r} is relative and would land in the job's temporary working directory; "
                "give an absolute path (sqlite:////abs/path.db) or a PostgreSQL URL"
            )
    if results == DEFAULT_RESULTS_DIR:
        results = HEAD_RESULTS_DIR
    elif "://" not in results and not Path(results).is_absolute():
        raise SpecError(f"results_dir: {results!r} is relative; give an absolute path or a URI (s3://, gs://)")
    return replace(spec, storage=storage, results_dir=results)


def submit(spec_data: dict, spec: JobSpec, address: str) -> tuple[str, JobSpec]:
    """Submit ``spec`` (validated; ``spec_data`` its YAML form) to ``address``; return (job id, spec as run)."""
    spec = head_paths(spec)
    jobs = client(address)
    data = {**spec_data, "storage": spec.storage, "results_dir": spec.results_dir, "study": spec.study,
            "trials": spec.trials}
    with tempfile.TemporaryDirectory(prefix="hpo-submit-") as tmp:
        (Path(tmp) / "spec.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        runtime_env = {
            "working_dir": tmp,
            "py_modules": [str(PACKAGE_ROOT / "hpo"), str(PACKAGE_ROOT / "workers")],
        }
        entrypoint = (
            'python -m hpo.cli run spec.yaml --address auto '
            f'--storage "{spec.storage}" --set results_dir="{spec.results_dir}"'
        )
        deadline = time.monotonic() + AGENT_WAIT_S
        while True:
            try:
                job_id = jobs.submit_job(entrypoint=entrypoint, runtime_env=runtime_env,
                                         metadata={"study": spec.study, "tool": "bmo-hpo"})
                break
            except RuntimeError as e:
                # Right after a cluster starts, its job agent may not be up yet: Ray says to try again.
                if "try again later" in str(e) and time.monotonic() < deadline:
                    time.sleep(1.0)
                    continue
                raise ClusterError(f"submitting to {address} failed: {str(e).strip().splitlines()[0]}") from None
    return job_id, spec


def _known(jobs, job_id: str):
    try:
        return jobs.get_job_info(job_id)
    except RuntimeError as e:
        if "does not exist" in str(e) or "404" in str(e):
            raise ClusterError(f"no job {job_id!r} on this cluster (see `hpo jobs list`)") from None
        raise ClusterError(f"job {job_id!r}: {str(e).strip().splitlines()[0]}") from None


def _value(enum) -> str:
    return str(enum.value if hasattr(enum, "value") else enum)


def is_local_sh_driver(job) -> bool:
    """Whether a job is cluster/local.sh's own: the driver (``python - ADDRESS WORKERS SECONDS PIDS...``)
    with which ``up`` waits for the nodes to join."""
    return _value(job.type) == "DRIVER" and not job.submission_id and bool(LOCAL_SH_DRIVER.fullmatch(job.entrypoint or ""))


def local_time(ms: int | None) -> str | None:
    """A Unix time in milliseconds (as Ray gives it) as local time, "2026-11-30 10:12:03"."""
    return None if ms is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


def job_rows(jobs) -> list[dict]:
    """Rows of ``hpo jobs list`` from Ray's ``JobDetails``: id, status, study (ours), start time (local),
    entrypoint; without cluster/local.sh's own driver."""
    return [{
        "job": j.submission_id or j.job_id,
        "status": _value(j.status),
        "study": (j.metadata or {}).get("study"),
        "started": local_time(j.start_time),
        "entrypoint": j.entrypoint,
    } for j in jobs if not is_local_sh_driver(j)]


def list_jobs(address: str) -> list[dict]:
    """Every job on the cluster (``job_rows``)."""
    return job_rows(client(address).list_jobs())


def status(address: str, job_id: str) -> dict:
    """The job's status and message."""
    info = _known(client(address), job_id)
    return {"job": job_id, "status": str(info.status.value if hasattr(info.status, "value") else info.status),
            "message": info.message, "study": (info.metadata or {}).get("study")}


def logs(address: str, job_id: str, follow: bool = False, out=print) -> None:
    """Print the job's logs; with ``follow``, stream them until the job ends."""
    jobs = client(address)
    _known(jobs, job_id)
    if not follow:
        out(jobs.get_job_logs(job_id), end="")
        return

    async def tail() -> None:
        async for chunk in jobs.tail_job_logs(job_id):
            out(chunk, end="", flush=True)

    asyncio.run(tail())


def stop(address: str, job_id: str) -> bool:
    """Ask the cluster to stop the job; False when it had already ended."""
    jobs = client(address)
    _known(jobs, job_id)
    return bool(jobs.stop_job(job_id))

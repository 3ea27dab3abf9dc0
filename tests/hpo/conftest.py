"""Fixtures for service tests: one Ray instance per test session, spec files, storages."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]

# A tiny spec every service test starts from (trials of about a second on 2 CPUs).
BASE_SPEC = {
    "study": "t",
    "task": "sparse_coding",
    "task_args": {"m": 16, "n": 32, "batch_size": 16, "val_size": 64, "test_size": 16},
    "fixed": {"K": 4, "outer_steps": 40, "eval_every": 10},
    "space": {
        "mu": {"type": "float", "low": 0.0, "high": 0.3},
        "gamma": {"type": "float", "low": 1.0e-3, "high": 3.0e-2, "log": True},
    },
    "objective": {"metric": "nmse_db", "mode": "min"},
    "sampler": {"name": "random", "seed": 0},
    "scheduler": {"name": "none"},
    "trials": 2,
    "concurrency": 2,
    "resources": {"cpu": 1, "gpu": 0},
}


def write_spec(directory: Path, name: str = "spec.yaml", **changes) -> Path:
    """Write BASE_SPEC with top-level ``changes`` (None deletes a key) as YAML; return its path."""
    spec = {**BASE_SPEC, **changes}
    spec = {k: v for k, v in spec.items() if v is not None}
    spec.setdefault("storage", f"sqlite:///{directory / 'studies.db'}")
    spec.setdefault("results_dir", str(directory / "ray"))
    path = directory / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def ray_address():
    """Start one local Ray for the whole test session (free ports, never Redis's 6379); yield its address."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the ``hpo`` command in a subprocess and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "hpo.cli", *args],
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def postgres_url():
    """A fresh, empty PostgreSQL database on the local server (dropped afterwards); skip if none runs."""
    import uuid

    psycopg = pytest.importorskip("psycopg")
    name = f"bmo_hpo_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect("postgresql://127.0.0.1:5432/test", autocommit=True)
    except psycopg.OperationalError as e:
        pytest.skip(f"no PostgreSQL on 127.0.0.1:5432 ({e})")
    admin.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql://127.0.0.1:5432/{name}"
    finally:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        admin.close()


# A user's Problem in a file of its own (outside the package), named as my_problem:Shrink
USER_PROBLEM = '''
import torch
from dataclasses import dataclass
from workers import Problem


@dataclass
class B:
    y: torch.Tensor
    x: torch.Tensor


class Shrink(Problem):
    """T(u) = (1 - t) u + t y; diverges on purpose when explode=True or t0 > touchy."""

    def __init__(self, explode: bool = False, t0: float = 0.5, touchy: float = 1.0):
        super().__init__()
        self.t = torch.nn.Parameter(torch.tensor(t0))
        self.explode = explode or t0 > touchy
        g = torch.Generator().manual_seed(0)
        self.data = B(torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g))

    def init(self, batch):
        return torch.zeros_like(batch.y)

    def operator(self, u, batch, k):
        if self.explode and k >= 2:
            return u * float("inf")
        return (1 - self.t) * u + self.t * batch.y

    def upper_loss(self, u, batch):
        return 0.5 * ((u - batch.x) ** 2).sum(-1).mean()

    def metrics(self, u, batch):
        return {"mse": float(((u - batch.x) ** 2).mean())}

    def batches(self, split):
        while True:
            yield self.data
            if split != "train":
                return
'''


class OwnPostgres:
    """A PostgreSQL server of the test's own (initdb + pg_ctl as user postgres, on a free loopback port)."""

    def __init__(self, directory: Path, port: int):
        import glob

        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if not found:
            pytest.skip("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin)")
        self.bin = Path(found[-1]).parent
        self.data, self.port = directory / "data", port
        self.url = f"postgresql://postgres@127.0.0.1:{port}/bmo"
        directory.mkdir(parents=True, exist_ok=True)
        subprocess.run(["chown", "-R", "postgres", str(directory)], check=True)
        self._as_postgres(f"{self.bin}/initdb -D {self.data} -A trust -U postgres >/dev/null")
        self.start()
        self._as_postgres(f"{self.bin}/createdb -h 127.0.0.1 -p {port} -U postgres bmo")

    def _as_postgres(self, command: str) -> None:
        subprocess.run(["su", "postgres", "-s", "/bin/sh", "-c", command], check=True, timeout=120)

    def start(self) -> None:
        self._as_postgres(f"{self.bin}/pg_ctl -D {self.data} -w -l {self.data}/log "
                          f"-o '-p {self.port} -k /tmp -c listen_addresses=127.0.0.1' start >/dev/null")

    def stop(self) -> None:
        """Stop at once, as a crash would (connections cut, no checkpoint)."""
        self._as_postgres(f"{self.bin}/pg_ctl -D {self.data} -w -m immediate stop >/dev/null")


@pytest.fixture
def own_postgres():
    """A PostgreSQL server this test starts and stops itself (never the machine's shared one)."""
    import shutil
    import tempfile

    from tests.support import free_port

    directory = Path(tempfile.mkdtemp(prefix="bmo-pg-", dir="/tmp"))  # pytest's tmp_path is root's only
    server = OwnPostgres(directory, free_port())
    yield server
    subprocess.run(["su", "postgres", "-s", "/bin/sh", "-c", f"{server.bin}/pg_ctl -D {server.data} -m immediate stop"],
                   capture_output=True)
    shutil.rmtree(directory, ignore_errors=True)

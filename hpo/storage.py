"""Storage URL → Optuna storage; reachability checks that write nothing."""

from __future__ import annotations

import os
import time
from pathlib import Path

import optuna

from hpo.errors import StorageError


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL (None for other schemes or in-memory SQLite)."""
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///"):]
    return None if path in ("", ":memory:") else Path(path)


def four_slashes_hint(path: Path) -> str:
    """For a relative SQLite path that was likely meant absolute (``sqlite:///tmp/x.db``: no ./tmp, but a
    /tmp), "; did you mean sqlite:////tmp/x.db ...?"; else ""."""
    top = path.parts[0] if len(path.parts) > 1 and not path.is_absolute() else None
    if top is None or Path(top).exists() or not (Path("/") / top).is_dir():
        return ""
    return f"; did you mean sqlite:////{path.as_posix()} (an absolute path needs four slashes)?"


def default_results_dir(storage_url: str) -> str:
    """Where Tune's trial directories go by default: ``ray/`` beside a SQLite file, else hpo-results/ray."""
    path = sqlite_path(storage_url)
    return str((path.parent if path is not None else Path("hpo-results")) / "ray")


def check_storage(url: str, *, create_dirs: bool = False) -> None:
    """Raise ``StorageError`` unless the storage can be reached; writes nothing (but ``create_dirs``)."""
    path = sqlite_path(url)
    if path is not None:
        parent = path.parent if str(path.parent) else Path(".")
        if not parent.exists() and create_dirs:
            parent.mkdir(parents=True, exist_ok=True)
        if not parent.is_dir():
            raise StorageError(f"storage {url!r}: directory {str(parent)!r} does not exist{four_slashes_hint(path)}")
        if not os.access(parent if not path.exists() else path, os.W_OK):
            raise StorageError(f"storage {url!r}: {str(path)!r} is not writable")
        return
    if url.startswith("sqlite://"):
        return
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url, pool_pre_ping=True)
        with engine.connect():
            pass
        engine.dispose()
    except Exception as e:  # driver errors vary by backend; all mean "cannot reach it"
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StorageError(f"storage {url!r} is unreachable: {reason}") from None


def _use_wal(engine) -> None:
    """SQLite in WAL mode with normal sync: readers (a dashboard) never block the job, and a commit costs
    no fsync; a committed trial survives a killed process (only an OS crash can lose the last commits)."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    engine.dispose()  # connections opened while Optuna created its tables lack the pragmas


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """The Optuna storage object for ``url`` (creates Optuna's tables on first use)."""
    import sqlalchemy.exc

    check_storage(url)
    kwargs = {"connect_args": {"timeout": 30}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    attempts = 5
    for attempt in range(attempts):
        try:
            storage = optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
            if sqlite_path(url) is not None:
                _use_wal(storage.engine)
            return storage
        except sqlalchemy.exc.SQLAlchemyError as e:
            # Two jobs creating Optuna's tables in a fresh database at once race (duplicate type or
            # table); the loser finds the tables on the next try.
            if attempt == attempts - 1:
                raise StorageError(f"storage {url!r}: {str(e).splitlines()[0]}") from None
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def find_study(storage, name: str) -> optuna.study.StudySummary | None:
    """The summary of study ``name`` in ``storage``, or None."""
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        if summary.study_name == name:
            return summary
    return None


def artifact_dir(url: str) -> Path:
    """Where trial artifacts (figures) live: ``artifacts/`` beside a SQLite file, else ./hpo-results/artifacts."""
    path = sqlite_path(url)
    return (path.parent if path is not None else Path("hpo-results")) / "artifacts"


def open_artifact_store(url: str):
    """The file-system artifact store beside ``url``'s storage (created on first use)."""
    from optuna.artifacts import FileSystemArtifactStore

    directory = artifact_dir(url)
    directory.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(directory))

"""The searcher's own bookkeeping, without Ray: the wait for a trial's last checkpoint."""

import threading
import time
from types import SimpleNamespace

import optuna
from optuna.trial import TrialState

from hpo.search import StudySearch
from hpo.spec import load_spec
from tests.hpo.conftest import write_spec


class _Writer:
    failed = None

    def submit(self, write):
        write()


def _search(tmp_path) -> StudySearch:
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage)
    search = StudySearch(spec=load_spec(write_spec(tmp_path)), study=study, storage=storage,
                         define_by_run=lambda trial: None, new_trials=1, continuing=[], artifacts=None, writer=_Writer(),
                         out=lambda line: None, on_finished=lambda *a: None)
    search._trials["t1"] = study.ask()
    return search


def _checkpoint(tmp_path, step: int):
    return SimpleNamespace(path=tmp_path / f"checkpoint_{step}")


def test_the_last_checkpoint_is_awaited_until_the_callback_delivers_it(tmp_path):
    search = _search(tmp_path)
    search.checkpointed("t1", _checkpoint(tmp_path, 10), 10)
    late = _checkpoint(tmp_path, 20)
    timer = threading.Timer(0.3, search.checkpointed, args=("t1", late, 20))
    start = time.monotonic()
    timer.start()
    try:
        assert search._final_checkpoint("t1", 20, wait_s=30.0) is late
    finally:
        timer.cancel()
    assert 0.2 < time.monotonic() - start < 10.0  # woken by the callback, not by the deadline
    assert search._trials["t1"].study.trials[0].user_attrs["checkpoint"]["step"] == 20
    assert search._trials["t1"].study.trials[0].state == TrialState.RUNNING


def test_a_last_checkpoint_that_never_comes_is_none_after_the_deadline(tmp_path):
    search = _search(tmp_path)
    search.checkpointed("t1", _checkpoint(tmp_path, 10), 10)
    start = time.monotonic()
    assert search._final_checkpoint("t1", 20, wait_s=0.3) is None
    assert 0.25 < time.monotonic() - start < 5.0
    assert search._final_checkpoint("t1", 10, wait_s=30.0).path.name == "checkpoint_10"  # already there: at once
    assert search._final_checkpoint("t2", None, wait_s=30.0) is None  # no step, no checkpoint: nothing to wait for

"""runner.workers: exact totals across workers, retries, the lock, who ends the study run."""

from __future__ import annotations

import threading
import time
import uuid
import warnings

import optuna
import pytest
from conftest import run_threads
from optuna.distributions import FloatDistribution
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from runner.workers.scheduler import enqueue_retries, is_crash, run_until_total
from runner.workers.storage import StudyLock, open_storage

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


@pytest.fixture
def storage_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/optuna.db"


def _study(url: str, name: str = "s") -> optuna.Study:
    return optuna.create_study(study_name=name, storage=open_storage(url), load_if_exists=True)


def test_sqlite_storage_uses_wal(storage_url, tmp_path):
    import sqlite3

    _study(storage_url)
    with sqlite3.connect(tmp_path / "optuna.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_opening_a_storage_prints_no_experimental_notice(storage_url):
    """The heartbeat is experimental in Optuna: its notice reached every sweep log before quieting."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # this module ignores the notice elsewhere
        storage = open_storage(storage_url)
    assert storage.heartbeat_interval == 60
    assert [w.message for w in caught if issubclass(w.category, optuna.exceptions.ExperimentalWarning)] == []


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def lock_storage(request, storage_url) -> str:
    """Each backend's lock: an flock next to a SQLite file, an advisory lock on a PostgreSQL server."""
    if request.param == "sqlite":
        return storage_url
    return request.getfixturevalue("postgres_url")  # skips (or fails in CI) without a server


def test_study_lock_excludes_other_holders(lock_storage):
    """Two locks on one study (two workers): while one holds it, the other cannot take it; after release it can."""
    name = f"lock-{uuid.uuid4().hex[:8]}"  # advisory locks are server-wide: a study name no other run uses
    first, second = StudyLock(lock_storage, name), StudyLock(lock_storage, name)
    try:
        first.acquire()
        assert not second.try_acquire()
        first.release()
        assert second.try_acquire()
        assert not first.try_acquire()
        second.release()
        with first:  # the blocking acquire gets a free lock at once
            assert not second.try_acquire()
    finally:
        first.close(), second.close()


def test_workers_stop_at_exactly_the_total(storage_url):
    """Three workers with very short trials: never a trial more than the total."""
    _study(storage_url)

    def work():
        lock = StudyLock(storage_url, "s")
        run_until_total(_study(storage_url), lambda trial: 1.0, 9, lock, wait_s=0.05)
        lock.close()

    run_threads(work, work, work)
    assert [t.state for t in _study(storage_url).trials] == [TrialState.COMPLETE] * 9


def test_a_waiting_worker_takes_over_the_slot_of_a_failed_trial(storage_url):
    """Worker A's last trial fails while B waits for it: B runs the missing trial, so the total is still met."""
    _study(storage_url)
    a_running = threading.Event()

    def failing(trial):
        a_running.set()
        # Once B has finished a trial, B is waiting: 1 finished + A's running one fill the total of 2.
        deadline = time.monotonic() + 30
        while not _study(storage_url).get_trials(states=(TrialState.COMPLETE,)) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        raise RuntimeError("boom")

    def worker_a():
        lock = StudyLock(storage_url, "s")
        run_until_total(_study(storage_url), failing, 2, lock, should_stop=a_running.is_set, wait_s=0.05)
        lock.close()

    def worker_b():
        assert a_running.wait(30)
        lock = StudyLock(storage_url, "s")
        run_until_total(_study(storage_url), lambda trial: 1.0, 2, lock, wait_s=0.05)
        lock.close()

    run_threads(worker_a, worker_b, timeout=60)
    states = [t.state for t in _study(storage_url).trials]
    assert states == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_only_crashed_trials_are_retried_and_at_most_n_times(storage_url):
    study = _study(storage_url)
    dist = {"lr": FloatDistribution(1e-5, 1e-3, log=True)}
    crashed = study.ask(dist)  # a worker died: no "error" recorded
    study.tell(crashed, state=TrialState.FAIL)
    raised = study.ask(dist)  # training raised (a NaN loss, say): the objective records the error
    raised.set_user_attr("error", "FloatingPointError: loss is nan")
    study.tell(raised, state=TrialState.FAIL)

    assert enqueue_retries(study, 0) == []
    assert enqueue_retries(study, 1) == [crashed.number]
    assert enqueue_retries(study, 1) == []  # already queued
    retry = study.ask()
    assert retry.params == {"lr": crashed.params["lr"]}
    frozen = study.trials[retry.number]
    assert RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen) == crashed.number
    study.tell(retry, state=TrialState.FAIL)  # the retry crashes too
    assert is_crash(study.trials[retry.number])
    assert enqueue_retries(study, 1) == []  # one retry per original was allowed
    assert enqueue_retries(study, 2) == [retry.number]
    assert RetryHeartbeatStaleTrialCallback.retry_history(study.trials[-1]) == [crashed.number, retry.number]


def test_a_killed_but_unreaped_worker_counts_as_dead():
    """A worker killed under the --workers launcher stays a zombie until reaped; its trial must not wait for it."""
    import socket
    import subprocess
    import sys

    import psutil

    from runner.workers.worker import is_dead

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        record = {"host": socket.gethostname(), "pid": child.pid, "started": psutil.Process(child.pid).create_time()}
        assert not is_dead(record)
        child.kill()
        deadline = time.monotonic() + 10
        while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.05)
        assert is_dead(record)  # not reaped yet: still has its pid and start time
    finally:
        child.kill()
        child.wait()


@pytest.mark.usefixtures("premade_mlflow_db", "fake_train")  # bookkeeping: scripted epochs, no training
def test_a_worker_that_stops_while_others_run_leaves_the_study_run_open(run_sweep, store, monkeypatch):
    """Only the last worker to stop ends the study run; until then it stays RUNNING, never KILLED or FINISHED."""
    import socket
    import subprocess
    import sys

    import psutil

    import runner.search.objective

    assert run_sweep("--trials", "1").code == 0
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # a live "other worker"
    try:
        trial = store.study().ask()
        trial.set_user_attr(
            "worker",
            {"host": socket.gethostname(), "pid": other.pid, "started": psutil.Process(other.pid).create_time()},
        )

        def interrupted(source, seed, settings=None):
            raise KeyboardInterrupt

        with monkeypatch.context() as patch:
            patch.setattr(runner.search.objective, "new_model", interrupted)
            assert run_sweep("--trials", "3").code == 130  # this worker stops; the other still runs trial 1
        assert store.parent().info.status == "RUNNING"
        assert [r.info.status for r in store.children()] == ["FINISHED", "KILLED"]  # trial 2: this worker's
    finally:
        other.kill()
        other.wait()
    # The other worker is gone too: the next start fails its trial and, being the last, ends the study run.
    assert run_sweep("--trials", "3").code == 0
    assert store.parent().info.status == "FINISHED"
    assert [t.state for t in store.study().trials] == [
        TrialState.COMPLETE,
        TrialState.FAIL,
        TrialState.FAIL,
        TrialState.COMPLETE,
        TrialState.COMPLETE,
    ]

"""Several workers, one study: Optuna on a real PostgreSQL server, MLflow through a real tracking server.

Needs ``RUNNER_TEST_POSTGRES_URL`` (a superuser URL; ``.ci/run`` starts a server and sets it). The URL has
no password: libpq reads it from ``PGPASSFILE`` (which ``.ci/postgres.sh`` exports) or ``PGPASSWORD``.
Without it the tests skip, unless ``RUNNER_REQUIRE_POSTGRES=1`` (set by ``.ci/run``) makes that a failure.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import optuna
import pytest
from conftest import run_threads, start_mlflow_server
from optuna.trial import TrialState

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.postgres, pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]


@pytest.fixture(scope="module")
def new_database(postgres_url):
    """``new_database()`` creates an empty database and returns its URL; all are dropped at the end."""
    import psycopg
    from sqlalchemy.engine import make_url

    admin = make_url(postgres_url)
    created = []

    def create() -> str:
        name = f"runner_test_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(admin.set(drivername="postgresql").render_as_string(False), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return admin.set(database=name).render_as_string(hide_password=False)

    yield create
    with psycopg.connect(admin.render_as_string(False), autocommit=True) as conn:
        for name in created:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def tracking_server(new_database, tmp_path_factory):
    """``mlflow server`` on loopback, backed by PostgreSQL, serving an artifact root to its clients."""
    with start_mlflow_server(new_database(), tmp_path_factory.mktemp("mlflow-server")) as uri:
        yield uri


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def _runs(uri: str, study: str, role: str):
    client = _client(uri)
    experiment = client.get_experiment_by_name(study)
    if experiment is None:
        return []
    return client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`runner.role` = '{role}'", max_results=1000
    )


@pytest.mark.e2e
def test_two_workers_share_one_study(tmp_path, new_database, tracking_server, sweep_yaml, mrpc_dir, tiny_model):
    """Two `runner.sweep` processes, same command: exact total, one study run, every trial run under it."""
    storage = new_database()
    total = 5
    command = [
        *(sys.executable, "-m", "runner.sweep", "--config", str(sweep_yaml), "--data-dir", str(mrpc_dir)),
        *("--model", str(tiny_model), "--no-system-metrics", "--trials", str(total)),
        *("--storage", storage, "--tracking-uri", tracking_server, "--study", "pg-two"),
        # Each "machine" keeps its best model on its own disk.
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    procs = []
    try:
        for index in range(2):
            cwd = tmp_path / f"machine{index}"
            cwd.mkdir()
            pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
            procs.append(subprocess.Popen(command, cwd=cwd, env=env, start_new_session=True, **pipes))
        results = [p.communicate(timeout=240) for p in procs]
    finally:
        for proc in procs:  # a worker that hung or outlived a failure, and anything it started
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for proc, (_, err) in zip(procs, results):
        assert proc.returncode == 0, err.decode()[-3000:]

    study = optuna.load_study(study_name="pg-two", storage=storage)
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) == total
    assert len(study.trials) == total, "no surplus trial was started"
    assert len({t.params["learning_rate"] for t in study.trials}) == total, "workers proposed the same params"

    (parent,) = _runs(tracking_server, "pg-two", "study")
    assert parent.info.status == "FINISHED"
    assert study.user_attrs["mlflow_run_id"] == parent.info.run_id
    children = _runs(tracking_server, "pg-two", "trial")
    assert sorted(int(c.data.tags["optuna.trial_number"]) for c in children) == sorted(numbers)
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    assert all(c.info.status != "RUNNING" for c in children)
    # Artifacts went to the server's root, not to a worker's disk.
    assert "trials.csv" in {f.path for f in _client(tracking_server).list_artifacts(parent.info.run_id)}
    assert not any((tmp_path / f"machine{i}" / "mlruns" / "artifacts").exists() for i in range(2))


def test_concurrent_setup_creates_one_study_and_one_study_run(new_database, tracking_server):
    """Four workers set up the same new study at the same instant: one study, one study run, no error."""
    from runner.config import SweepConfig
    from runner.record.runs import Tracker
    from runner.search.study import make_study
    from runner.workers.storage import StudyLock

    storage = new_database()  # empty: the tables are created in the race too
    cfg = SweepConfig.model_validate({"study": {"name": "pg-setup", "storage": storage}})
    barrier, run_ids = threading.Barrier(4), []

    def setup():
        lock = StudyLock(storage, "pg-setup")
        try:
            barrier.wait(timeout=60)  # not forever: a thread may have failed before reaching it
            with lock:
                study = make_study(cfg)
                tracker = Tracker(tracking_server, "pg-setup", "unused", system_metrics=False)
                run_ids.append(tracker.open_study_run(study, {}))
        finally:
            lock.close()

    run_threads(setup, setup, setup, setup)
    assert len(set(run_ids)) == 1 and len(run_ids) == 4
    assert len(_runs(tracking_server, "pg-setup", "study")) == 1
    assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == ["pg-setup"]


@pytest.mark.parametrize("attempt", [1, 2])
def test_workers_racing_for_the_last_trials_stop_at_the_total(new_database, attempt):
    """Three workers with fast trials: never more than the total, even when trials end at the same instant.

    Without the lock, or with the finished and running trials counted in two reads, this
    overshot to 13 in most runs here; MaxTrialsCallback alone gave 14.
    """
    from runner.workers.scheduler import run_until_total
    from runner.workers.storage import StudyLock, open_storage

    storage = new_database()
    optuna.create_study(study_name="pg-race", storage=open_storage(storage))

    def work():
        study = optuna.load_study(study_name="pg-race", storage=open_storage(storage))
        lock = StudyLock(storage, "pg-race")
        run_until_total(study, lambda trial: time.sleep(0.02) or 1.0, 12, lock, wait_s=0.05)
        lock.close()

    run_threads(work, work, work)
    trials = optuna.load_study(study_name="pg-race", storage=storage).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 12


# The study lock's exclusion on PostgreSQL: tests/test_scheduler.py::test_study_lock_excludes_other_holders[postgres].


def test_the_server_refuses_a_connection_without_the_password(postgres_url, tmp_path, monkeypatch):
    """No password, or a wrong one, is refused: trust auth (any local user is superuser) cannot come back.

    ``.ci/postgres.sh`` hands the password to clients only through ``PGPASSFILE``; here libpq gets none.
    """
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(postgres_url).set(drivername="postgresql", password=None)
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-pgpass"))  # not ~/.pgpass either
    with pytest.raises(psycopg.OperationalError, match="no password supplied"):
        psycopg.connect(url.render_as_string(hide_password=False), connect_timeout=10).close()
    wrong = url.set(password="not-the-password").render_as_string(hide_password=False)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong, connect_timeout=10).close()


def test_two_workers_split_a_confirmation_stage_exactly(new_database):
    """The confirmation stage on PostgreSQL: every (trial, seed) job once, none left out."""
    from test_confirm import split_between_two_workers

    split_between_two_workers(new_database())

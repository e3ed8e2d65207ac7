"""A password given to runner is found nowhere afterwards: not in MLflow, the model, Optuna, or the output.

The README's own scenario, for real: a sweep and an export against a PostgreSQL server
(password in the storage URL) and an MLflow tracking server (password in the tracking
URI). Then every byte they could have written is searched for the two passwords.
Needs ``RUNNER_TEST_POSTGRES_URL`` like tests/test_postgres.py (``.ci/run`` sets it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STORAGE_SECRET = "StoreSentinel-4d1c7e"
TRACKING_SECRET = "TrackSentinel-9b2f05"


@pytest.fixture(scope="module")
def secret_database(postgres_url):
    """A login role whose password is the sentinel, owning a new database; both dropped at the end."""
    import psycopg
    from sqlalchemy.engine import make_url

    admin = make_url(postgres_url).set(drivername="postgresql")
    role, database = f"runner_secret_{uuid.uuid4().hex[:8]}", f"runner_secret_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin.render_as_string(False), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{STORAGE_SECRET}'")
        conn.execute(f'CREATE DATABASE "{database}" OWNER {role}')
    url = admin.set(username=role, password=None, database=database)
    yield url
    with psycopg.connect(admin.render_as_string(False), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        conn.execute(f"DROP ROLE IF EXISTS {role}")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory, _empty_mlflow_db):
    """Overrides conftest's: the same tracking server, on a copy of an empty MLflow database.

    The server would otherwise create MLflow's schema itself before it answers: seconds of migrations
    that test nothing here (test_sweep_records_everything covers a store created from nothing).
    """
    import shutil

    from conftest import start_mlflow_server

    root = tmp_path_factory.mktemp("mlflow-server")
    shutil.copyfile(_empty_mlflow_db, root / "mlflow.db")
    with start_mlflow_server(f"sqlite:///{root / 'mlflow.db'}", root) as uri:
        yield uri, root


def _dump_database(url) -> str:
    """Every row of every table in the database, as text (the Optuna study, its trials and attributes)."""
    import psycopg

    with psycopg.connect(url.render_as_string(False)) as conn:
        tables = [
            row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
        ]
        assert "study_user_attributes" in tables, tables
        return "\n".join(
            json.dumps(row[0]) for table in tables for row in conn.execute(f'SELECT row_to_json(t) FROM "{table}" t')
        )


def _every_byte(folder: Path) -> bytes:
    return b"\n".join(path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file())


def _run(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *command], cwd=cwd, env=env, capture_output=True, timeout=280)


@pytest.mark.e2e
def test_no_password_anywhere_after_sweep_and_export(
    tmp_path, secret_database, mlflow_server, sweep_yaml, mrpc_dir, tiny_model
):
    """A sweep and an export with the passwords in their URLs, then the README's way: the password only in PGPASSWORD.

    The third command, the same sweep to one more trial with a storage URL that names no password, is
    the check that PGPASSWORD alone is enough (for every connection a sweep makes); its output is
    searched for the passwords too.
    """
    server_uri, server_root = mlflow_server
    storage = secret_database.set(password=STORAGE_SECRET).render_as_string(hide_password=False)
    no_password = secret_database.render_as_string(hide_password=False)
    assert STORAGE_SECRET not in no_password
    tracking = server_uri.replace("http://", f"http://runner:{TRACKING_SECRET}@")
    machine = tmp_path / "machine"
    machine.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("PGPASSWORD", None)
    common = ["--tracking-uri", tracking, "--study", "secret"]
    sweep = [*("--config", str(sweep_yaml), "--data-dir", str(mrpc_dir), "--model", str(tiny_model))]
    sweep = ["runner.sweep", *sweep, "--no-system-metrics", *common]
    outputs = []
    for command, command_env in (
        ([*sweep, "--trials", "2", "--storage", storage], env),
        (["runner.export", *common, "--storage", storage, "--data-dir", str(mrpc_dir)], env),
        ([*sweep, "--trials", "3", "--storage", no_password], {**env, "PGPASSWORD": STORAGE_SECRET}),
    ):
        result = _run(command, machine, command_env)
        assert result.returncode == 0, result.stderr.decode()[-3000:]
        outputs += [result.stdout, result.stderr]

    import optuna

    study = optuna.load_study(study_name="secret", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3, "the PGPASSWORD run added its trial"
    best = machine / "mlruns" / "best" / "secret"
    assert (best / "runner_config.yaml").is_file() and (best / "model.safetensors").is_file()
    places = {
        "stdout and stderr": b"\n".join(outputs),
        "the MLflow server's database and artifacts": _every_byte(server_root),
        "the local mlruns folder (best model, export)": _every_byte(machine / "mlruns"),
        "the Optuna storage": _dump_database(secret_database.set(password=STORAGE_SECRET)).encode(),
    }
    for secret in (STORAGE_SECRET, TRACKING_SECRET):
        leaked = [where for where, data in places.items() if secret.encode() in data]
        lines = [line for line in b"\n".join(outputs).splitlines() if secret.encode() in line][:3]
        assert leaked == [], f"{secret} found in {leaked}: {lines}"
    # The records still say where the study lives, without the password.
    assert b"runner_secret_" in places["the MLflow server's database and artifacts"]


@pytest.mark.e2e
def test_a_url_without_the_password_is_refused_in_one_line(tmp_path, secret_database, sweep_yaml):
    """The password is really needed: with neither PGPASSWORD nor a pgpass file the server refuses, in one line.

    (That PGPASSWORD alone is enough is the third command of test_no_password_anywhere_after_sweep_and_export.)
    """
    storage = secret_database.render_as_string(hide_password=False)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PGPASSFILE": str(tmp_path / "no-such-pgpass")}
    env.pop("PGPASSWORD", None)
    refused = _run(["runner.sweep", "--config", str(sweep_yaml), "--storage", storage], tmp_path, env)
    assert refused.returncode == 2
    assert len(refused.stderr.decode().strip().splitlines()) == 1, refused.stderr.decode()
    assert "password" in refused.stderr.decode().lower()

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


@pytest.mark.e2e
def test_no_password_anywhere_after_sweep_and_export(
    tmp_path, secret_database, mlflow_server, sweep_yaml, mrpc_dir, tiny_model
):
    server_uri, server_root = mlflow_server
    storage = secret_database.set(password=STORAGE_SECRET).render_as_string(hide_password=False)
    tracking = server_uri.replace("http://", f"http://runner:{TRACKING_SECRET}@")
    machine = tmp_path / "machine"
    machine.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("PGPASSWORD", None)
    common = ["--storage", storage, "--tracking-uri", tracking, "--study", "secret"]
    sweep = [*("--config", str(sweep_yaml), "--data-dir", str(mrpc_dir), "--model", str(tiny_model))]
    sweep += ["--no-system-metrics", "--trials", "2", *common]
    outputs = []
    for command in (["runner.sweep", *sweep], ["runner.export", *common, "--data-dir", str(mrpc_dir)]):
        result = subprocess.run(
            [sys.executable, "-m", *command], cwd=machine, env=env, capture_output=True, timeout=280
        )
        assert result.returncode == 0, result.stderr.decode()[-3000:]
        outputs += [result.stdout, result.stderr]

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
def test_password_only_in_pgpassword_is_enough(tmp_path, secret_database, sweep_yaml, mrpc_dir, tiny_model):
    """The README's way to keep a password off the command line: the URL names no password at all."""
    storage = secret_database.render_as_string(hide_password=False)
    assert STORAGE_SECRET not in storage
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PGPASSWORD": STORAGE_SECRET}
    command = [sys.executable, "-m", "runner.sweep", "--config", str(sweep_yaml), "--data-dir", str(mrpc_dir)]
    command += ["--model", str(tiny_model), "--no-system-metrics", "--trials", "1", "--study", "pgpass"]
    result = subprocess.run([*command, "--storage", storage], cwd=tmp_path, env=env, capture_output=True, timeout=280)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    # And the password is really needed: without it the server refuses, in one line.
    env.pop("PGPASSWORD")
    env["PGPASSFILE"] = str(tmp_path / "no-such-pgpass")
    refused = subprocess.run([*command, "--storage", storage], cwd=tmp_path, env=env, capture_output=True, timeout=280)
    assert refused.returncode == 2
    assert len(refused.stderr.decode().strip().splitlines()) == 1, refused.stderr.decode()
    assert "password" in refused.stderr.decode().lower()

"""runner.tracking: fail fast on unusable stores; a parent run per study, a child run per trial with its fate."""

from __future__ import annotations

import base64
import datetime
import http.server
import ipaddress
import ssl
import threading
import time

import optuna
import pytest
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from runner.errors import ConfigError
from runner.record import runs
from runner.record.runs import STUDY_RUN_ATTR, Tracker
from runner.record.store import TrackingError, check_reachable


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    """One database for the module: creating an MLflow schema takes seconds."""
    return f"sqlite:///{tmp_path_factory.mktemp('tracking') / 'mlflow.db'}"


@pytest.fixture
def tracker(tracking_uri, tmp_path, request):
    return Tracker(
        tracking_uri, request.node.name.replace("[", "-").rstrip("]"), str(tmp_path / "artifacts"), system_metrics=False
    )


@pytest.fixture
def study_run(tracker):
    study = optuna.create_study(study_name="s")
    return study, tracker.open_study_run(study, {"runner.command": "test"})


def test_unreachable_server_fails_fast():
    with pytest.raises(TrackingError, match="does not answer") as err:
        check_reachable("http://127.0.0.1:9", timeout=2.0)
    assert isinstance(err.value, ConfigError)


@pytest.fixture
def https_server(tmp_path):
    """A tracking server stand-in on HTTPS with a self-signed certificate, whose /health wants basic auth.

    Yields its URL and the certificate's file: the CA a user hands MLflow with MLFLOW_TRACKING_SERVER_CERT_PATH.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "server.pem", tmp_path / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    expected = "Basic " + base64.b64encode(b"alice:s3cret").decode()

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the name http.server calls
            ok = self.path == "/health" and self.headers.get("Authorization") == expected
            self.send_response(200 if ok else 401)
            self.end_headers()
            self.wfile.write(b"OK" if ok else b"")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{server.server_address[1]}", cert_file
    server.shutdown()


def test_the_reachability_check_uses_mlflows_tls_and_credential_settings(https_server, monkeypatch):
    """A server with a private CA and basic auth answers the check exactly when MLflow's settings say how."""
    url, cert = https_server
    for variable in ("MLFLOW_TRACKING_SERVER_CERT_PATH", "MLFLOW_TRACKING_INSECURE_TLS", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret")
    with pytest.raises(TrackingError, match="does not answer: SSLError"):
        check_reachable(url)  # the private CA is unknown to the default trust store
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(cert))
    check_reachable(url)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
    with pytest.raises(TrackingError, match="does not answer: HTTPError"):
        check_reachable(url)


@pytest.mark.parametrize("uri", ["mlruns", "./mlruns", "file:///tmp/mlruns"])
def test_file_store_is_rejected(uri):
    with pytest.raises(TrackingError, match="sqlite:///"):
        check_reachable(uri)


def test_sqlite_store_is_checked_without_writing(tmp_path, monkeypatch):
    """Checking the inputs writes nothing; the Tracker creates the database folder when it opens the store."""
    monkeypatch.chdir(tmp_path)
    check_reachable("sqlite:///a/b/mlflow.db")
    assert list(tmp_path.iterdir()) == []
    Tracker("sqlite:///a/b/mlflow.db", "exp", "a/artifacts", system_metrics=False)
    assert (tmp_path / "a" / "b" / "mlflow.db").is_file()


def test_experiment_is_created_once(tracking_uri, tracker, tmp_path):
    experiment = tracker.client.get_experiment(tracker.experiment_id)
    assert experiment.artifact_location.startswith("file://")
    assert experiment.artifact_location.endswith(f"artifacts/{experiment.name}")
    again = Tracker(tracking_uri, experiment.name, str(tmp_path / "elsewhere"), system_metrics=False)
    assert again.experiment_id == tracker.experiment_id


def test_study_run_is_created_then_reopened(tracker, study_run):
    """A resumed sweep continues the same parent run instead of starting a second one."""
    study, run_id = study_run
    run = tracker.client.get_run(run_id)
    assert run.data.tags["runner.role"] == "study" and run.data.tags["runner.study"] == "s"
    assert run.data.tags["runner.command"] == "test"
    assert study.user_attrs[STUDY_RUN_ATTR] == run_id
    tracker.close_study_run("KILLED")
    assert tracker.client.get_run(run_id).info.status == "KILLED"
    assert tracker.open_study_run(study, {"runner.command": "again"}) == run_id
    reopened = tracker.client.get_run(run_id)
    assert reopened.info.status == "RUNNING" and reopened.data.tags["runner.command"] == "again"


@pytest.mark.parametrize(
    ("raised", "status", "state", "error"),
    [
        (None, "FINISHED", "COMPLETE", None),
        (optuna.TrialPruned("pruned after epoch 1"), "KILLED", "PRUNED", None),
        (ValueError("boom"), "FAILED", "FAIL", "ValueError: boom"),
        (KeyboardInterrupt(), "KILLED", "FAIL", "interrupted"),
    ],
    ids=["complete", "pruned", "failed", "interrupted"],
)
def test_trial_run_status_follows_the_block(tracker, study_run, raised, status, state, error):
    _, parent_id = study_run
    params = {"learning_rate": 1e-4, "per_device_train_batch_size": 8, "model": "tiny"}
    block = pytest.raises(type(raised)) if raised is not None else _no_error()
    with block, tracker.trial_run("s", 3, params) as run:
        run.log_metrics({"eval_f1": 0.5}, step=1)
        if raised is not None:
            raise raised
    logged = tracker.client.get_run(run.run_id)
    assert logged.info.status == status
    assert logged.info.run_name == "trial-003"
    tags = logged.data.tags
    assert tags["optuna.state"] == state
    assert tags[MLFLOW_PARENT_RUN_ID] == parent_id
    assert tags["runner.role"] == "trial" and tags["optuna.trial_number"] == "3"
    assert logged.data.params == {"learning_rate": "0.0001", "per_device_train_batch_size": "8", "model": "tiny"}
    assert logged.data.metrics == {"eval_f1": 0.5}
    if error is None:
        assert "runner.error" not in tags
    else:
        assert error in tags["runner.error"]
    if state == "PRUNED":
        assert tags["runner.pruned_reason"] == "pruned after epoch 1"
    artifacts = {f.path for f in tracker.client.list_artifacts(run.run_id)}
    assert ("error.txt" in artifacts) == (status == "FAILED")


class _no_error:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _system_metrics(client, run_id: str, within_s: float) -> list[str]:
    """The run's system/* metric keys, polled for up to ``within_s`` seconds until there is one."""
    deadline = time.monotonic() + within_s
    while True:
        keys = sorted(k for k in client.get_run(run_id).data.metrics if k.startswith("system/"))
        if keys or time.monotonic() > deadline:
            return keys
        time.sleep(0.1)


def test_trial_run_with_system_metrics(tracking_uri, tmp_path, monkeypatch):
    """The monitor samples while the trial's run is open, and starts and stops without changing its outcome.

    With a 0.5 s interval the first sample lands well within 5 s; the default 10 s interval would not.
    """
    monkeypatch.setattr(runs, "SYSTEM_METRICS_INTERVAL_S", 0.5)
    tracker = Tracker(tracking_uri, "system-metrics", str(tmp_path / "artifacts"), system_metrics=True)
    tracker.open_study_run(optuna.create_study(study_name="s"), {})
    with tracker.trial_run("s", 0, {"a": 1}) as run:
        run.log_metrics({"eval_f1": 0.5}, step=1)
        sampled = _system_metrics(tracker.client, run.run_id, within_s=5)
    assert "system/cpu_utilization_percentage" in sampled, sampled
    finished = tracker.client.get_run(run.run_id)
    assert finished.info.status == "FINISHED" and finished.data.metrics["eval_f1"] == 0.5


def test_many_and_long_params(tracker, study_run):
    """MLflow takes 100 params per call and 6000 characters per value: both are handled."""
    params = {f"p{i:03d}": i for i in range(150)} | {"long": "x" * 7000}
    with tracker.trial_run("s", 0, params) as run:
        pass
    logged = tracker.client.get_run(run.run_id).data.params
    assert len(logged) == 151 and logged["p149"] == "149"
    assert logged["long"] == "x" * 6000


def test_orphaned_trial_runs_are_settled(tracker, study_run):
    """Runs left RUNNING by a killed process are marked FAILED, unless their trial is still live."""
    dead = tracker.trial_run("s", 0, {})
    live = tracker.trial_run("s", 1, {})
    dead_id, live_id = dead.__enter__().run_id, live.__enter__().run_id
    assert tracker.settle_orphans("s", live_numbers={1}) == 1
    settled = tracker.client.get_run(dead_id)
    assert settled.info.status == "FAILED" and settled.data.tags["optuna.state"] == "FAIL"
    assert "died" in settled.data.tags["runner.error"]
    assert tracker.client.get_run(live_id).info.status == "RUNNING"


def test_study_run_update_and_close(tracker, study_run, tmp_path):
    _, run_id = study_run
    table = tmp_path / "trials.csv"
    table.write_text("number,value\n0,0.5\n", encoding="utf-8")
    tracker.update_study_run({"best_eval_f1": 0.5}, {"best_trial.number": 0}, [table])
    tracker.close_study_run("FINISHED")
    run = tracker.client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["best_eval_f1"] == 0.5 and run.data.tags["best_trial.number"] == "0"
    assert [f.path for f in tracker.client.list_artifacts(run_id)] == ["trials.csv"]


def test_sqlite_store_urls_are_read_as_sqlalchemy_reads_them(tmp_path, monkeypatch):
    """A query or a driver in the URL does not hide the store's file (nor make a relative path stick)."""
    import sqlite3

    from runner.record.store import absolute_sqlite_uri, check_store_exists

    db = tmp_path / "mlflow.db"
    sqlite3.connect(db).close()
    check_store_exists(f"sqlite:///{db}?timeout=30")  # there: no error
    with pytest.raises(TrackingError, match="no MLflow tracking store at .*none.db: run a sweep first"):
        check_store_exists(f"sqlite+pysqlite:///{tmp_path / 'none.db'}")
    monkeypatch.chdir(tmp_path)
    assert absolute_sqlite_uri("sqlite+pysqlite:///rel/m.db") == f"sqlite+pysqlite:///{tmp_path}/rel/m.db"
    assert absolute_sqlite_uri("sqlite:///m.db?timeout=3") == f"sqlite:///{tmp_path}/m.db?timeout=3"
    assert absolute_sqlite_uri("sqlite:///:memory:") == "sqlite:///:memory:"

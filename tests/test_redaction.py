"""No password in any record or output: the redaction helper, and every place text leaves the process.

The end-to-end scan (a real sweep and export on PostgreSQL and a tracking server, then
every byte searched for the password) is in tests/test_secrets_e2e.py.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner.redact import RedactingFilter, printable, redact_argv, redact_text, redact_url

REPO = Path(__file__).resolve().parents[1]
SECRET = "Sentinel-7f3a9c"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://runner:PW@db.example/optuna", "postgresql://runner@db.example/optuna"),
        ("postgresql+psycopg://u:p%40ss@h:5432/db?sslmode=require", "postgresql+psycopg://u@h:5432/db?sslmode=require"),
        ("mysql://u:PW@[::1]:3306/x", "mysql://u@[::1]:3306/x"),
        ("http://u:PW@h:5000", "http://u@h:5000"),
        ("https://u:p@ss/w@host/x", "https://u@host/x"),  # a raw @ and / in the password
        ("postgresql://u:PW@h:notaport/db", "postgresql://u@h:notaport/db"),  # unparsable: scrubbed as text
        ("postgresql://h/db?password=PW&sslmode=require", "postgresql://h/db?sslmode=require"),
        ("http://h:5000/?token=PW", "http://h:5000/"),
        ("sqlite:///mlruns/optuna.db", "sqlite:///mlruns/optuna.db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("not a url", "not a url"),
    ],
)
def test_redact_url_drops_the_password_and_keeps_the_rest(url, expected):
    assert redact_url(url) == expected


def test_redact_text_cleans_every_url_in_a_command_line():
    line = f"--storage=postgresql://u:{SECRET}@h/db --tracking-uri https://a:{SECRET}@h:5000 x?password={SECRET}&b=1"
    cleaned = redact_text(line)
    assert SECRET not in cleaned
    assert cleaned.startswith("--storage=postgresql://u@h/db --tracking-uri https://a@h:5000")
    assert redact_argv(["--storage", f"mysql://u:{SECRET}@h/x", "--trials", "3"]) == [
        "--storage",
        "mysql://u@h/x",
        "--trials",
        "3",
    ]


def test_printable_escapes_terminal_control_sequences():
    assert printable("a\x1b[2Jb\x07") == "a\\x1b[2Jb\\x07"
    assert printable(f"see postgresql://u:{SECRET}@h/db") == "see postgresql://u@h/db"


def test_saved_config_holds_no_password_and_still_loads(tmp_path):
    from runner.config import SweepConfig, load_config, to_yaml

    cfg = SweepConfig.model_validate(
        {
            "study": {"storage": f"postgresql://runner:{SECRET}@db/optuna"},
            "tracking": {"tracking_uri": f"https://runner:{SECRET}@mlflow.example:5000"},
        }
    )
    text = to_yaml(cfg)
    assert SECRET not in text
    saved = tmp_path / "runner_config.yaml"
    saved.write_text(text, encoding="utf-8")
    again = load_config(saved)
    assert again.study.storage == "postgresql://runner@db/optuna"
    assert again.tracking.tracking_uri == "https://runner@mlflow.example:5000"


def test_study_run_command_tag_is_reproduced_without_the_password(monkeypatch):
    from runner.config import SweepConfig
    from runner.search.study_run import reproduction_tags

    storage = f"postgresql://runner:{SECRET}@db/optuna"
    monkeypatch.setattr(sys, "argv", ["sweep.py", "--storage", storage, f"--tracking-uri=http://u:{SECRET}@h"])
    tags = reproduction_tags(SweepConfig.model_validate({"study": {"storage": storage}}))
    assert all(SECRET not in v for v in tags.values())
    assert "--storage postgresql://runner@db/optuna --tracking-uri=http://u@h" in tags["runner.command"]
    assert tags["runner.storage"] == "postgresql://runner@db/optuna"


def test_log_lines_go_through_redaction():
    from runner.cli import setup_logging

    root = logging.getLogger()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root.addHandler(handler)
    try:
        setup_logging()  # adds the filter to every handler of the root logger
        assert any(isinstance(f, RedactingFilter) for f in handler.filters)
        logging.getLogger("runner").warning("cannot reach %s", f"postgresql://u:{SECRET}@h/db")
    finally:
        root.removeHandler(handler)
    assert "postgresql://u@h/db" in stream.getvalue()
    assert SECRET not in stream.getvalue()


def _run(module: str, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120
    )


# The sweep's command line in a fresh interpreter: its exit code and the heavy libraries loaded by then go to
# stdout, so a test sees what the real command imported before it refused a bad store.
SWEEP_THEN_MODULES = """
import sys
from runner.sweep import main
code = main(sys.argv[1:])
heavy = sorted(name for name in ("torch", "transformers", "datasets") if name in sys.modules)
print(code, ",".join(heavy) or "-")
"""


def _sweep_in_fresh_interpreter(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    """``runner.sweep`` with ``args`` in a new process: (exit code, heavy modules it imported, stderr)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-c", SWEEP_THEN_MODULES, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120
    )
    assert SECRET not in proc.stdout + proc.stderr
    code, heavy = proc.stdout.split()
    return int(code), heavy, proc.stderr


@pytest.mark.e2e
@pytest.mark.parametrize(
    "storage",
    [
        f"postgresql://runner:{SECRET}@127.0.0.1:notaport/optuna",  # malformed port: printed raw before
        f"postgresql://runner:{SECRET}@127.0.0.1:9/optuna",  # nothing listens: the driver's message
    ],
)
def test_storage_errors_print_no_password_and_come_before_any_heavy_import(tmp_path, sweep_yaml, storage):
    """A bad store fails fast: one redacted line, before torch, transformers or datasets are loaded."""
    code, heavy, err = _sweep_in_fresh_interpreter("--config", str(sweep_yaml), "--storage", storage, cwd=tmp_path)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert "runner@127.0.0.1" in err
    assert heavy == "-", f"imported before the storage check: {heavy}"


@pytest.mark.e2e
def test_tracking_uri_from_the_environment_prints_no_password(tmp_path, sweep_yaml):
    env = {"MLFLOW_TRACKING_URI": f"http://runner:{SECRET}@127.0.0.1:9"}
    code, heavy, err = _sweep_in_fresh_interpreter("--config", str(sweep_yaml), env=env, cwd=tmp_path)
    assert code == 2, err
    assert "http://runner@127.0.0.1:9" in err
    assert heavy == "-", f"imported before the tracking server check: {heavy}"


@pytest.mark.e2e
@pytest.mark.parametrize("command", ["runner.export", "runner.report"])
def test_compare_and_ship_commands_print_no_password(tmp_path, command):
    env = {"MLFLOW_TRACKING_URI": f"http://runner:{SECRET}@127.0.0.1:9"}
    result = _run(command, "--study", "tiny", env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert "runner@127.0.0.1:9" in result.stderr


def test_ui_hands_the_store_to_mlflow_through_the_environment():
    from runner import ui

    uri = f"postgresql://runner:{SECRET}@db/mlflow"
    assert all(SECRET not in part for part in ui.server_command(5000))
    assert ui.server_env(uri)["MLFLOW_BACKEND_STORE_URI"] == uri


def test_failed_trial_records_no_password(run_sweep, store, monkeypatch):
    """A trial whose error quotes a URL: its MLflow tag, error.txt and Optuna attribute are redacted."""
    import runner.search.objective

    def broken(*args, **kwargs):
        raise RuntimeError(f"could not connect to postgresql://runner:{SECRET}@db/optuna")

    monkeypatch.setattr(runner.search.objective, "train", broken)
    result = run_sweep("--trials", "1", "--set", "study.max_failure_rate=1.0")
    assert SECRET not in result.out + result.err
    runs = store.children()  # the sweep stops after three failed trials
    assert runs and all(run.info.status == "FAILED" for run in runs)
    for run in runs:
        assert "postgresql://runner@db/optuna" in run.data.tags["runner.error"]
        error_txt = store.client.download_artifacts(run.info.run_id, "error.txt")
        assert SECRET not in Path(error_txt).read_text(encoding="utf-8")
    for trial in store.study().trials:
        assert "postgresql://runner@db/optuna" in trial.user_attrs["error"]


def test_bench_results_hold_no_password(tmp_path, monkeypatch):
    from bench import common

    monkeypatch.setattr(common, "ROOT", tmp_path)
    monkeypatch.setattr(common, "RESULTS", tmp_path / "bench" / "results")
    monkeypatch.setattr(sys, "argv", ["bench", "--storage", f"postgresql://u:{SECRET}@h/db"])
    path = common.save("secret-check", {"storage": f"postgresql://u:{SECRET}@h/db"})
    text = path.read_text(encoding="utf-8")
    assert SECRET not in text
    assert "postgresql://u@h/db" in text

"""The ``runner`` command and what its five verbs share (runner.cli): the real entry points, as subprocesses."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys

import pytest

from runner.config import StudyConfig, TrackingConfig

VERBS = ["sweep", "export", "predict", "report", "ui"]
# The environment variable is part of the interface (README): spelled out, not imported.
STORAGE_ENV = "RUNNER_STORAGE"


def run(*args: str, cwd=None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python ARGS`` with no tracking server or storage of the caller's leaking in."""
    base = {k: v for k, v in os.environ.items() if k not in (STORAGE_ENV, "MLFLOW_TRACKING_URI", "RUNNER_DATA_DIR")}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env={**base, **(env or {})}, capture_output=True, text=True, timeout=280
    )


def one_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


# --- one command, five verbs ----------------------------------------------------------------------


@pytest.mark.e2e
def test_runner_help_lists_the_five_commands():
    proc = run("-m", "runner", "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: runner ")
    listed = [line.split()[0] for line in proc.stdout.splitlines() if line.startswith("  ")]
    assert listed == VERBS


@pytest.mark.e2e
@pytest.mark.parametrize("verb", VERBS)
def test_runner_verb_help_names_the_runner_command(verb):
    """``runner VERB --help`` shows ``runner VERB``, the command the user typed, not the module."""
    proc = run("-m", "runner", verb, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: runner {verb} "), proc.stdout
    assert "python -m" not in proc.stdout.splitlines()[0]


@pytest.mark.e2e
@pytest.mark.parametrize("verb", VERBS)
def test_python_m_verb_still_works(verb):
    proc = run("-m", f"runner.{verb}", "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: python -m runner.{verb} "), proc.stdout


@pytest.mark.e2e
def test_an_unknown_verb_is_one_line_and_exit_2():
    proc = run("-m", "runner", "swep", "--trials", "3")
    assert proc.returncode == 2
    line = one_line(proc)
    assert line.startswith("runner: error: unknown command 'swep'") and "sweep" in line, line
    assert proc.stdout == ""


BAD_FLAGS = [
    ("sweep", ["--no-such-flag"]),
    ("sweep", ["--trials", "abc"]),
    ("export", ["--study", "s", "--no-such-flag"]),
    ("export", ["--study", "s", "--eval-split", "train"]),
    ("predict", ["--model", "m", "--batch-size", "abc"]),
    ("predict", ["--no-such-flag"]),
    ("report", ["--study", "s", "--top", "abc"]),
    ("report", []),  # --study is required
    ("ui", ["--port", "abc"]),
    ("ui", ["--no-such-flag"]),
]


# Each form names the command as the user typed it; the first bad flag of each verb is tried in both.
FORMS = [(["-m", "runner", verb], f"runner {verb}", flags) for verb, flags in BAD_FLAGS] + [
    (["-m", f"runner.{verb}"], f"runner.{verb}", flags) for verb, flags in dict(reversed(BAD_FLAGS)).items()
]


@pytest.mark.e2e
@pytest.mark.parametrize(("command", "name", "flags"), FORMS, ids=[f"{n}-{' '.join(f)}" for _, n, f in FORMS])
def test_a_bad_flag_is_one_line_and_exit_2(command, name, flags):
    """Every command, either form: one line naming the command and pointing at --help, no usage block."""
    proc = run(*command, *flags)
    assert proc.returncode == 2
    line = one_line(proc)
    assert line.startswith(f"{name}: error: ") and line.endswith(" (see --help)"), line
    assert "usage:" not in proc.stderr and proc.stdout == ""


@pytest.mark.e2e
def test_a_password_in_a_stray_argument_is_not_echoed():
    """argparse quotes what it did not understand: a URL given without its flag loses its password."""
    proc = run("-m", "runner", "report", "--study", "s", "postgresql://me:hunter2@db/optuna")
    assert proc.returncode == 2
    line = one_line(proc)
    assert "hunter2" not in line and "postgresql://me@db/optuna" in line, line


# --- the shared flags: one help text, from the config defaults ------------------------------------


def _helps(flag: str) -> dict[str, str]:
    helps = {}
    for verb in VERBS:
        parser = importlib.import_module(f"runner.{verb}").build_parser()
        helps.update({verb: a.help for a in parser._actions if flag in a.option_strings})
    return helps


def test_the_shared_flags_have_one_help_text_from_the_config_defaults():
    tracking = _helps("--tracking-uri")
    assert set(tracking) == set(VERBS)
    assert all(TrackingConfig().tracking_uri in text and "$MLFLOW_TRACKING_URI" in text for text in tracking.values())
    storage = _helps("--storage")
    assert set(storage) == {"sweep", "export", "report"}
    assert all(StudyConfig().storage in text and f"${STORAGE_ENV}" in text for text in storage.values())
    assert storage["export"] == storage["report"]
    assert set(_helps("--debug")) == set(VERBS)


def test_sweep_flags_default_to_none_so_the_file_wins(monkeypatch):
    """An unset --storage never overrides the config file; $RUNNER_STORAGE is applied with the file."""
    from runner.sweep import build_parser

    monkeypatch.setenv(STORAGE_ENV, "sqlite:///env.db")
    args = build_parser().parse_args([])
    assert args.storage is None and args.tracking_uri is None and args.debug is False


@pytest.mark.parametrize("verb", ["export", "report"])
def test_export_and_report_storage_falls_back_to_the_environment(verb, monkeypatch):
    parser = importlib.import_module(f"runner.{verb}").build_parser
    monkeypatch.delenv(STORAGE_ENV, raising=False)
    assert parser().parse_args(["--study", "s"]).storage == StudyConfig().storage
    monkeypatch.setenv(STORAGE_ENV, "sqlite:///from-env.db")
    assert parser().parse_args(["--study", "s"]).storage == "sqlite:///from-env.db"
    assert parser().parse_args(["--study", "s", "--storage", "sqlite:///flag.db"]).storage == "sqlite:///flag.db"
    # The help names the variable, never its value (a URL in it may hold a password).
    assert "from-env.db" not in parser().format_help()


@pytest.mark.e2e
def test_export_reads_runner_storage(tmp_path, premade_mlflow_db, monkeypatch, capsys):
    """The real command: with $RUNNER_STORAGE naming a missing database, the error names that file."""
    missing = tmp_path / "elsewhere" / "optuna.db"
    proc = run("-m", "runner", "export", "--study", "s", cwd=tmp_path, env={STORAGE_ENV: f"sqlite:///{missing}"})
    assert proc.returncode == 2
    line = one_line(proc)
    assert line.startswith("runner export: error: ") and f"no Optuna storage at {missing}" in line, line
    # The flag still wins over the variable (in-process: a second interpreter would only repeat the imports).
    from runner.export import main as export_main

    flag = tmp_path / "flag.db"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(STORAGE_ENV, f"sqlite:///{missing}")
    capsys.readouterr()
    assert export_main(["--study", "s", "--storage", f"sqlite:///{flag}"]) == 2
    err = capsys.readouterr().err
    assert f"no Optuna storage at {flag}" in err and str(missing) not in err, err


# --- one SIGTERM handler, one first-line helper ------------------------------------------------------


def test_sigterm_stops_like_ctrl_c_and_the_previous_handler_comes_back():
    from runner import cli

    def previous(signum, frame):
        raise AssertionError("the command's handler should have run")

    before = signal.signal(signal.SIGTERM, previous)
    try:
        with pytest.raises(KeyboardInterrupt), cli.sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
        assert signal.getsignal(signal.SIGTERM) is previous
    finally:
        signal.signal(signal.SIGTERM, before)


def test_quiet_libraries_turn_off_mlflows_download_bars(tmp_path, monkeypatch, capfd):
    """Export and report download artifacts: without --debug, MLflow draws no progress bar on stderr."""
    import mlflow
    from mlflow.artifacts import download_artifacts

    from runner.cli import quiet_libraries

    # Set, then removed: monkeypatch then puts back what the process had, whatever quiet_libraries sets.
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true")
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    run = client.create_run(client.create_experiment("bars", artifact_location=str(tmp_path / "art")))
    (tmp_path / "table.csv").write_text("trial,f1\n0,0.8\n")
    client.log_artifact(run.info.run_id, str(tmp_path / "table.csv"))
    quiet_libraries()
    capfd.readouterr()
    download_artifacts(
        run_id=run.info.run_id, artifact_path="table.csv", dst_path=str(tmp_path / "out"), tracking_uri=uri
    )
    assert (tmp_path / "out" / "table.csv").exists()
    assert "Downloading" not in capfd.readouterr().err


def test_a_reader_that_goes_away_ends_the_command_quietly():
    """`runner report | head`: once stdout's reader closes the pipe, the command stops, no traceback, exit 141."""
    program = (
        "import sys\nfrom runner.cli import run_command\n"
        "def work():\n    while True:\n        print('trial row ' * 8)\n"
        "sys.exit(run_command('runner report', work, quiet=False))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout.readline().startswith(b"trial row")
        proc.stdout.close()  # what `head` does once it has its lines
        stderr = proc.stderr.read()
        assert proc.wait(timeout=60) == 141
        assert stderr == b""
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize(
    ("message", "expected"),
    [("\n  cannot connect\ndetails: ...\n", "cannot connect"), ("", "OSError"), ("  \n ", "OSError")],
)
def test_first_line(message, expected):
    from runner.errors import first_line

    assert first_line(OSError(message)) == expected

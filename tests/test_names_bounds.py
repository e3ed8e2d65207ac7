"""Issue 14, items 12 and 14: names checked on every command, sizes bounded, store text escaped.

- ``--study`` (export, report) and ``--register`` (export) follow the ``study.name`` rule: a name
  like ``../x`` would leave the best-model or plots folder, and one with ``'`` never matches its own
  registered versions (MLflow filter strings quote it), so each re-export made a duplicate.
- Trials, epochs, batch sizes, retries and ``report --top`` have upper bounds: the bound is
  accepted, one more is a one-line error.
- A tag from the tracking store (``runner.error``) reaches the terminal escaped and without passwords.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner.config import (
    MAX_BATCH_SIZE,
    MAX_EPOCHS,
    MAX_RETRIES,
    MAX_TRIALS,
    ConfigError,
    StudyConfig,
    check_name,
    load_config,
)

REPO = Path(__file__).resolve().parents[1]


def run_module(module: str, *args: str, cwd: Path, code: str | None = None) -> subprocess.CompletedProcess:
    """``python -m module args`` (or ``python -c code``) from ``cwd``, with this checkout importable."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", module, *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


# --- names ---------------------------------------------------------------------------


BAD_NAMES = [
    ("runner.export", ["--study", "../x"], "--study"),
    ("runner.export", ["--study", "/etc"], "--study"),
    ("runner.export", ["--study", "ok", "--register", "it's"], "--register"),
    ("runner.export", ["--study", "ok", "--register", "../models"], "--register"),
    ("runner.export", ["--study", "ok", "--register", ""], "--register"),
    ("runner.report", ["--study", "../x"], "--study"),
    ("runner.report", ["--study", "ok", "--study", "a/b"], "--study"),
    ("runner.report", ["--study", "bad\x1b[2Jname"], "--study"),
]


@pytest.mark.e2e
@pytest.mark.parametrize(("module", "args", "flag"), BAD_NAMES, ids=[" ".join(a[1:]) for _, a, _ in BAD_NAMES])
def test_a_bad_name_is_a_one_line_error_before_any_store_is_touched(tmp_path, module, args, flag):
    result = run_module(module, *args, cwd=tmp_path)

    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and result.stderr.endswith("\n"), result.stderr
    assert lines[0].startswith(f"{module}: error: {flag} ") and "is not a valid name" in lines[0], lines[0]
    assert "\x1b" not in result.stderr and result.stdout == ""
    assert list(tmp_path.iterdir()) == [], "nothing is created"


@pytest.mark.e2e
@pytest.mark.parametrize("module", ["runner.export", "runner.report"])
def test_names_are_checked_before_the_ml_libraries_are_imported(tmp_path, module):
    code = (
        "import sys\n"
        f"from {module} import main\n"
        "status = main(sys.argv[1:])\n"
        "print(sorted(m for m in ('mlflow', 'optuna', 'torch', 'transformers') if m in sys.modules))\n"
        "sys.exit(status)\n"
    )
    result = run_module(module, "--study", "../x", cwd=tmp_path, code=code)
    assert result.returncode == 2, result.stderr
    assert result.stdout == "[]\n"


@pytest.mark.parametrize("name", ["mrpc", "Mrpc-2.bert_base", "7", "a.b-c_d"])
def test_a_valid_name_passes_like_in_the_config(name):
    assert check_name("--study", name) == name
    assert StudyConfig(name=name).name == name


@pytest.mark.parametrize("name", ["", ".hidden", "-x", "a b", "a/b", "..", "it's", "name\n", "tab\t", "é"])
def test_an_invalid_name_fails_like_in_the_config(name):
    with pytest.raises(ConfigError, match="not a valid name"):
        check_name("--register", name)
    with pytest.raises(ConfigError, match=r"study\.name: "):
        load_config(None, {"study.name": name})


# --- upper bounds ----------------------------------------------------------------------


BOUNDS = [
    ("study.n_trials", MAX_TRIALS),
    ("study.retry_failed", MAX_RETRIES),
    ("hyperparameters.num_train_epochs", MAX_EPOCHS),
    ("hyperparameters.per_device_train_batch_size", MAX_BATCH_SIZE),
    ("train.per_device_eval_batch_size", MAX_BATCH_SIZE),
    ("search_space.num_train_epochs", MAX_EPOCHS),
    ("search_space.per_device_train_batch_size", MAX_BATCH_SIZE),
]


@pytest.mark.parametrize(("key", "bound"), BOUNDS)
def test_each_size_has_an_upper_bound(key, bound):
    assert bound < 10**6  # a real bound, not a formality
    assert load_config(None, {key: bound}) is not None
    with pytest.raises(ConfigError, match=rf"{key}.*less than or equal to {bound}"):
        load_config(None, {key: bound + 1})


@pytest.mark.parametrize(("name", "bound"), [("num_train_epochs", MAX_EPOCHS), ("per_device_train_batch_size", 4096)])
def test_search_ranges_respect_the_bounds(name, bound):
    load_config(None, {f"search_space.{name}": {"type": "int", "low": 1, "high": bound}})
    load_config(None, {f"search_space.{name}": {"type": "categorical", "choices": [1, bound]}})
    with pytest.raises(ConfigError, match=rf"search_space.{name}: {bound + 1} is not valid"):
        load_config(None, {f"search_space.{name}": {"type": "int", "low": 1, "high": bound + 1}})
    with pytest.raises(ConfigError, match=rf"search_space.{name}: {bound + 1} is not valid"):
        load_config(None, {f"search_space.{name}": {"type": "categorical", "choices": [8, bound + 1]}})


@pytest.mark.parametrize(
    ("flag", "bound", "key"),
    [("--trials", MAX_TRIALS, "study.n_trials"), ("--retry-failed", MAX_RETRIES, "study.retry_failed")],
)
def test_sweep_flags_go_through_the_same_bounds(sweep_yaml, flag, bound, key):
    # resolve_config is what main() runs first; calling it alone starts no sweep, whatever the bound.
    from runner.sweep import build_parser, resolve_config

    def resolve(value: int):
        return resolve_config(build_parser().parse_args(["--config", str(sweep_yaml), flag, str(value)]))

    assert resolve(bound).model_dump()[key.split(".")[0]][key.split(".")[1]] == bound
    with pytest.raises(ConfigError, match=rf"{key}: Input should be less than or equal to {bound}"):
        resolve(bound + 1)


@pytest.mark.e2e
@pytest.mark.parametrize("top", [0, MAX_TRIALS + 1])
def test_report_top_is_bounded(tmp_path, top):
    result = run_module("runner.report", "--study", "tiny", "--top", str(top), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line == f"runner.report: error: --top must be between 1 and {MAX_TRIALS}, got {top}"


# --- what the report prints from the store ----------------------------------------------


SENTINEL = "S3ntinelPassw0rd"


@pytest.fixture
def hostile_store(tmp_path, monkeypatch, premade_mlflow_db):
    """A study whose failed trials carry an escape sequence and a password URL in their error tag."""
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    experiment = client.create_experiment("tiny")
    errors = [
        # Clear the screen, then retitle the terminal.
        f"RuntimeError: \x1b[2J postgresql://runner:{SENTINEL}@db/x \x1b]0;owned\x07",
        # The report cuts notes at 60 characters: here the cut falls inside the password.
        f"OperationalError: postgresql://runner:{SENTINEL}{SENTINEL}@db/optuna",
    ]
    for number, error in enumerate(errors):
        run = client.create_run(
            experiment,
            tags={
                "runner.role": "trial",
                "optuna.trial_number": str(number),
                "optuna.state": "FAIL",
                "runner.error": error,
            },
        )
        client.set_terminated(run.info.run_id, "FAILED")
    return tmp_path


@pytest.mark.parametrize("fmt", ["table", "markdown", "csv", "json"])
def test_report_prints_store_text_escaped_and_without_passwords(hostile_store, capsys, fmt):
    from runner.report import main as report_main

    capsys.readouterr()
    code = report_main(["--study", "tiny", "--format", fmt, "--top", str(MAX_TRIALS)])
    out, err = capsys.readouterr()

    assert code == 0, err
    assert "\x1b" not in out and "\x07" not in out
    assert SENTINEL[:8] not in out + err
    notes = [row["note"] for row in json.loads(out)] if fmt == "json" else [out]
    assert any("RuntimeError: \\x1b[2J postgresql://runner@db/x" in note for note in notes), out

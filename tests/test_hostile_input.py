"""Issue 4 §3: every broken input ends with one line on stderr, a non-zero exit, no traceback, stores untouched.

Cases already covered in test_sweep_cli.py::test_config_errors_exit_2_and_write_nothing: unknown key,
low > high, missing config, missing data folder, unknown model (path and Hub id), malformed storage URL
(unknown scheme), unreachable tracking server. This file adds the rest of the list.
"""

from __future__ import annotations

import hashlib

import pytest
from conftest import DEV_PAIRS, TRAIN_PAIRS, write_glue_tsv


def assert_one_line_error(result, expected: str) -> None:
    assert result.code == 2, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("runner.sweep: error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in result.err


def stores_written(root) -> list:
    mlruns = root / "mlruns"
    return [p for p in mlruns.rglob("*") if p.is_file()] if mlruns.exists() else []


# --- the config file and the command line -------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("study: [name: x\n", "invalid YAML"),
        ("train:\n  seed: many\n", "train.seed: Input should be a valid integer"),
        (
            "search_space:\n  learning_rate: {type: float, low: 0.0, high: 1.0e-3, log: true}\n",
            "log scale needs low > 0",
        ),
        (
            "search_space:\n  learning_rate: {type: float, low: -1.0, high: 1.0e-3, log: true}\n",
            "log scale needs low > 0",
        ),
        ("search_space:\n  per_device_train_batch_size: {type: categorical, choices: []}\n", "choices"),
        ("hyperparameters:\n  num_train_epochs: 0\n", "hyperparameters.num_train_epochs"),
        ("search_space:\n  num_train_epochs: {type: int, low: -1, high: 2}\n", "num_train_epochs"),
        ("hyperparameters:\n  per_device_train_batch_size: 0\n", "hyperparameters.per_device_train_batch_size"),
        ("search_space:\n  per_device_train_batch_size: {type: categorical, choices: [8, -4]}\n", "-4 is not valid"),
        ("- just\n- a list\n", "top level must be a mapping"),
    ],
    ids=[
        "yaml-syntax",
        "wrong-type",
        "log-low-zero",
        "log-low-negative",
        "empty-categorical",
        "epochs-zero",
        "epochs-range-negative",
        "batch-zero",
        "batch-choice-negative",
        "not-a-mapping",
    ],
)
def test_bad_config_file(run_sweep, sweep_yaml, tmp_path, text, expected):
    sweep_yaml.write_text(text, encoding="utf-8")
    assert_one_line_error(run_sweep("--trials", "1"), expected)
    assert stores_written(tmp_path) == []


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: p.mkdir(), "cannot read config file"),
        (lambda p: p.write_bytes(b"study:\n  name: caf\xe9\n"), "cannot read config file"),
    ],
    ids=["a-directory", "not-utf8"],
)
def test_unreadable_config(run_sweep, tmp_path, make, expected):
    path = tmp_path / "unreadable.yaml"
    make(path)
    assert_one_line_error(run_sweep("--config", str(path)), expected)
    assert stores_written(tmp_path) == []


@pytest.mark.parametrize("trials", ["0", "-3"])
def test_trials_must_be_positive(run_sweep, tmp_path, trials):
    assert_one_line_error(run_sweep("--trials", trials), "study.n_trials: Input should be greater than 0")
    assert stores_written(tmp_path) == []


# --- the data folder ------------------------------------------------------------------


def _folder(tmp_path, files: dict[str, object]):
    folder = tmp_path / "data"
    folder.mkdir()
    for name, content in files.items():
        if isinstance(content, bytes):
            (folder / name).write_bytes(content)
        elif isinstance(content, str):
            (folder / name).write_text(content, encoding="utf-8")
        else:
            write_glue_tsv(folder / name, content)
    return folder


BAD_LABELS = [*TRAIN_PAIRS[:3], ("A sentence.", "Another one.", 2)]
EMPTY_ROW = [*TRAIN_PAIRS[:3], ("A sentence.", "", 1)]


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({}, "no data files"),
        ({"train.tsv": TRAIN_PAIRS}, "no validation split"),
        ({"dev.tsv": DEV_PAIRS}, "no train split"),
        ({"train.csv": "sentence1,label\na,1\n", "dev.csv": "sentence1,label\nb,0\n"}, "missing column(s) sentence2"),
        ({"train.tsv": BAD_LABELS, "dev.tsv": DEV_PAIRS}, "labels must be 0 or 1, found 2"),
        ({"train.tsv": EMPTY_ROW, "dev.tsv": DEV_PAIRS}, "empty sentence2"),
        (
            {"train.tsv": "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tcaf\xe9\tx\n", "dev.tsv": DEV_PAIRS},
            "valid",  # written as UTF-8 here; replaced with Latin-1 bytes below
        ),
    ],
    ids=["empty-folder", "no-dev-split", "no-train-split", "no-column", "label-outside", "empty-row", "non-utf8"],
)
def test_bad_data_folder(run_sweep, tmp_path, files, expected):
    if expected == "valid":
        files = {**files, "train.tsv": files["train.tsv"].encode("latin-1")}
        expected = "not valid UTF-8"
    folder = _folder(tmp_path, files)
    assert_one_line_error(run_sweep("--trials", "1", "--data-dir", str(folder)), expected)
    assert stores_written(tmp_path) == []


# --- the stores ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("storage", "expected"),
    [
        ("postgresql://runner@127.0.0.1:9/optuna", "cannot connect to Optuna storage"),
        ("postgresql://runner@127.0.0.1:notaport/optuna", "invalid Optuna storage URL"),
    ],
    ids=["database-unreachable", "malformed-port"],
)
def test_unusable_storage(run_sweep, tmp_path, storage, expected):
    assert_one_line_error(run_sweep("--trials", "1", "--storage", storage), expected)
    assert stores_written(tmp_path) == []


def _fingerprint(root) -> dict[str, str]:
    # The databases' logical content: SQLite in WAL mode may rewrite pages on open, so not the bytes.
    import sqlite3

    out = {}
    for name in ("optuna.db", "mlflow.db"):
        with sqlite3.connect(root / "mlruns" / name) as conn:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
            digest = hashlib.sha256()
            for table in tables:
                for row in conn.execute(f'SELECT * FROM "{table}" ORDER BY 1'):
                    digest.update(repr(row).encode())
        conn.close()
        out[name] = digest.hexdigest()
    out["files"] = sorted(
        str(p.relative_to(root))
        for p in (root / "mlruns").rglob("*")
        if p.is_file() and not p.name.endswith(("-wal", "-shm"))
    )
    return out


@pytest.mark.usefixtures("premade_mlflow_db", "fake_train")  # the first sweep only has to leave a study behind
@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (["--set", "search_space.learning_rate={type: float, low: 1.0e-5, high: 1.0e-3, log: true}"], "search space"),
        (["--set", "study.direction=minimize", "--set", "study.metric=eval_loss"], "different metric and direction"),
    ],
    ids=["search-space", "metric-direction"],
)
def test_existing_study_with_another_objective(run_sweep, tmp_path, change, expected):
    """Resuming with another search space or direction: says how to start anew, changes nothing."""
    assert run_sweep("--trials", "1").code == 0
    before = _fingerprint(tmp_path)
    result = run_sweep("--trials", "2", *change)
    assert_one_line_error(result, expected)
    assert "--study NEW_NAME" in result.err
    assert _fingerprint(tmp_path) == before

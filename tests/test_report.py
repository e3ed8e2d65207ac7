"""runner.report: one row per trial from MLflow, best first, pruned and failed shown; plots; several studies."""

from __future__ import annotations

import io
import json

import optuna
import pandas as pd
import pytest
from optuna.distributions import FloatDistribution, IntDistribution

from runner.report import main as report_main

COLUMNS = [
    "study", "trial", "state", "learning_rate", "num_train_epochs",
    "precision", "best_f1", "accuracy", "best_epoch", "train_s", "note",
]  # fmt: skip
SPACE = {"learning_rate": FloatDistribution(1e-4, 1e-3, log=True), "num_train_epochs": IntDistribution(1, 2)}


def report(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = report_main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def add_pruned_and_failed(tmp_path, store) -> None:
    """Record a pruned and a failed trial the way the objective does: Optuna trial + Tracker run."""
    from runner.record.runs import Tracker

    study = store.study()
    tracker = Tracker(
        f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}", "tiny", str(tmp_path / "mlruns" / "artifacts"), False
    )
    tracker.study_run_id = store.parent().info.run_id
    for fate in ("pruned", "failed"):
        trial = study.ask(SPACE)
        params = {**trial.params, "precision": "fp32"}
        with pytest.raises((optuna.TrialPruned, RuntimeError)):
            with tracker.trial_run("tiny", trial.number, params) as run:
                run.log_metrics({"eval_f1": 0.25, "eval_accuracy": 0.5}, step=1)
                if fate == "failed":
                    raise RuntimeError("out of memory")
                trial.report(0.25, step=1)
                run.log_metrics({"best_eval_f1": 0.25, "best_eval_accuracy": 0.5, "best_epoch": 1})
                raise optuna.TrialPruned("pruned after epoch 1")
        study.tell(trial, state=optuna.trial.TrialState.PRUNED if fate == "pruned" else optuna.trial.TrialState.FAIL)


def test_every_trial_is_a_row_best_first_in_every_format(run_sweep, store, tmp_path, capsys, premade_mlflow_db):
    assert run_sweep("--trials", "2").code == 0
    add_pruned_and_failed(tmp_path, store)
    values = {t.number: t.value for t in store.study().trials if t.state == optuna.trial.TrialState.COMPLETE}

    code, out, err = report(capsys, "--study", "tiny", "--format", "csv")

    assert code == 0, err
    table = pd.read_csv(io.StringIO(out))
    assert list(table.columns) == COLUMNS
    assert list(table["state"]) == ["COMPLETE", "COMPLETE", "PRUNED", "FAIL"]
    complete = table[table["state"] == "COMPLETE"]
    assert list(complete["best_f1"]) == sorted(complete["best_f1"], reverse=True)
    assert {int(t): f for t, f in zip(complete["trial"], complete["best_f1"], strict=True)} == pytest.approx(values)
    assert set(table["trial"]) == {0, 1, 2, 3}
    assert "RuntimeError: out of memory" in table.iloc[3]["note"]
    assert pd.isna(table.iloc[3]["best_f1"])
    assert table.iloc[2]["best_f1"] == pytest.approx(0.25)
    assert (complete["best_epoch"] >= 1).all() and (complete["train_s"].astype(float) > 0).all()

    code, out, _ = report(capsys, "--study", "tiny")
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 5
    assert lines[0].split() == COLUMNS[1:-1] + ["note"]
    assert "PRUNED" in lines[3] and "FAIL" in lines[4]

    code, out, _ = report(capsys, "--study", "tiny", "--format", "markdown", "--top", "2")
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 4 and lines[0].startswith("| trial | state |") and lines[1].startswith("|---")

    code, out, _ = report(capsys, "--study", "tiny", "--format", "json", "--top", "1")
    (row,) = json.loads(out)
    assert code == 0 and row["state"] == "COMPLETE" and row["best_f1"] == pytest.approx(max(values.values()))


def test_two_studies_side_by_side_and_plots(run_sweep, store, tmp_path, capsys, premade_mlflow_db):
    assert run_sweep("--trials", "2").code == 0
    assert run_sweep("--trials", "1", "--study", "other").code == 0

    code, out, err = report(capsys, "--study", "tiny", "--study", "other", "--format", "csv")
    assert code == 0, err
    table = pd.read_csv(io.StringIO(out))
    assert table.groupby("study").size().to_dict() == {"tiny": 2, "other": 1}

    code, out, err = report(capsys, "--study", "tiny", "--study", "other", "--plots", str(tmp_path / "plots"))
    assert code == 0, err
    summary = out.splitlines()[0].split()
    assert summary[:2] == ["study", "trials"] and "other" in out and "tiny" in out
    for study in ("tiny", "other"):
        names = {p.name for p in (tmp_path / "plots" / study).iterdir()}
        expected = {"optimization_history", "parallel_coordinate", "intermediate_values", "f1_vs_learning_rate"}
        if study == "tiny":
            expected.add("param_importances")  # needs two complete trials
        for name in expected:
            assert f"{name}.png" in names and f"{name}.html" in names, (study, name)
        assert "plotly.min.js" in names
    png = tmp_path / "plots" / "tiny" / "f1_vs_learning_rate.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "plotly" in (tmp_path / "plots" / "tiny" / "parallel_coordinate.html").read_text()

    # No such Optuna storage: the MLflow plot alone, and no storage file is created.
    missing = tmp_path / "none.db"
    code, _, err = report(
        capsys, "--study", "tiny", "--plots", str(tmp_path / "p2"), "--storage", f"sqlite:///{missing}"
    )
    assert code == 0, err
    assert {p.suffix for p in (tmp_path / "p2").glob("f1_vs_learning_rate.*")} == {".png", ".html"}
    assert not (tmp_path / "p2" / "optimization_history.png").exists() and not missing.exists()
    # A malformed storage URL: one line, exit 2.
    code, _, err = report(
        capsys, "--study", "tiny", "--plots", str(tmp_path / "p3"), "--storage", "postgresql+nope://h/db"
    )
    assert code == 2 and err.count("\n") == 1 and "invalid Optuna storage URL" in err


def test_a_missing_store_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = report(capsys, "--study", "tiny")
    assert code == 2 and err.count("\n") == 1 and "run a sweep first" in err and out == ""
    assert not (tmp_path / "mlruns").exists()


def test_an_unknown_study_is_a_one_line_error(tmp_path, monkeypatch, capsys, premade_mlflow_db):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}").create_experiment("tiny")
    code, out, err = report(capsys, "--study", "nope")
    assert code == 2 and err.count("\n") == 1 and "'nope'" in err and "known: tiny" in err
    assert out == ""

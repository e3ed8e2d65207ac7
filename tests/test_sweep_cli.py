"""`python -m runner.sweep` end to end on the tiny model: what lands in MLflow, Optuna and mlruns/best."""

from __future__ import annotations

import json
import subprocess
import sys

import optuna
import pandas as pd
import pytest
import transformers
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from runner.config import load_config

TRIAL_PARAMS = {
    "learning_rate",
    "per_device_train_batch_size",
    "num_train_epochs",
    "fp16",
    "precision",
    "model",
    "seed",
    "max_length",
    "attn_implementation",
    "attention_dropout",
}
EPOCH_METRICS = ("eval_f1", "eval_accuracy", "eval_loss", "train_loss")


def states(study) -> list[str]:
    return [t.state.name for t in sorted(study.trials, key=lambda t: t.number)]


@pytest.mark.usefixtures("fake_train")
def test_sweep_records_everything(run_sweep, store, tmp_path, tiny_model):
    """3 trials: one parent run, 3 nested children with params, per-epoch metrics, artifacts; Optuna agrees."""
    plots = ("--set", "tracking.study_plots=true")
    result = run_sweep("--trials", "3", "--set", "study.metric=eval_loss", "--set", "study.direction=minimize", *plots)
    assert result.code == 0, result.err

    parent = store.parent()
    assert parent.info.status == "FINISHED"
    children = store.children()
    assert [c.data.tags["optuna.trial_number"] for c in children] == ["0", "1", "2"]
    study = store.study()
    assert states(study) == ["COMPLETE"] * 3

    for child, trial in zip(children, sorted(study.trials, key=lambda t: t.number)):
        tags, params, metrics = child.data.tags, child.data.params, child.data.metrics
        assert child.info.status == "FINISHED" and tags["optuna.state"] == "COMPLETE"
        assert tags[MLFLOW_PARENT_RUN_ID] == parent.info.run_id
        assert tags["runner.role"] == "trial"
        assert TRIAL_PARAMS <= set(params)
        assert params["model"] == str(tiny_model) and params["max_length"] == "64" and params["seed"] == "7"
        assert params["attention_dropout"] == "0.1"  # the checkpoint's, since the sweep did not override it
        assert float(params["learning_rate"]) == trial.params["learning_rate"]
        epochs = int(params["num_train_epochs"])
        assert epochs == trial.params["num_train_epochs"]
        for name in EPOCH_METRICS:
            history = store.client.get_metric_history(child.info.run_id, name)
            assert sorted(m.step for m in history) == list(range(1, epochs + 1)), name
        losses = {m.step: m.value for m in store.client.get_metric_history(child.info.run_id, "eval_loss")}
        assert metrics["best_epoch"] == min(losses, key=losses.get)
        assert metrics["best_eval_loss"] == min(losses.values()) == trial.value
        assert "best_eval_f1" in metrics and "best_eval_accuracy" in metrics
        assert {"validation_predictions.csv", "confusion_matrix.png", "log_history.json"} <= store.artifacts(child)

    predictions = pd.read_csv(store.client.download_artifacts(children[0].info.run_id, "validation_predictions.csv"))
    assert list(predictions.columns) == ["sentence1", "sentence2", "label", "prediction", "probability"]
    assert len(predictions) == 8 and predictions["probability"].between(0.5, 1.0).all()

    best = study.best_trial
    assert {"config.yaml", "trials.csv"} <= store.artifacts(parent)
    study_plots = {"optimization_history.png", "parallel_coordinate.png", "param_importances.png"}
    assert study_plots <= store.artifacts(parent)
    assert parent.data.tags["best_trial.number"] == str(best.number)
    assert parent.data.tags["best_trial.run_id"] == children[best.number].info.run_id
    assert parent.data.metrics["best_eval_loss"] == best.value
    config = load_config(store.client.download_artifacts(parent.info.run_id, "config.yaml"))
    assert (config.study.name, config.study.n_trials, config.study.metric) == ("tiny", 3, "eval_loss")
    trials = pd.read_csv(store.client.download_artifacts(parent.info.run_id, "trials.csv"))
    assert len(trials) == 3

    folder = tmp_path / "mlruns" / "best" / "tiny"
    info = json.loads((folder / "trial.json").read_text(encoding="utf-8"))
    assert info["trial"] == best.number and info["value"] == best.value
    classify = transformers.pipeline("text-classification", model=str(folder))
    assert classify({"text": "The cat sat.", "text_pair": "A cat sat."})["label"] in {"equivalent", "not_equivalent"}

    assert "trials: 3 complete" in result.out
    assert f"best: trial {best.number}" in result.out
    assert "learning_rate" in result.out and "runner.ui" in result.out and "runner.export" in result.out


@pytest.mark.usefixtures("premade_mlflow_db")
@pytest.mark.usefixtures("fake_train")
def test_pruned_trial(run_sweep, store, monkeypatch):
    """A pruned trial ends PRUNED in Optuna, KILLED with optuna.state=PRUNED in MLflow, and counts as finished."""
    monkeypatch.setattr(optuna.trial.Trial, "should_prune", lambda self: self.number == 1)
    assert run_sweep("--trials", "2").code == 0
    assert states(store.study()) == ["COMPLETE", "PRUNED"]
    pruned = store.children()[1]
    assert pruned.info.status == "KILLED"
    assert pruned.data.tags["optuna.state"] == "PRUNED"
    assert pruned.data.tags["runner.pruned_reason"] == "pruned after epoch 1"
    assert [m.step for m in store.client.get_metric_history(pruned.info.run_id, "eval_f1")] == [1]
    assert [c.info.status for c in store.children()] == ["FINISHED", "KILLED"]


@pytest.mark.usefixtures("fake_train")
def test_last_epoch_is_never_pruned(run_sweep, store, monkeypatch):
    """A trial that ran all its epochs has a finished result: pruning it then would only throw it away."""
    monkeypatch.setattr(optuna.trial.Trial, "should_prune", lambda self: True)
    assert run_sweep("--trials", "1", "--set", "search_space.num_train_epochs=1").code == 0
    assert states(store.study()) == ["COMPLETE"]


def _new_model_failing(monkeypatch, calls_that_fail, error):
    import runner.search.objective

    real, calls = runner.search.objective.new_model, []

    def new_model(source, seed, settings=None):
        calls.append(seed)
        if calls_that_fail == "all" or len(calls) in calls_that_fail:
            raise error
        return real(source, seed, settings)

    monkeypatch.setattr(runner.search.objective, "new_model", new_model)


@pytest.mark.usefixtures("premade_mlflow_db")
@pytest.mark.usefixtures("fake_train")
def test_failing_trial_does_not_stop_the_sweep(run_sweep, store, monkeypatch):
    _new_model_failing(monkeypatch, {2}, RuntimeError("out of memory"))
    result = run_sweep("--trials", "2")
    assert result.code == 0
    study = store.study()
    assert states(study) == ["COMPLETE", "FAIL", "COMPLETE"]
    assert study.trials[1].user_attrs["error"] == "RuntimeError: out of memory"
    failed = store.children()[1]
    assert failed.info.status == "FAILED" and failed.data.tags["optuna.state"] == "FAIL"
    assert failed.data.tags["runner.error"] == "RuntimeError: out of memory"
    assert "error.txt" in store.artifacts(failed)
    assert store.parent().info.status == "FINISHED"
    assert "1 fail" in result.out


@pytest.mark.usefixtures("premade_mlflow_db")
def test_too_many_failures_exit_1(run_sweep, store, monkeypatch, tmp_path):
    _new_model_failing(monkeypatch, "all", RuntimeError("boom"))
    result = run_sweep("--trials", "5")
    assert result.code == 1
    assert "3 of 3 trials failed" in result.err and "RuntimeError: boom" in result.err
    assert states(store.study()) == ["FAIL"] * 3
    assert store.parent().info.status == "FAILED"
    assert all(c.info.status == "FAILED" for c in store.children())
    assert not (tmp_path / "mlruns" / "best" / "tiny").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["--set", "study.nmae=x"],
        ["--set", "search_space.learning_rate={type: float, low: 1.0e-3, high: 1.0e-4}"],
        ["--config", "missing.yaml"],
        ["--data-dir", "no-such-folder"],
        ["--model", "/no/such/model"],
        ["--model", "nobody/no-such-model"],
        ["--storage", "nosuchdb://x/y"],
        ["--tracking-uri", "http://127.0.0.1:9"],
    ],
    ids=[
        "unknown-key",
        "low>high",
        "missing-config",
        "bad-data-dir",
        "missing-model-path",
        "unknown-hub-id",
        "bad-storage",
        "unreachable-tracking",
    ],
)
def test_config_errors_exit_2_and_write_nothing(run_sweep, tmp_path, args):
    result = run_sweep("--trials", "1", *args)
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("runner.sweep: error: "), result.err
    assert "Traceback" not in result.err
    written = [p for p in (tmp_path / "mlruns").rglob("*") if p.is_file()] if (tmp_path / "mlruns").exists() else []
    assert written == []


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("yaml_text", "flags", "expected"),
    [
        ("study:\n  nmae: x\n", [], "did you mean 'name'"),
        (None, ["--config", "missing.yaml"], "config file not found"),
    ],
    ids=["unknown-key", "missing-config"],
)
def test_cli_subprocess_config_error(tmp_path, yaml_text, flags, expected):
    """The real entry point: exit 2 and exactly one line on stderr, no traceback, nothing written."""
    if yaml_text is not None:
        (tmp_path / "bad.yaml").write_text(yaml_text, encoding="utf-8")
        flags = ["--config", "bad.yaml"]
    proc = subprocess.run(
        [sys.executable, "-m", "runner.sweep", *flags], cwd=tmp_path, capture_output=True, text=True, timeout=280
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.usefixtures("fake_train")
def test_trials_hold_their_run_ids_and_the_saved_config_its_data_folder(run_sweep, store, tmp_path, mrpc_dir):
    """The run id lives on the Optuna trial; a relative --data-dir is saved, absolute, in the config."""
    import shutil

    import yaml

    from runner.record.history import TRIAL_RUN_ATTR

    shutil.copytree(mrpc_dir, tmp_path / "data")
    assert run_sweep("--trials", "2", "--data-dir", "data").code == 0  # relative to the sweep's folder

    study = store.study()
    recorded = {run.data.tags["optuna.trial_number"]: run.info.run_id for run in store.children()}
    assert {str(t.number): t.user_attrs[TRIAL_RUN_ATTR] for t in study.trials} == recorded
    parent = store.parent()
    assert parent.data.tags["best_trial.run_id"] == study.best_trial.user_attrs[TRIAL_RUN_ATTR]

    absolute = str((tmp_path / "data").resolve())
    saved = yaml.safe_load((tmp_path / "mlruns" / "best" / "tiny" / "runner_config.yaml").read_text())
    assert saved["data"]["data_dir"] == absolute
    logged = store.client.download_artifacts(parent.info.run_id, "config.yaml", str(tmp_path))
    assert yaml.safe_load(open(logged).read())["data"]["data_dir"] == absolute

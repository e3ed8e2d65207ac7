"""runner.objective with optuna.trial.FixedTrial: one trial, no study, everything it records."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import FixedTrial

from runner.config import DataConfig, SweepConfig
from runner.record.checkpoint import BestCheckpoint
from runner.record.runs import Tracker
from runner.search.objective import Objective
from runner.search.progress import Best, SweepProgress
from runner.training.data import load_mrpc, tokenize
from runner.training.model import load_tokenizer


@pytest.fixture
def objective(tmp_path, mrpc_dir, tiny_model, premade_mlflow_db):
    cfg = SweepConfig.model_validate(
        {
            "study": {"name": "fixed", "metric": "eval_loss", "direction": "minimize"},
            "model": {"name": str(tiny_model), "max_length": 64},
            "train": {"seed": 7, "group_by_length": False},
            "hyperparameters": {"per_device_train_batch_size": 8, "warmup_ratio": 0.0},
            "search_space": {
                "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                "num_train_epochs": {"type": "int", "low": 1, "high": 3},
            },
        }
    )
    data = load_mrpc(DataConfig(), str(mrpc_dir), seed=7)
    tokenizer = load_tokenizer(str(tiny_model))
    tracker = Tracker(f"sqlite:///{tmp_path}/mlruns/mlflow.db", "fixed", str(tmp_path / "artifacts"), False)
    tracker.open_study_run(optuna.create_study(study_name="fixed"), {})
    checkpoint = BestCheckpoint(tmp_path / "best", "fixed", maximize=False)
    progress = SweepProgress(total=1, done=0, metric="eval_loss", maximize=False)
    return Objective(
        cfg, str(tiny_model), tokenizer, data, tokenize(data, tokenizer, 64), tracker, checkpoint, progress
    )


def test_fixed_trial_returns_the_best_epoch_value(objective):
    """The trial's value is its best epoch's metric (not the last epoch's), as logged on its run."""
    trial = FixedTrial({"learning_rate": 3e-3, "num_train_epochs": 3}, number=5)
    value = objective(trial)

    client = objective.tracker.client
    (run,) = client.search_runs([objective.tracker.experiment_id], "tags.`runner.role` = 'trial'")
    assert run.info.status == "FINISHED" and run.info.run_name == "trial-005"
    losses = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "eval_loss"), key=lambda m: m.step)]
    assert len(losses) == 3
    assert value == min(losses) == run.data.metrics["best_eval_loss"]
    assert run.data.params["learning_rate"] == "0.003" and run.data.params["num_train_epochs"] == "3"
    assert run.data.params["train_samples"] == "24" and run.data.params["eval_samples"] == "8"

    assert trial.user_attrs["best_epoch"] == losses.index(min(losses)) + 1
    assert trial.user_attrs["epochs_run"] == 3
    assert trial.user_attrs["precision"] == "fp32"
    held = objective.checkpoint.current()
    assert (held["trial"], held["value"], held["run_id"]) == (5, value, run.info.run_id)
    assert held["params"]["learning_rate"] == 3e-3
    assert objective.progress.done == 1 and objective.progress.best == Best(value, 5)


def test_the_trial_trains_in_the_precision_it_records(objective, monkeypatch):
    """Precision is resolved once per trial, by the objective: its record and the training agree.

    A second resolve inside training could pick another precision than the one logged on the run.
    """
    import runner.search.objective
    import runner.training.train
    from runner.record.history import TRIAL_RUN_ATTR

    monkeypatch.setattr(runner.search.objective, "resolve_precision", lambda mixed: "bf16")
    build, used = runner.training.train.training_arguments, []

    def spy(hp, settings, output_dir, precision):
        used.append(precision)
        return build(hp, settings, output_dir, precision)

    monkeypatch.setattr(runner.training.train, "training_arguments", spy)
    trial = FixedTrial({"learning_rate": 3e-3, "num_train_epochs": 1}, number=0)
    objective(trial)

    (run,) = objective.tracker.client.search_runs([objective.tracker.experiment_id], "tags.`runner.role` = 'trial'")
    assert trial.user_attrs["precision"] == run.data.params["precision"] == "bf16"
    assert used == ["bf16"]
    assert trial.user_attrs[TRIAL_RUN_ATTR] == run.info.run_id

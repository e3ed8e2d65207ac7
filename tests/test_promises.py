"""The README's central promises, each with a test that fails when the promise is broken.

The training curve on tiny data is often monotone, so "return the last epoch" or "report at the
global step" would pass a test that compares against whatever training produced. Here the
validation scores are scripted, epoch by epoch, through the evaluation's metric function.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import REPO

import runner.training.train


@pytest.fixture
def scripted_f1(monkeypatch):
    """``scripted_f1([...])``: each validation pass, in order across trials, scores the next F1 in the list."""

    def script(values: list[float]) -> list[float]:
        queue = list(values)

        def fake_metrics(eval_pred) -> dict[str, float]:
            return {"accuracy": 0.5, "f1": queue.pop(0)}

        monkeypatch.setattr(runner.training.train, "compute_metrics", fake_metrics)
        return queue

    return script


@pytest.fixture
def weights_per_epoch(monkeypatch) -> list[dict[str, torch.Tensor]]:
    """A copy of the live model's weights taken at each epoch's evaluation, in order."""
    captured: list[dict[str, torch.Tensor]] = []
    on_evaluate = runner.training.train._EpochCallback.on_evaluate

    def spy(self, *args, **kwargs):
        captured.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})
        return on_evaluate(self, *args, **kwargs)

    monkeypatch.setattr(runner.training.train._EpochCallback, "on_evaluate", spy)
    return captured


def test_the_objective_is_the_best_epoch_not_the_last(
    run_sweep, store, tmp_path, scripted_f1, weights_per_epoch, premade_mlflow_db
):
    from safetensors.torch import load_file

    left = scripted_f1([0.6, 0.9, 0.7])
    result = run_sweep(
        "--trials",
        "1",
        "--set",
        "search_space.num_train_epochs=3",
        "--set",
        "search_space.learning_rate=1e-3",
    )
    assert result.code == 0, result.err
    assert left == [], "every epoch was evaluated once"

    (trial,) = store.study().trials
    assert trial.value == pytest.approx(0.9)
    assert trial.user_attrs["best_epoch"] == 2
    assert trial.user_attrs["epochs_run"] == 3, "the best epoch is not the last"
    assert sorted(trial.intermediate_values) == [1, 2, 3]
    (run,) = store.children()
    assert run.data.metrics["best_epoch"] == 2
    assert run.data.metrics["best_eval_f1"] == pytest.approx(0.9)

    assert len(weights_per_epoch) == 3
    saved = load_file(tmp_path / "mlruns" / "best" / "tiny" / "model.safetensors")
    epoch2, epoch3 = weights_per_epoch[1], weights_per_epoch[2]
    name = next(k for k in saved if k.endswith("classifier.weight"))
    key = next(k for k in epoch2 if k.endswith("classifier.weight"))
    assert not torch.equal(epoch2[key], epoch3[key]), "training moved the weights between epochs 2 and 3"
    assert torch.equal(saved[name], epoch2[key]), "the saved model holds epoch 2's weights"
    assert not torch.equal(saved[name], epoch3[key])


def test_pruning_compares_trials_at_the_same_epoch(run_sweep, store, scripted_f1, sweep_yaml, premade_mlflow_db):
    # Trial 0 sets the median: 0.5 at epoch 1, 0.8 after. Trial 1 leads at epoch 1 (0.6), then its best so
    # far (what the median pruner compares) falls behind at epoch 2.
    scripted_f1([0.5, 0.8, 0.8, 0.6, 0.6, 0.6])
    result = run_sweep(
        "--trials",
        "2",
        *("--set", "study.pruner=median"),
        *("--set", "study.pruner_startup_trials=1"),
        *("--set", "study.pruner_warmup_epochs=0"),
        *("--set", "search_space.num_train_epochs=3"),
    )
    assert result.code == 0, result.err

    import optuna

    good, bad = store.study().trials
    assert good.state == optuna.trial.TrialState.COMPLETE
    assert sorted(good.intermediate_values) == [1, 2, 3], "intermediate values are keyed by epoch"
    assert bad.state == optuna.trial.TrialState.PRUNED
    assert bad.intermediate_values == {1: pytest.approx(0.6), 2: pytest.approx(0.6)}, "stopped after epoch 2"
    assert bad.user_attrs["epochs_run"] == 2

    _, bad_run = store.children()
    assert bad_run.info.status == "KILLED"
    assert bad_run.data.tags["optuna.state"] == "PRUNED"


CONFIG_ERROR = """
import sys
from runner.sweep import main
code = main({argv!r})
heavy = sorted(name for name in ("torch", "transformers", "datasets", "optuna", "mlflow") if name in sys.modules)
print(code, ",".join(heavy) or "-")
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["--set", "study.n_trials=0"],
        ["--set", "study.no_such_key=1"],
    ],
    ids=["bad-value", "unknown-key"],
)
def test_config_errors_come_back_before_any_heavy_import(argv):
    """In a fresh interpreter: exit 2, one line on stderr, and no ML library imported."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CONFIG_ERROR.format(argv=argv))],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    code, heavy = proc.stdout.split()
    assert code == "2", proc.stderr
    assert heavy == "-", f"imported on a config error: {heavy}"
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("runner.sweep: error: "), proc.stderr

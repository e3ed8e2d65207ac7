"""Re-running the same sweep command: resume up to --trials, after Ctrl-C or a dead worker; determinism."""

from __future__ import annotations

import os
import signal
import socket

import pytest
from optuna.trial import TrialState

import runner.search.objective

pytestmark = pytest.mark.usefixtures("premade_mlflow_db")


def finished(study) -> list[int]:
    return [t.number for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def running_runs(store) -> list[str]:
    return [r.info.run_name for r in store.runs() if r.info.status == "RUNNING"]


@pytest.mark.usefixtures("fake_train")
def test_resume_continues_to_the_new_total(run_sweep, store):
    """--trials 2, then --trials 3: one more trial under the same parent run; --trials 3 again runs nothing."""
    assert run_sweep("--trials", "2").code == 0
    parent_id = store.parent().info.run_id
    assert finished(store.study()) == [0, 1]

    assert run_sweep("--trials", "3").code == 0
    study = store.study()
    assert finished(study) == [0, 1, 2]
    assert store.parent().info.run_id == parent_id and store.parent().info.status == "FINISHED"
    children = store.children()
    assert [c.data.tags["optuna.trial_number"] for c in children] == ["0", "1", "2"]
    for child, trial in zip(children, sorted(study.trials, key=lambda t: t.number)):
        assert child.data.metrics["best_eval_f1"] == trial.value
        assert child.data.tags["mlflow.parentRunId"] == parent_id

    again = run_sweep("--trials", "3")
    assert again.code == 0
    assert len(store.study().trials) == 3 and len(store.children()) == 3
    assert store.parent().info.run_id == parent_id and store.parent().info.status == "FINISHED"
    assert "trials: 3 complete" in again.out


@pytest.mark.usefixtures("fake_train")
def test_ctrl_c_then_resume(run_sweep, store, monkeypatch):
    """Ctrl-C in trial 1: exit 130, nothing left RUNNING; the same command then reaches the total."""
    real = runner.search.objective.new_model
    calls = []

    def interrupted_second_time(source, seed, settings=None):
        calls.append(seed)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(source, seed, settings)

    with monkeypatch.context() as patch:
        patch.setattr(runner.search.objective, "new_model", interrupted_second_time)
        result = run_sweep("--trials", "2")
    assert result.code == 130
    assert "interrupted" in result.err and "resume" in result.err
    assert running_runs(store) == []
    parent = store.parent()
    assert parent.info.status == "KILLED"
    interrupted = store.children()[1]
    assert interrupted.info.status == "KILLED" and interrupted.data.tags["optuna.state"] == "FAIL"
    study = store.study()
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL]

    assert run_sweep("--trials", "2").code == 0
    assert finished(store.study()) == [0, 2]
    assert store.parent().info.run_id == parent.info.run_id
    assert store.parent().info.status == "FINISHED"
    assert running_runs(store) == []


@pytest.mark.usefixtures("fake_train")
def test_sigterm_stops_like_ctrl_c(run_sweep, store, monkeypatch):
    """A job scheduler's SIGTERM ends the sweep cleanly and resumably (exit 130), not with a traceback."""
    real = runner.search.objective.new_model

    def terminated(source, seed, settings=None):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(source, seed, settings)

    monkeypatch.setattr(runner.search.objective, "new_model", terminated)
    result = run_sweep("--trials", "2")
    assert result.code == 130 and "Traceback" not in result.err
    assert running_runs(store) == []
    assert store.parent().info.status == "KILLED"
    assert [t.state for t in store.study().trials] == [TrialState.FAIL]


@pytest.mark.usefixtures("fake_train")
def test_trial_of_a_dead_worker_is_failed_on_resume(run_sweep, store):
    """A trial left RUNNING by a killed process on this host is failed at once when the sweep restarts."""
    assert run_sweep("--trials", "1").code == 0
    study = store.study()
    orphan = study.ask()
    orphan.set_user_attr("worker", {"host": socket.gethostname(), "pid": 2**22 + 12345, "started": 0.0})

    assert run_sweep("--trials", "2").code == 0
    states = {t.number: t.state for t in store.study().trials}
    assert states == {0: TrialState.COMPLETE, 1: TrialState.FAIL, 2: TrialState.COMPLETE}


def test_same_params_and_seed_give_the_same_result(run_sweep, store):
    """Two studies with every hyperparameter fixed and the same seed train identically."""
    fixed = ["--trials", "1", "--set", "search_space.learning_rate=5e-4", "--set", "search_space.num_train_epochs=2"]
    assert run_sweep(*fixed, "--study", "first").code == 0
    assert run_sweep(*fixed, "--study", "second").code == 0
    first, second = store.study("first").best_trial, store.study("second").best_trial
    assert first.params == second.params == {}
    assert first.value == second.value
    runs = [store.children(name)[0] for name in ("first", "second")]
    losses = [[m.value for m in store.client.get_metric_history(r.info.run_id, "eval_loss")] for r in runs]
    assert len(losses[0]) == 2 and losses[0] == losses[1]
    assert runs[0].data.params["learning_rate"] == "0.0005"

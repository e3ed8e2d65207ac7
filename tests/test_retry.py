"""`--retry-failed N`: trials that crashed are rerun with their params, linked to the original run."""

from __future__ import annotations

import socket

import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

import runner.search.objective

pytestmark = [
    pytest.mark.usefixtures("premade_mlflow_db", "fake_train"),  # bookkeeping: scripted epochs, no training
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
]


def _interrupt_call(monkeypatch, which: int) -> None:
    """Ctrl-C when the ``which``-th trial of this sweep builds its model."""
    real, calls = runner.search.objective.new_model, []

    def new_model(source, seed, settings=None):
        calls.append(seed)
        if len(calls) == which:
            raise KeyboardInterrupt
        return real(source, seed, settings)

    monkeypatch.setattr(runner.search.objective, "new_model", new_model)


def test_interrupted_trial_is_retried_with_its_params_and_linked(run_sweep, store, monkeypatch):
    with monkeypatch.context() as patch:
        _interrupt_call(patch, 2)
        assert run_sweep("--trials", "2").code == 130
    interrupted = store.study().trials[1]
    assert interrupted.state == TrialState.FAIL

    assert run_sweep("--trials", "2", "--retry-failed", "1").code == 0
    study = store.study()
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    retry = study.trials[2]
    assert retry.params == interrupted.params
    assert RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == 1

    runs = store.children()
    original_run, retry_run = runs[1], runs[2]
    assert retry_run.data.tags["runner.retry_of"] == "1"
    assert retry_run.data.tags["runner.retry_of_run_id"] == original_run.info.run_id
    assert original_run.data.tags["runner.retried_by"] == "2"
    assert retry_run.data.tags["mlflow.parentRunId"] == store.parent().info.run_id
    assert store.parent().info.status == "FINISHED"


def test_a_retry_that_crashes_again_is_not_retried_beyond_n(run_sweep, store, monkeypatch):
    with monkeypatch.context() as patch:
        _interrupt_call(patch, 1)
        assert run_sweep("--trials", "1").code == 130  # trial 0 interrupted
    with monkeypatch.context() as patch:
        _interrupt_call(patch, 1)
        assert run_sweep("--trials", "1", "--retry-failed", "1").code == 130  # its retry, trial 1, too
    assert RetryHeartbeatStaleTrialCallback.retried_trial_number(store.study().trials[1]) == 0

    assert run_sweep("--trials", "1", "--retry-failed", "1").code == 0
    study = store.study()
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    assert RetryHeartbeatStaleTrialCallback.retried_trial_number(study.trials[2]) is None  # a fresh trial


def test_trial_of_a_dead_worker_is_retried(run_sweep, store):
    """A worker killed mid-trial on this host: its trial is failed at once on restart and rerun with its params."""
    assert run_sweep("--trials", "1").code == 0
    study = store.study()
    orphan = study.ask(
        {
            "learning_rate": FloatDistribution(1.0e-4, 1.0e-3, log=True),
            "num_train_epochs": IntDistribution(1, 2),
        }
    )
    orphan.set_user_attr("worker", {"host": socket.gethostname(), "pid": 2**22 + 12345, "started": 0.0})

    assert run_sweep("--trials", "2", "--retry-failed", "2").code == 0
    trials = store.study().trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert trials[2].params == orphan.params
    assert RetryHeartbeatStaleTrialCallback.retried_trial_number(trials[2]) == 1


def test_a_trial_that_raised_is_not_retried(run_sweep, store, monkeypatch):
    """An error in training (here a non-finite loss) would fail again: no retry, a new trial instead."""
    real, calls = runner.search.objective.new_model, []

    def nan_first(source, seed, settings=None):
        calls.append(seed)
        if len(calls) == 1:
            raise FloatingPointError("loss is nan at step 3")
        return real(source, seed, settings)

    monkeypatch.setattr(runner.search.objective, "new_model", nan_first)
    assert run_sweep("--trials", "1", "--retry-failed", "3").code == 0
    trials = store.study().trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert all(RetryHeartbeatStaleTrialCallback.retried_trial_number(t) is None for t in trials)


def test_retry_links_use_the_run_ids_stored_on_the_trials(run_sweep, store, monkeypatch):
    """The objective stores each trial's run id on the trial; the retry links read it from there."""
    from runner.record.history import TRIAL_RUN_ATTR

    with monkeypatch.context() as patch:
        _interrupt_call(patch, 1)
        assert run_sweep("--trials", "1").code == 130
    (original,) = store.children()
    assert store.study().trials[0].user_attrs[TRIAL_RUN_ATTR] == original.info.run_id
    # Searching runs by tag is only the fallback for trials recorded before: without the tag the link still holds.
    store.client.delete_tag(original.info.run_id, "optuna.trial_number")

    assert run_sweep("--trials", "1", "--retry-failed", "1").code == 0
    retry = store.study().trials[1]
    runs = {run.info.run_id: run for run in store.children()}
    retry_tags = runs[retry.user_attrs[TRIAL_RUN_ATTR]].data.tags
    assert retry_tags["optuna.trial_number"] == "1" and retry_tags["runner.retry_of"] == "0"
    assert retry_tags["runner.retry_of_run_id"] == retry_tags["runner.retry_previous_run_id"] == original.info.run_id
    assert runs[original.info.run_id].data.tags["runner.retried_by"] == "1"

"""Trial-time estimates read from measured trials: what the ETA and the time budget rely on."""

from __future__ import annotations

import datetime as dt

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from runner.search.estimate import EPOCH_SECONDS_ATTR, Running, TrialTimes, eta_seconds, record_epoch

BATCH = {"per_device_train_batch_size": CategoricalDistribution([16, 32])}
START = dt.datetime(2026, 1, 1, 12, 0, 0)


def measured(batch: int, precision: str, epochs: list[float], total: float | None, state=TrialState.COMPLETE):
    """A stored trial that ran ``epochs`` (seconds each) and, when finished, took ``total`` seconds in all."""
    trial = create_trial(
        state=state,
        value=0.8 if state == TrialState.COMPLETE else None,
        params={"per_device_train_batch_size": batch},
        distributions=BATCH,
        user_attrs={EPOCH_SECONDS_ATTR: epochs, "precision": precision},
    )
    trial.datetime_start = START
    trial.datetime_complete = START + dt.timedelta(seconds=total) if total is not None else None
    return trial


def test_the_estimate_prefers_the_same_precision_and_batch_then_the_same_precision():
    times = TrialTimes.from_trials(
        [
            measured(16, "fp32", [100.0, 110.0], 230.0),
            measured(32, "fp32", [60.0, 70.0], 150.0),
            measured(16, "bf16", [30.0, 30.0], 80.0),
        ]
    )
    assert times.epoch_seconds({"per_device_train_batch_size": 32}, "fp32") == pytest.approx(65.0)
    assert times.epoch_seconds({"per_device_train_batch_size": 16}, "bf16") == pytest.approx(30.0)
    # No bf16 trial with batch 32 yet: the bf16 ones, not the slower fp32 ones.
    assert times.epoch_seconds({"per_device_train_batch_size": 32}, "bf16") == pytest.approx(30.0)
    # The fixed part is what finished trials took beyond their epochs: 20, 20 and 20 s.
    assert times.fixed_seconds() == pytest.approx(20.0)
    assert times.trial_seconds({"per_device_train_batch_size": 32}, "fp32", epochs=3) == pytest.approx(20 + 3 * 65)
    assert times.typical_trial_seconds() == pytest.approx(150.0)


def test_nothing_measured_means_no_estimate_rather_than_a_guess():
    times = TrialTimes.from_trials([measured(16, "fp32", [], None, state=TrialState.FAIL)])
    assert not times.measured
    assert times.trial_seconds({"per_device_train_batch_size": 16}, "fp32", epochs=2) is None
    assert times.typical_trial_seconds() is None


def test_a_running_trial_counts_its_epochs_left_at_its_own_pace():
    stored = measured(16, "fp32", [40.0], None, state=TrialState.RUNNING)
    times = TrialTimes.from_trials([measured(16, "fp32", [100.0], 110.0), stored])
    running = Running.from_trial(stored, {**stored.params, "num_train_epochs": 3})
    assert times.remaining_seconds(running) == pytest.approx(2 * 40.0 + 10.0)


def test_a_trial_that_just_started_counts_as_a_typical_one_once_one_finished():
    """Right after a trial ends, the next has no epoch, plan or step rate yet: the ETA stays rather than go blank."""
    fresh = Running(params={}, precision="fp32", epochs=None)
    assert TrialTimes.from_trials([]).remaining_seconds(fresh) is None
    times = TrialTimes.from_trials([measured(16, "fp32", [100.0], 110.0), measured(32, "fp32", [60.0], 90.0)])
    assert times.remaining_seconds(fresh) == pytest.approx(100.0)
    assert eta_seconds(times, not_started=2, running=[fresh]) == pytest.approx(300.0)


def test_recorded_epochs_are_read_back_from_the_storage():
    study = optuna.create_study()
    trial = study.ask()
    record_epoch(trial, 12.3456)
    record_epoch(trial, 7.0)
    stored = study.get_trials(deepcopy=False)[0]
    assert stored.user_attrs[EPOCH_SECONDS_ATTR] == [12.346, 7.0]

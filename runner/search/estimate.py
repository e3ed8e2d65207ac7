"""How long trials take, read from the trials already measured: the ETA and the time budget both ask here.

A trial's time is its epochs plus a fixed part (building the model, logging, saving it). Each
epoch's seconds are recorded on the trial as it runs (``record_epoch``); the fixed part is what a
finished trial took beyond its epochs. Epoch time depends mostly on precision and batch size, so an
estimate prefers measured trials with the same two, then the same precision, then any trial.
Medians, not means: one epoch slowed by other work on a shared machine should not move the estimate.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

EPOCH_SECONDS_ATTR = "epoch_seconds"  # trial user attr: seconds of each epoch run so far, in order

_DONE = (TrialState.COMPLETE, TrialState.PRUNED)


def record_epoch(trial: optuna.Trial, seconds: float) -> None:
    """Append one epoch's wall time to the trial's ``epoch_seconds`` (read back by other workers too)."""
    # optuna.Trial keeps the user attrs it set in this process; a fresh list each time keeps the stored one whole.
    so_far = list(trial.user_attrs.get(EPOCH_SECONDS_ATTR, []))
    trial.set_user_attr(EPOCH_SECONDS_ATTR, [*so_far, round(float(seconds), 3)])


class EpochClock:
    """Seconds since the last lap: the time of each epoch, its evaluation included."""

    def __init__(self) -> None:
        self._last = time.monotonic()

    def lap(self) -> float:
        now = time.monotonic()
        seconds, self._last = now - self._last, now
        return seconds


def _key(params: Mapping[str, Any], precision: str | None) -> tuple[str | None, Any]:
    return precision, params.get("per_device_train_batch_size")


@dataclass(frozen=True)
class TrialTimes:
    """Measured epoch and per-trial fixed seconds of a study's trials."""

    epochs: dict[tuple[str | None, Any], list[float]] = field(default_factory=dict)
    fixed: list[float] = field(default_factory=list)  # a finished trial's seconds beyond its epochs
    trials: list[float] = field(default_factory=list)  # whole finished trials, as they ran

    @classmethod
    def from_trials(cls, trials: Iterable[FrozenTrial]) -> TrialTimes:
        """Collect the epochs of every trial that ran one (running ones too) and the fixed part of finished ones."""
        epochs: dict[tuple[str | None, Any], list[float]] = {}
        fixed, whole = [], []
        for trial in trials:
            seconds = [float(s) for s in trial.user_attrs.get(EPOCH_SECONDS_ATTR, [])]
            if not seconds:
                continue
            epochs.setdefault(_key(trial.params, trial.user_attrs.get("precision")), []).extend(seconds)
            if trial.state in _DONE and trial.datetime_start and trial.datetime_complete:
                total = (trial.datetime_complete - trial.datetime_start).total_seconds()
                whole.append(total)
                fixed.append(max(0.0, total - sum(seconds)))
        return cls(epochs, fixed, whole)

    @classmethod
    def from_study(cls, study: optuna.Study) -> TrialTimes:
        return cls.from_trials(study.get_trials(deepcopy=False))

    @property
    def measured(self) -> bool:
        """Whether any epoch has been timed yet."""
        return bool(self.epochs)

    def epoch_seconds(self, params: Mapping[str, Any], precision: str | None) -> float | None:
        """Median epoch seconds of the closest measured trials (same precision and batch, same precision, any)."""
        exact = self.epochs.get(_key(params, precision))
        if exact:
            return statistics.median(exact)
        same_precision = [s for (p, _), values in self.epochs.items() if p == precision for s in values]
        if same_precision:
            return statistics.median(same_precision)
        every = [s for values in self.epochs.values() for s in values]
        return statistics.median(every) if every else None

    def fixed_seconds(self) -> float:
        """Median seconds a trial spends outside its epochs (0 until a trial finished)."""
        return statistics.median(self.fixed) if self.fixed else 0.0

    def trial_seconds(self, params: Mapping[str, Any], precision: str | None, epochs: int) -> float | None:
        """Estimated seconds of a whole trial with these params that runs ``epochs`` epochs; None before any epoch."""
        per_epoch = self.epoch_seconds(params, precision)
        return None if per_epoch is None else self.fixed_seconds() + epochs * per_epoch

    def typical_trial_seconds(self) -> float | None:
        """Median seconds of a finished trial, for trials whose params are not drawn yet; None before one finished."""
        return statistics.median(self.trials) if self.trials else None

    def remaining_seconds(self, trial: Running) -> float | None:
        """Seconds until a running trial ends, at its own epoch pace once it has one; None while unknown.

        Before its first epoch ends, its step rate stands in (the live display knows it; other
        workers' trials in the storage do not carry one); before a step, a typical finished trial.
        """
        if trial.epochs is not None and (trial.epoch_seconds or self.measured):
            done = len(trial.epoch_seconds)
            per_epoch = (
                statistics.median(trial.epoch_seconds)
                if trial.epoch_seconds
                else self.epoch_seconds(trial.params, trial.precision)
            )
            return max(0, trial.epochs - done) * per_epoch + self.fixed_seconds()
        if trial.steps_per_second and trial.steps_total is not None and trial.steps_done is not None:
            return max(0, trial.steps_total - trial.steps_done) / trial.steps_per_second
        # Just started, its plan and pace unknown yet: a typical finished trial, rather than no ETA at all.
        return self.typical_trial_seconds()

    def whole_seconds(self, trial: Running) -> float | None:
        """Seconds a whole trial like this running one takes, start to end; None while unknown."""
        if trial.epoch_seconds and trial.epochs is not None:
            return self.fixed_seconds() + trial.epochs * statistics.median(trial.epoch_seconds)
        if trial.epochs is not None and self.measured:
            return self.trial_seconds(trial.params, trial.precision, trial.epochs)
        if trial.steps_per_second and trial.steps_total:
            return trial.steps_total / trial.steps_per_second
        return None


@dataclass(frozen=True)
class Running:
    """A running trial as the ETA sees it: its planned epochs, the ones timed so far, its step rate."""

    params: Mapping[str, Any]
    precision: str | None
    epochs: int | None  # planned epochs; None while unknown
    epoch_seconds: Sequence[float] = ()
    steps_done: int | None = None
    steps_total: int | None = None
    steps_per_second: float | None = None

    @classmethod
    def from_trial(cls, trial: FrozenTrial, params: Mapping[str, Any]) -> Running:
        """A stored running trial (another worker's, read from the storage); ``params`` are all its settings."""
        epochs = params.get("num_train_epochs")
        return cls(
            params,
            trial.user_attrs.get("precision"),
            epochs if isinstance(epochs, int) else None,
            tuple(float(s) for s in trial.user_attrs.get(EPOCH_SECONDS_ATTR, [])),
        )


def eta_seconds(times: TrialTimes, not_started: int, running: Sequence[Running], workers: int = 1) -> float | None:
    """Seconds until a stage's last trial ends, or None while nothing has been timed.

    ``not_started`` trials take a typical finished trial's time each (before one finished: what
    the running trials are estimated to take in all); each running trial takes what its epochs
    left need. The sum is shared among ``workers``.
    """
    left = [times.remaining_seconds(trial) for trial in running]
    if any(seconds is None for seconds in left):
        return None
    typical = times.typical_trial_seconds()
    if typical is None and not_started:
        wholes = [w for w in (times.whole_seconds(trial) for trial in running) if w is not None]
        if not wholes:
            return None
        typical = statistics.median(wholes)
    return (not_started * (typical or 0.0) + sum(left)) / max(1, workers)

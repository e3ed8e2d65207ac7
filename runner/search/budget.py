"""The time budget (``--timeout``, ``study.timeout``): its deadline, whether a trial may start, whether a run stops.

The budget bounds the whole command, the search and the confirmation stage, from the moment the
command started. Two rules keep it, both from the trial times measured so far (runner.search.estimate):

- no trial starts unless the cheapest trial the search space allows (its fewest epochs at the fastest
  measured epoch time, plus the time a trial spends outside its epochs) fits in what is left; before
  any epoch was measured, one starts;
- at each epoch boundary a run stops when its next epoch (at this run's own pace) and the time a
  trial spends outside its epochs would pass the deadline. A search trial stopped so is pruned (it
  has a scored epoch); a confirmation run ends as failed without an error, so its job stays free
  for the next command. Either run is tagged ``runner.stopped``.

Several workers share one budget. ``--workers K`` hands its workers the command's start
(``RUNNER_BUDGET_START``), and the start and length are recorded on the study (``runner.budget``):
a worker that joins while that budget runs, with the same length, stops asking when the others do,
wherever it runs (the machines' clocks must agree). The last worker to end marks the budget ended;
a command after that starts a new one: that is how the same command with a larger budget continues.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import optuna

from runner.config import Categorical, IntRange, SweepConfig
from runner.errors import ConfigError
from runner.search.estimate import EPOCH_SECONDS_ATTR, TrialTimes
from runner.workers.scheduler import FINISHED
from runner.workers.storage import UnknownStudy, load_existing_study

# The command checks a budget (check_fits) before its heavy imports: what brings in MLflow or the
# training libraries (the tracker, the confirmation stage) is imported where it is used, later.
if TYPE_CHECKING:
    from runner.record.runs import Tracker

log = logging.getLogger("runner")

BUDGET_ATTR = "runner.budget"  # study user attr: {"start": unix time, "seconds": length, "ended": bool}
STOPPED_BY = "time budget"  # a stopped trial's user attr runner.stopped, and the start of its run's tag
# Without measured trials, the least budget accepted. Before its first trial a sweep process imports
# torch and transformers, loads the model, tokenizes the data and opens both stores: several seconds
# even for a tiny model on a fast machine (about 5 s for the tests' 2-layer BERT on a 2-core CPU).
FLOOR_S = 10.0


def fmt(seconds: float) -> str:
    """``0.4 s``, ``45 s``, ``12m30s``, ``1h05m``: a duration as a person reads it."""
    if seconds < 9.95:
        return f"{max(0.0, seconds):.1f} s"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def min_epochs(cfg: SweepConfig, params: Sequence[dict] = ()) -> int:
    """The fewest epochs a run may have: over ``params`` (confirmation jobs) if given, else the search space."""
    if params:
        fixed = cfg.fixed_hyperparameters()
        return min(int({**fixed, **p}["num_train_epochs"]) for p in params)
    entry = cfg.search_space.get("num_train_epochs", cfg.hyperparameters.num_train_epochs)
    if isinstance(entry, IntRange):
        return entry.low
    return int(min(entry.choices)) if isinstance(entry, Categorical) else int(entry)


def cheapest_trial_seconds(times: TrialTimes, epochs: int) -> float | None:
    """Seconds of the cheapest trial: ``epochs`` at the fastest measured epoch time, plus the fixed part."""
    if not times.measured:
        return None
    fastest = min(statistics.median(seconds) for seconds in times.epochs.values())
    return times.fixed_seconds() + epochs * fastest


class Budget:
    """A deadline: ``seconds`` from ``start`` (unix time, so workers on several machines agree on it)."""

    def __init__(self, start: float, seconds: float, clock: Callable[[], float] = time.time):
        self.start, self.seconds, self.clock = start, seconds, clock
        self._refused = False  # said once that no new trial fits

    @property
    def deadline(self) -> float:
        return self.start + self.seconds

    def left(self) -> float:
        """Seconds until the deadline; negative once it passed."""
        return self.deadline - self.clock()

    def may_start(self, times: TrialTimes, epochs: int) -> bool:
        """Whether a trial may start: the cheapest one (``epochs`` epochs) fits in what is left, or none is measured."""
        left = self.left()
        cheapest = cheapest_trial_seconds(times, epochs)
        if left > 0 and (cheapest is None or cheapest <= left):
            return True
        if not self._refused:
            self._refused = True
            need = "" if cheapest is None else f"; the cheapest trial takes about {fmt(cheapest)}"
            log.info("time budget: %s left%s: no new trial starts", fmt(max(left, 0)), need)
        return False

    def allows_trial(self, studies: Sequence[optuna.Study], epochs: int) -> bool:
        """``may_start`` with the times measured in ``studies`` (the search, and the confirmation runs)."""
        trials = [t for study in studies for t in study.get_trials(deepcopy=False)]
        return self.may_start(TrialTimes.from_trials(trials), epochs)

    def must_stop(self, own_epochs: Sequence[float], tail: float) -> bool:
        """Whether a run must stop at this epoch boundary: its next epoch (its own median) plus ``tail`` is late."""
        next_epoch = statistics.median(own_epochs) if own_epochs else 0.0
        return next_epoch + tail > self.left()

    def stops_run(self, trial: optuna.Trial, epoch: int, epochs: int) -> str | None:
        """At the end of ``epoch`` of ``epochs``: why ``trial`` stops here, or None when it goes on.

        The last epoch never stops: its result is in. ``tail`` is what a trial spends outside its
        epochs (saving the model, logging files), measured on the study's finished trials; before
        one finished, one more epoch of this run is kept for it.
        """
        if epoch >= epochs:
            return None
        own = [float(s) for s in trial.user_attrs.get(EPOCH_SECONDS_ATTR, [])]
        times = TrialTimes.from_study(trial.study)
        tail = times.fixed_seconds() if times.fixed else statistics.median(own or [0.0])
        if not self.must_stop(own, tail):
            return None
        next_epoch = statistics.median(own) if own else 0.0
        return (
            f"{STOPPED_BY}: stopped after epoch {epoch} of {epochs} ({fmt(max(self.left(), 0))} left, "
            f"the next epoch takes about {fmt(next_epoch + tail)} with the rest of the trial)"
        )


def check_fits(cfg: SweepConfig) -> None:
    """Refuse a budget too small for one trial, before anything loads (a ConfigError: exit 2).

    With trials measured in the study's storage: smaller than the cheapest trial. Without: below FLOOR_S.
    """
    seconds = cfg.study.timeout
    if seconds is None:
        return
    if seconds < FLOOR_S:
        raise ConfigError(
            f"time budget {fmt(seconds)} is too short: a sweep needs at least {fmt(FLOOR_S)} to load the model "
            "and data and open its stores before its first trial (--timeout, study.timeout)"
        )
    times = stored_times(cfg)
    cheapest = cheapest_trial_seconds(times, min_epochs(cfg)) if times is not None else None
    if cheapest is not None and seconds < cheapest:
        raise ConfigError(
            f"time budget {fmt(seconds)} is shorter than the cheapest trial study {cfg.study.name!r} measured: "
            f"about {fmt(cheapest)} for {min_epochs(cfg)} epoch(s) (--timeout, study.timeout)"
        )


def stored_times(cfg: SweepConfig) -> TrialTimes | None:
    """The trial times measured in the study's storage; None when the study does not exist yet (creates nothing)."""
    try:
        study = load_existing_study(cfg.study.storage, cfg.study.name)
    except UnknownStudy:
        return None
    return TrialTimes.from_study(study)


def join(study: optuna.Study, seconds: float, started: float, clock: Callable[[], float] = time.time) -> Budget:
    """This command's budget: from ``started``, or the study's running budget of the same length if it began earlier.

    Call with the study's lock held. The earlier of the two is kept, and recorded for the workers still to come.
    """
    stored = study.user_attrs.get(BUDGET_ATTR) or {}
    running = stored.get("seconds") == seconds and not stored.get("ended") and stored["start"] + seconds > clock()
    start = min(started, stored["start"]) if running else started
    if not running or start != stored["start"]:
        study.set_user_attr(BUDGET_ATTR, {"start": start, "seconds": seconds, "ended": False})
    budget = Budget(start, seconds, clock)
    joined = " (the study's, begun by another worker)" if start < started else ""
    log.info("time budget %s%s: %s left", fmt(seconds), joined, fmt(max(budget.left(), 0)))
    return budget


def release(study: optuna.Study, budget: Budget, confirm: optuna.Study | None = None) -> None:
    """Mark the study's budget ended when no live worker still runs a trial, so the next command starts a new one.

    Call with the study's lock held, after this worker's own trials ended. ``confirm``: the
    confirmation study, when the stage is on (its runs count as trials).
    """
    from runner.workers.settle import running_elsewhere

    stored = study.user_attrs.get(BUDGET_ATTR) or {}
    if stored.get("ended") or (stored.get("start"), stored.get("seconds")) != (budget.start, budget.seconds):
        return  # not ours: a newer command's budget
    studies = [study] if confirm is None else [study, confirm]
    if not any(running_elsewhere(s) for s in studies):
        study.set_user_attr(BUDGET_ATTR, {**stored, "ended": True})


def unfinished(study: optuna.Study, cfg: SweepConfig, confirm: optuna.Study | None = None) -> str | None:
    """What the sweep has not reached yet (``7/20 trials finished``...); None once search and confirmation are done."""
    from runner.search.confirm import done_counter, stored_plan

    total = cfg.study.n_trials
    finished = len(study.get_trials(deepcopy=False, states=FINISHED))
    if finished < total:
        return f"{finished}/{total} trials finished"
    if confirm is None:  # the stage is off
        return None
    plan = stored_plan(confirm)
    if not plan:
        return f"{finished}/{total} trials finished, the confirmation stage not started"
    done = sum(map(done_counter(plan), confirm.get_trials(deepcopy=False)))
    return None if done >= len(plan) else f"{finished}/{total} trials finished, {done}/{len(plan)} confirmation runs"


def stop_note(cut: str) -> str:
    """What the study run's ``runner.stopped`` tag says when the budget cut the sweep short."""
    return f"{STOPPED_BY}: {cut}; the same command with a larger --timeout continues"


def mark_study_run(tracker: Tracker, cut: str | None) -> None:
    """Tag the study run with what the budget left undone, or drop that tag once a sweep got everything done."""
    from runner.record.runs import STOPPED_TAG

    if cut is not None:
        tracker.update_study_run({}, {STOPPED_TAG: stop_note(cut)}, [])
    else:
        tracker.clear_study_run_tag(STOPPED_TAG)

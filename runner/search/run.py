"""One sweep process, start to end: check the stores, load the inputs once, join the study, run trials.

Any number of these may run at once on one storage (``--workers K`` or several machines):
together they finish exactly ``study.n_trials`` trials under one MLflow study run.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from runner.config import SweepConfig
from runner.errors import ConfigError, WorkFailed
from runner.record.checkpoint import BestCheckpoint
from runner.record.runs import Tracker, TrialsView
from runner.record.store import check_reachable
from runner.search import budget as time_budget
from runner.search.budget import Budget
from runner.search.confirm import (
    Confirmation,
    candidate_checkpoint,
    candidates_root,
    claimer,
    confirmed_info,
    done_counter,
    make_plan,
    open_confirm_study,
    summarize,
)
from runner.search.display import SweepDisplay
from runner.search.estimate import TrialTimes
from runner.search.guard import FailureGuard
from runner.search.objective import Objective
from runner.search.progress import Best, SweepProgress, leading
from runner.search.study import best_trial, make_study
from runner.search.study_run import finish_study_run, reproduction_tags
from runner.search.summary import print_summary
from runner.training.data import MrpcData, load_mrpc, tokenize
from runner.training.model import attention_dropout, load_tokenizer, resolve_model
from runner.training.train import resolve_precision
from runner.workers.scheduler import FINISHED, retry_origin, run_until_total
from runner.workers.settle import settle_stale
from runner.workers.storage import StudyLock, check_storage_reachable, check_storage_url

log = logging.getLogger("runner")


class SweepFailed(WorkFailed):
    """The sweep could not do its work (exit 1)."""


@dataclass(frozen=True)
class Inputs:
    """Everything trials share, built once per sweep."""

    data: MrpcData
    model_source: str
    tokenizer: Any
    tokenized: Any  # DatasetDict


def prepare_inputs(cfg: SweepConfig) -> Inputs:
    """Check the stores and load data (from ``cfg.data.data_dir``, else the Hub), tokenizer and tokens.

    Writes nothing to the stores, and logs nothing until every input checked out: a bad one
    ends the command with its one-line error alone on stderr.
    """
    check_storage_url(cfg.study.storage)
    check_storage_reachable(cfg.study.storage)
    check_reachable(cfg.tracking.tracking_uri)
    source = resolve_model(cfg.model.name)
    tokenizer = load_tokenizer(source)
    attention_dropout(source, cfg.model)  # an override the model cannot take fails here, not in a trial
    data = load_mrpc(cfg.data, cfg.data.data_dir, seed=cfg.train.seed)
    tokenized = tokenize(data, tokenizer, cfg.model.max_length, both_orders=cfg.train.swap_order > 0)
    log.info("data: %s %s", data.source, data.sizes())
    return Inputs(data, source, tokenizer, tokenized)


@dataclass
class Session:
    """What one sweep process holds while it runs: its inputs, its stores, the lock, the display and the budget."""

    cfg: SweepConfig
    inputs: Inputs
    lock: StudyLock
    study: optuna.Study
    tracker: Tracker
    checkpoint: BestCheckpoint
    confirm: optuna.Study | None = None  # the confirmation stage's study, when it has one
    display: SweepDisplay | None = None
    budget: Budget | None = None


def run_sweep(
    cfg: SweepConfig, live: bool = False, started: float | None = None, workers_note: str | None = None
) -> int:
    """Run the study to ``cfg.study.n_trials`` finished trials; raises ConfigError / SweepFailed.

    Any number of workers may run this at once against one storage and tracking store:
    together they finish exactly ``n_trials`` trials under one MLflow study run.
    ``live``: show the live display (runner.search.display) on stderr, a terminal, besides the log lines.
    With ``study.timeout`` the command stops by itself within that budget, counted from ``started``
    (unix time, default now), and the same command with a larger budget continues the study.
    ``workers_note``: what ``--workers auto`` chose and why, for the summary.
    """
    started = time.time() if started is None else started
    inputs = prepare_inputs(cfg)
    display = SweepDisplay() if live else None
    lock = _open_lock(cfg)
    screen = contextlib.ExitStack()
    try:
        if display is not None:
            screen.enter_context(display.shown())
        # One worker at a time creates the tables, the study, the experiment and the study run:
        # the second one in finds them and joins (see runner.workers.storage).
        with lock:
            study = make_study(cfg)
            tracker = Tracker(
                cfg.tracking.tracking_uri, cfg.study.name, cfg.tracking.artifact_location, cfg.tracking.system_metrics
            )
            tracker.open_study_run(study, reproduction_tags(cfg))
            tracker.store_trials_view(TrialsView(cfg.study.metric, cfg.study.direction, list(cfg.searched())))
            # Opened once and handed to whoever reads the stage: each opening costs a schema check.
            confirm = open_confirm_study(cfg) if cfg.study.confirm.top_k > 0 else None
            budget = time_budget.join(study, cfg.study.timeout, started) if cfg.study.timeout else None
        status = "KILLED"  # unless we get to the end: Ctrl-C, SIGTERM or a bug
        cut = None  # what the time budget left undone
        try:
            tracker.log_dataset(dict(inputs.data.splits), inputs.data.source, "mrpc")
            with lock:
                settle_stale(study, tracker)
            checkpoint = BestCheckpoint(cfg.tracking.best_model_dir, cfg.study.name, cfg.study.direction == "maximize")
            checkpoint.remove_leftovers()
            session = Session(cfg, inputs, lock, study, tracker, checkpoint, confirm, display, budget)
            objective, guard = optimize(session)
            # A search the budget cut short gets no confirmation stage yet: its plan would freeze the top so far.
            searched = len(study.get_trials(deepcopy=False, states=FINISHED)) >= cfg.study.n_trials
            if not guard.tripped and confirm is not None and (budget is None or searched):
                guard = confirm_stage(session, objective)
            status = "FAILED" if guard.tripped else "FINISHED"
            cut = time_budget.unfinished(study, cfg, confirm) if budget is not None and not guard.tripped else None
        finally:
            # One worker at a time writes the study's results: two workers tagging the same trial
            # runs at once collide in MLflow's database (a duplicate-key error on PostgreSQL).
            with lock:
                if status == "FINISHED":  # the study run says whether the budget cut this sweep short
                    time_budget.mark_study_run(tracker, cut)
                if budget is not None:
                    time_budget.release(study, budget, confirm)
                marks = finish_study_run(study, tracker, cfg, status, inputs.data.validation_labels, confirm)
    finally:
        screen.close()  # the display's last frame, before the summary or an error line
        lock.close()
    if guard.tripped:
        raise SweepFailed(
            f"stopped: {len(guard.errors)} of {guard.attempts} trials failed; most common error: {guard.common_error()}"
        )
    if cut is not None:
        log.info("%s", time_budget.stop_note(cut))
    print_summary(study, cfg, checkpoint, marks, confirm, stopped=cut, workers_note=workers_note)
    return 0


def _open_lock(cfg: SweepConfig) -> StudyLock:
    try:
        return StudyLock(cfg.study.storage, cfg.study.name)
    except Exception as err:  # noqa: BLE001 - a database or folder we cannot use is the user's to fix
        raise ConfigError(f"cannot lock study {cfg.study.name!r} in {cfg.study.storage}: {err}") from None


def optimize(session: Session) -> tuple[Objective, FailureGuard]:
    """Run trials until the study has ``n_trials`` finished ones (across all workers), too many fail,
    or the time budget has no room for another trial."""
    cfg, study, display, budget = session.cfg, session.study, session.display, session.budget
    inputs, tracker = session.inputs, session.tracker

    def count_done() -> int:
        return len(study.get_trials(deepcopy=False, states=FINISHED))

    progress = SweepProgress(
        *(cfg.study.n_trials, count_done(), cfg.study.metric, cfg.study.direction == "maximize"),
        view=display,
        count_done=count_done,
        best_now=lambda pending: best_trial(study, pending),
    )
    if display is not None:
        display.attach(study, lambda: TrialTimes.from_study(study))
    objective = Objective(
        cfg, inputs.model_source, inputs.tokenizer, inputs.data, inputs.tokenized, tracker, session.checkpoint, progress
    )
    objective.budget = budget
    epochs = time_budget.min_epochs(cfg)  # the cheapest trial the space allows: what the budget must fit
    guard = FailureGuard(cfg.study.max_failure_rate)
    log.info(
        "study %r: %d/%d trials finished; model %s; fp16=true runs as %s",
        cfg.study.name,
        progress.done,
        cfg.study.n_trials,
        cfg.model.name,
        resolve_precision(True),
    )

    def linked(trial: optuna.Trial) -> float:
        # A retried trial's run points at the run of the trial it repeats. (optuna.Trial has no
        # system_attrs, where Optuna keeps the retry's origin: read them from the stored trial.)
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        origin = retry_origin(next(t for t in running if t.number == trial.number))
        tags = tracker.link_retry(study, trial.number, *origin) if origin is not None else None
        return objective(trial, tags)

    run_until_total(
        study,
        linked,
        cfg.study.n_trials,
        session.lock,
        callbacks=[guard],
        should_stop=lambda: guard.tripped or (budget is not None and not budget.allows_trial([study], epochs)),
        retry_failed=cfg.study.retry_failed,
    )
    return objective, guard


def confirm_stage(session: Session, objective: Objective) -> FailureGuard:
    """Re-train the ``top_k`` best configurations ``seeds`` times each (across all workers), then keep the winner.

    Runs after the search reached its total, in the session's confirmation study (open_confirm_study).
    The jobs are split through the same lock and
    scheduler as the search's trials (see runner.search.confirm); the last worker to see
    the stage complete makes the winner's best run the kept model.
    """
    cfg, study, confirm, lock = session.cfg, session.study, session.confirm, session.lock
    display, budget = session.display, session.budget
    with lock:
        plan = make_plan(study, confirm, cfg)
    is_done = done_counter(plan)

    def count_done() -> int:
        return sum(is_done(t) for t in confirm.get_trials(deepcopy=False))

    def leader(pending: dict[int, float]) -> Best | None:
        # The stage ranks configurations by their mean over runs: that, not one worker's best run, leads.
        return leading(summarize(study, confirm, cfg.study.metric, pending))

    done = count_done()
    maximize = cfg.study.direction == "maximize"
    objective.progress = SweepProgress(
        *(len(plan), done, cfg.study.metric, maximize),
        kind="confirmation",
        view=display,
        count_done=count_done,
        best_now=leader,
    )
    if display is not None:
        display.attach(confirm)  # its runs' intervals; the times stay the search's: the same model and data
    configs = sorted({job.confirms for job in plan})
    log.info(
        "confirmation: %d configuration(s) (search trials %s) x %d new seed(s): %d/%d runs done",
        len(configs),
        ", ".join(map(str, configs)),
        cfg.study.confirm.seeds,
        done,
        len(plan),
    )
    guard = FailureGuard(cfg.study.max_failure_rate)
    epochs = time_budget.min_epochs(cfg, [job.params for job in plan])
    run_until_total(
        confirm,
        objective.confirm,
        len(plan),
        lock,
        callbacks=[guard],
        # The confirmation runs train search configurations: the search's times tell theirs too.
        should_stop=lambda: guard.tripped or (budget is not None and not budget.allows_trial([study, confirm], epochs)),
        is_done=is_done,
        claim=claimer(confirm, plan),
    )
    outcome = summarize(study, confirm, cfg.study.metric)
    if not guard.tripped and outcome is not None and outcome.complete:
        keep_winner(cfg, session.checkpoint, outcome)
    return guard


def keep_winner(cfg: SweepConfig, checkpoint: BestCheckpoint, outcome: Confirmation) -> None:
    """Make the winning configuration's best run the study's kept model, and drop the other candidates."""
    winner = outcome.winner.trial
    checkpoint.promote(candidate_checkpoint(cfg, winner), winner, confirmed_info(outcome))
    with checkpoint.exclusive():
        shutil.rmtree(candidates_root(cfg), ignore_errors=True)

"""Which trial a worker runs next, so that any number of workers reach exactly the total.

``MaxTrialsCallback`` alone stops a worker only after a trial ends: two workers that
each see "one trial to go" both start one, and the study overshoots. Here a worker
asks for a trial only while holding the study's lock (``runner.storage.StudyLock``),
and only when finished + running trials leave room for one more. The lock is handed
back as soon as the new trial is RUNNING in the storage, so the next worker's count
includes it. When the only room left is taken by trials running elsewhere, the worker
waits: if one of those fails, its slot opens again and someone must fill it.

Crashed trials (the worker died, or was stopped by Ctrl-C/SIGTERM) can be retried
with their parameters (``--retry-failed N``), using Optuna's retry bookkeeping
(``RetryHeartbeatStaleTrialCallback``), so ``retried_trial_number`` works on them.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from runner.workers import worker
from runner.workers.storage import StudyLock

log = logging.getLogger("runner")

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
WAIT_S = 2.0  # between looks at the study while other workers' trials may still reach the total


def settle_dead_workers(study: optuna.Study) -> list[int]:
    """Fail RUNNING trials whose worker process on this host is gone; returns their numbers.

    Optuna's heartbeat would fail them only after its grace period; on this host we can tell at once.
    """
    dead = [
        t.number
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if worker.is_dead(t.user_attrs.get("worker"))
    ]
    for number in dead:
        study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
    if dead:
        log.info("marked trial(s) %s of dead workers as failed", ", ".join(map(str, dead)))
    return dead


def is_crash(trial: FrozenTrial) -> bool:
    """A trial that failed because its process died or was stopped, not because training raised.

    The objective records every exception it sees as the ``error`` user attr (a NaN loss
    included); a crash leaves none, since the process never got that far.
    """
    return trial.state == TrialState.FAIL and "error" not in trial.user_attrs


def enqueue_retries(study: optuna.Study, max_retry: int) -> list[int]:
    """Queue a WAITING copy (same params) of every crashed trial not yet retried; returns their numbers.

    A retry of a retry counts against the same budget: the chain of one original trial
    gets at most ``max_retry`` reruns. Call with the study's lock held, so two workers
    do not queue the same retry.

    Whether a copy was queued is read from the count of WAITING trials before and after each
    callback: Optuna's callback returns nothing and silently queues none once the chain has
    used its reruns. The held lock keeps other workers from taking a WAITING trial meanwhile.
    """
    if max_retry <= 0:
        return []
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in RetryHeartbeatStaleTrialCallback.retry_history(t)}
    callback = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
    queued = []
    for trial in trials:
        if not is_crash(trial) or trial.number in retried:
            continue
        before = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
        # The copy leaves the dead run's user attrs (its worker, epochs run) behind:
        # a retry carrying a dead worker's pid would look dead itself.
        clean = copy.deepcopy(trial)
        clean.user_attrs = {}
        callback(study, clean)
        if len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,))) > before:
            queued.append(trial.number)
    if queued:
        log.info("retrying crashed trial(s) %s with the same parameters", ", ".join(map(str, queued)))
    return queued


def retry_origin(trial: optuna.Trial | FrozenTrial) -> tuple[int, list[int]] | None:
    """``(original trial number, retry history)`` of a retried trial, from Optuna's retry fields; else None."""
    original = RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)
    if original is None:
        return None
    return int(original), list(RetryHeartbeatStaleTrialCallback.retry_history(trial))


def run_until_total(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    total: int,
    lock: StudyLock,
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
    should_stop: Callable[[], bool] = lambda: False,
    retry_failed: int = 0,
    wait_s: float = WAIT_S,
    is_done: Callable[[FrozenTrial], bool] = lambda t: t.state in FINISHED,
    claim: Callable[[optuna.Trial], None] | None = None,
) -> None:
    """Run trials one at a time until the study (all workers together) has ``total`` done ones.

    Each trial goes through ``study.optimize(n_trials=1)``, so Optuna's heartbeat, pruning
    and failure handling stay as they are; only the ask is guarded. ``is_done`` says which
    trials count toward the total (complete or pruned ones, by default). ``claim`` runs on
    the new trial while the lock is still held: the confirmation stage assigns it a job
    there, so two workers never take the same one.
    """
    waiting_logged = False
    while not should_stop():
        lock.acquire()
        try:
            settle_dead_workers(study)
            enqueue_retries(study, retry_failed)
            # One read for both counts: with two, a trial that ends between them is counted in
            # neither, and the study overshoots by one (seen with three workers on PostgreSQL).
            trials = study.get_trials(deepcopy=False)
            finished = sum(is_done(t) for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            if finished >= total:
                return
            if finished + running >= total:
                lock.release()
                if not waiting_logged:
                    log.info("%d/%d finished; waiting for %d trial(s) running elsewhere", finished, total, running)
                    waiting_logged = True
                optuna.storages.fail_stale_trials(study)  # a dead remote worker's trial, after the heartbeat grace
                time.sleep(wait_s)
                continue
            waiting_logged = False

            def guarded(trial: optuna.Trial) -> float:
                if claim is not None:
                    claim(trial)
                lock.release()  # the trial is RUNNING in the storage now: the next worker counts it
                return objective(trial)

            study.optimize(guarded, n_trials=1, callbacks=list(callbacks), catch=(Exception,), gc_after_trial=True)
        finally:
            lock.release()

"""Trials whose worker died: fail them in Optuna and in MLflow, and tell them from live ones."""

from __future__ import annotations

import logging

import optuna
from optuna.trial import TrialState

from runner.record.runs import Tracker
from runner.workers import worker
from runner.workers.scheduler import settle_dead_workers

log = logging.getLogger("runner")


def settle_stale(study: optuna.Study, tracker: Tracker) -> None:
    """Trials left RUNNING by a dead process: fail them in Optuna and in MLflow.

    A trial whose worker ran on this host and is gone is failed at once; others
    (other hosts) when Optuna's heartbeat grace period has passed.
    """
    settle_dead_workers(study)
    optuna.storages.fail_stale_trials(study)  # other hosts' trials, once the heartbeat grace has passed
    live = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    tracker.settle_orphans(study.study_name, live)


def running_elsewhere(study: optuna.Study) -> list[int]:
    """Numbers of RUNNING trials whose worker is alive (or on another host)."""
    return [
        t.number
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if not worker.is_dead(t.user_attrs.get("worker"))
    ]

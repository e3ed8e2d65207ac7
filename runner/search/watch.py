"""The ``--workers K`` launcher's live view of the study its workers share, read from the storage.

The launcher (runner.workers.processes) calls it through its ``Watch`` hook and never imports this
module: runner/sweep.py wires it in. Each worker's own lines go to its log file meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Group, RenderableType
from rich.text import Text

from runner.config import SweepConfig
from runner.files import SQLITE_TIMEOUT_S, sqlite_file
from runner.search.confirm import JOB_ATTR, done_counter, stored_plan, summarize
from runner.search.confirm import study_name as confirm_study_name
from runner.search.display import duration, interval_of, live_session, study_line
from runner.search.estimate import Running, TrialTimes, eta_seconds
from runner.search.progress import best_text, leading, params_text
from runner.search.study import best_trial
from runner.workers.scheduler import FINISHED

log = logging.getLogger("runner")


class StudyWatch:
    """The launcher's live view of the study its workers share, read from the storage on each ``tick``.

    Implements the launcher's hook (runner.workers.processes.Watch): ``start`` shows it, ``tick``
    (every ~2 s) re-reads the study, ``stop`` leaves the last frame. Reading never creates tables or
    a database: until the workers made the study, the view says it is waiting.
    """

    def __init__(self, cfg: SweepConfig, workers: int):
        self.cfg, self.workers = cfg, workers
        self.started = time.monotonic()
        self.log_dir: str | None = None
        self._frame: RenderableType = Text("starting workers...")
        self._storage: optuna.storages.RDBStorage | None = None
        self._session: contextlib.ExitStack | None = None

    def start(self, log_dir: str) -> None:
        self.log_dir = log_dir
        self._session = contextlib.ExitStack()
        self._session.enter_context(live_session(self.render))

    def tick(self) -> None:
        try:
            self._frame = self.read()
        except Exception as err:  # noqa: BLE001 - a busy or half-made storage: keep the last frame
            log.debug("display: cannot read the study: %s", err)

    def stop(self) -> None:
        self.tick()
        if self._session is not None:
            self._session.close()
            self._session = None

    def render(self) -> RenderableType:
        footer = Text(f"worker logs: {self.log_dir}") if self.log_dir else Text("")
        return Group(self._frame, footer)

    def _open(self) -> optuna.storages.RDBStorage | None:
        if self._storage is None:
            url = self.cfg.study.storage
            db = sqlite_file(url)
            if url.startswith("sqlite") and (db is None or not db.exists()):
                return None  # the first worker creates it, under the study's lock
            kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if db else {"pool_pre_ping": True}
            self._storage = optuna.storages.RDBStorage(
                url, engine_kwargs=kwargs, skip_compatibility_check=True, skip_table_creation=True
            )
        return self._storage

    def _load(self, name: str) -> optuna.Study | None:
        storage = self._open()
        if storage is None:
            return None
        try:
            return optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            return None

    def read(self) -> RenderableType:
        """One frame from the storage: the search stage, or the confirmation once the search is done."""
        elapsed = time.monotonic() - self.started
        study = self._load(self.cfg.study.name)
        if study is None:
            return Text(f"waiting for the workers to open study {self.cfg.study.name!r} | elapsed {duration(elapsed)}")
        trials = study.get_trials(deepcopy=False)
        times = TrialTimes.from_trials(trials)
        done = sum(t.state in FINISHED for t in trials)
        total, kind, stage = self.cfg.study.n_trials, "trial", trials
        metric = self.cfg.study.metric
        shown_best = None
        if done >= total and self.cfg.study.confirm.top_k > 0:
            confirm = self._load(confirm_study_name(self.cfg.study.name))
            if confirm is not None:
                plan = stored_plan(confirm)
                is_done = done_counter(plan)
                kind, stage = "confirmation", confirm.get_trials(deepcopy=False)
                total = len(plan) or self.cfg.study.confirm.top_k * self.cfg.study.confirm.seeds
                done = sum(is_done(t) for t in stage)
                # The stage ranks configurations by their mean over runs: the leader, not the best single run.
                shown_best = best_text(metric, leading(summarize(study, confirm, metric)))
        if shown_best is None:  # the search's best trial, with its interval
            best = best_trial(study, {}, trials)
            found = next((t for t in trials if best is not None and t.number == best.number), None)
            shown_best = best_text(metric, best, "trial", interval_of(found, metric))
        return self.frame(kind, stage, times, done, total, elapsed, shown_best)

    def frame(
        self,
        kind: str,
        trials: Sequence[FrozenTrial],
        times: TrialTimes,
        done: int,
        total: int,
        elapsed: float,
        shown_best: str,
    ) -> RenderableType:
        """The study's line (``shown_best``: its best, as best_text shows it) and one line per running trial."""
        running = [t for t in trials if t.state == TrialState.RUNNING]
        estimates = [self._running(t) for t in running]
        not_started = max(0, total - done - len(running))
        eta = 0.0 if not not_started and not running else eta_seconds(times, not_started, estimates, self.workers)
        lines: list[RenderableType] = [study_line(kind, done, total, elapsed, eta, shown_best)]
        for trial, estimate in zip(running, estimates, strict=True):
            timed = trial.user_attrs.get("epochs_run", len(estimate.epoch_seconds))
            worker = trial.user_attrs.get("worker")
            worker = f"pid {worker.get('pid')}" if isinstance(worker, dict) else "worker ?"
            params = params_text(trial.params)
            lines.append(Text(f"  {kind} {trial.number} ({worker}): epoch {timed}/{estimate.epochs} | {params}"))
        return Group(*lines)

    def _running(self, trial: FrozenTrial) -> Running:
        job = trial.user_attrs.get(JOB_ATTR) or {}
        return Running.from_trial(trial, {**self.cfg.fixed_hyperparameters(), **job.get("params", {}), **trial.params})

"""The confirmation stage: which configurations are re-trained, with which seeds, and who wins.

After the search has its ``n_trials`` finished trials, the ``top_k`` best distinct
configurations are each trained ``seeds`` more times with new seeds. Each re-run is
a *job* ``(search trial it repeats, seed)``. The jobs are trials of a second Optuna
study in the same storage, ``<study>.confirm``, so they never count toward the
search's total, never feed its sampler, and get the search's guarantees for free:
the same lock, the same scheduler, the same dead-worker and heartbeat handling.

A worker claims a job while holding the study's lock (``claim``): the first job that
no finished or running trial holds. A job is done when its trial completed, or
failed by raising (it would fail the same way again). A trial whose process died
leaves its job free, so a rerun of the same command, or another worker, takes it
again. So any number of workers confirm each job exactly once.

The plan (the list of jobs) is computed once, by the first worker to get there,
and kept on the confirmation study; a new plan is made only when the search total,
``top_k``, ``seeds`` or the base seed change. Jobs already done for a configuration
that stays in the plan are kept.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from runner.config import SweepConfig
from runner.record.checkpoint import BestCheckpoint
from runner.training.metrics import is_better
from runner.workers.storage import open_storage

log = logging.getLogger("runner")

SUFFIX = ".confirm"
PLAN_ATTR = "runner.confirm_plan"  # confirmation study user attr: the key and the jobs
JOB_ATTR = "runner.confirm_job"  # confirmation trial user attr: {"confirms": n, "seed": s}


@dataclass(frozen=True)
class Job:
    """One confirmation run: re-train search trial ``confirms``'s configuration with ``seed``."""

    confirms: int
    seed: int
    params: dict[str, Any] = field(compare=False, hash=False)

    @property
    def key(self) -> tuple[int, int]:
        return self.confirms, self.seed

    def to_attr(self) -> dict[str, Any]:
        return {"confirms": self.confirms, "seed": self.seed, "params": self.params}


def study_name(search_name: str) -> str:
    """The confirmation study's name, next to the search study in the same storage."""
    return search_name + SUFFIX


def candidates_root(cfg: SweepConfig) -> Path:
    """Where each confirmed configuration keeps its best run's model until the winner is known."""
    return Path(cfg.tracking.best_model_dir) / f"{cfg.study.name}.candidates"


def candidate_checkpoint(cfg: SweepConfig, trial: int) -> BestCheckpoint:
    """The folder keeping the best confirmation run of search trial ``trial``'s configuration."""
    return BestCheckpoint(candidates_root(cfg), f"trial-{trial}", cfg.study.direction == "maximize")


def open_confirm_study(cfg: SweepConfig) -> optuna.Study:
    """Create or load the confirmation study (no pruner: a confirmation run is never stopped early)."""
    return optuna.create_study(
        study_name=study_name(cfg.study.name),
        storage=open_storage(cfg.study.storage),
        direction=cfg.study.direction,
        pruner=optuna.pruners.NopPruner(),
        sampler=optuna.samplers.RandomSampler(seed=cfg.train.seed),  # never asked: jobs carry their params
        load_if_exists=True,
    )


def load_confirm_study(storage: optuna.storages.BaseStorage, search_name: str) -> optuna.Study | None:
    """The confirmation study of ``search_name`` if one exists in ``storage``, else None (read side)."""
    name = study_name(search_name)
    if name not in {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}:
        return None
    return optuna.load_study(study_name=name, storage=storage)


def _params_key(params: dict[str, Any]) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in params.items()))


def top_configurations(study: optuna.Study, k: int) -> list[FrozenTrial]:
    """The best complete search trial of each of the ``k`` best distinct configurations, best first.

    Two trials with equal params (a retried trial, or the sampler proposing a configuration
    twice) are one configuration; ties on value go to the earlier trial.
    """
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    complete.sort(key=lambda t: (-t.value if maximize else t.value, t.number))
    chosen: dict[tuple, FrozenTrial] = {}
    for trial in complete:
        chosen.setdefault(_params_key(trial.params), trial)
        if len(chosen) == k:
            break
    return list(chosen.values())


def _plan_key(cfg: SweepConfig) -> dict[str, int]:
    c = cfg.study.confirm
    return {"n_trials": cfg.study.n_trials, "top_k": c.top_k, "seeds": c.seeds, "seed": cfg.train.seed}


def seeds_for(cfg: SweepConfig) -> list[int]:
    """The training seeds of the re-runs: new ones, never the search's own ``train.seed``."""
    return [cfg.train.seed + 1 + i for i in range(cfg.study.confirm.seeds)]


def make_plan(search: optuna.Study, confirm: optuna.Study, cfg: SweepConfig) -> list[Job]:
    """The jobs of this stage: stored on ``confirm`` once; call with the study's lock held."""
    stored = confirm.user_attrs.get(PLAN_ATTR)
    if stored is not None and stored.get("key") == _plan_key(cfg):
        return [Job(j["confirms"], j["seed"], j["params"]) for j in stored["jobs"]]
    top = top_configurations(search, cfg.study.confirm.top_k)
    jobs = [Job(t.number, seed, dict(t.params)) for t in top for seed in seeds_for(cfg)]
    confirm.set_user_attr(PLAN_ATTR, {"key": _plan_key(cfg), "jobs": [j.to_attr() for j in jobs]})
    return jobs


def stored_plan(confirm: optuna.Study) -> list[Job]:
    """The plan the sweep stored (read side: report, export); empty when none."""
    stored = confirm.user_attrs.get(PLAN_ATTR) or {}
    return [Job(j["confirms"], j["seed"], j["params"]) for j in stored.get("jobs", [])]


def job_key(trial: FrozenTrial) -> tuple[int, int] | None:
    """``(confirms, seed)`` of a confirmation trial, or None before it claimed a job."""
    job = trial.user_attrs.get(JOB_ATTR)
    return (int(job["confirms"]), int(job["seed"])) if job else None


def holds_done_job(trial: FrozenTrial) -> bool:
    """Completed, or failed by raising (an ``error`` attr): re-running it would not change that."""
    return trial.state == TrialState.COMPLETE or (trial.state == TrialState.FAIL and "error" in trial.user_attrs)


def done_counter(plan: list[Job]) -> Callable[[FrozenTrial], bool]:
    """``is_done`` for the scheduler: a trial that holds a done job of this plan."""
    keys = {job.key for job in plan}
    return lambda trial: holds_done_job(trial) and job_key(trial) in keys


def claimer(confirm: optuna.Study, plan: list[Job]) -> Callable[[optuna.Trial], None]:
    """``claim`` for the scheduler: give a new trial the first job nobody holds (lock held)."""

    def claim(trial: optuna.Trial) -> None:
        taken = {
            job_key(t)
            for t in confirm.get_trials(deepcopy=False)
            if t.number != trial.number and (holds_done_job(t) or t.state == TrialState.RUNNING)
        }
        job = next(j for j in plan if j.key not in taken)  # the scheduler only asks while one is free
        trial.set_user_attr(JOB_ATTR, job.to_attr())

    return claim


@dataclass
class ConfigResult:
    """One configuration's runs: the search run(s) with its params, and its confirmation runs."""

    trial: int  # the search trial the jobs repeat
    params: dict[str, Any]
    values: list[float]  # search value(s) first, then each complete confirmation run
    confirm_runs: int

    @property
    def runs(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def sd(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0


@dataclass
class Confirmation:
    """The stage's outcome: one row per configuration (plan order), the winner, the winner's curse."""

    metric: str
    rows: list[ConfigResult]
    winner: ConfigResult
    search_best: FrozenTrial
    complete: bool  # every job of the plan is done

    @property
    def optimism_gap(self) -> float | None:
        """The search's raw best minus the mean of that same configuration over all its runs.

        The winner's curse, measured: how much the best single run overstated its configuration.
        None when the search's best is not among the confirmed configurations (a search resumed
        past the plan, before its new plan ran).
        """
        key = _params_key(self.search_best.params)
        same = next((r for r in self.rows if _params_key(r.params) == key), None)
        return None if same is None else float(self.search_best.value) - same.mean

    def metrics(self) -> dict[str, float]:
        """What the study run records about the stage."""
        m = self.metric
        found = {
            "confirmed_trial": self.winner.trial,
            f"confirmed_mean_{m}": self.winner.mean,
            f"confirmed_sd_{m}": self.winner.sd,
            "confirmed_runs": self.winner.runs,
            f"search_best_{m}": float(self.search_best.value),
        }
        gap = self.optimism_gap
        return found if gap is None else {**found, f"optimism_gap_{m}": gap}

    def table(self) -> list[dict[str, Any]]:
        """One row per configuration: runs, mean, sd, min, max; the winner marked once the stage is complete."""
        return [
            {
                "trial": r.trial,
                **r.params,
                "runs": r.runs,
                "mean": r.mean,
                "sd": r.sd,
                "min": min(r.values),
                "max": max(r.values),
                "winner": r is self.winner and self.complete,  # a leader is no winner until every run is in
            }
            for r in self.rows
        ]


def summarize(
    search: optuna.Study, confirm: optuna.Study | None, metric: str, pending: dict[int, float] | None = None
) -> Confirmation | None:
    """The stage's outcome from the two studies, or None when no plan was made (or nothing is complete).

    The winner is the configuration with the best mean over all its runs; ties go to the one
    with more runs, then to the better search rank. ``pending``: confirmation trial number -> value
    of a run that finished but is not told to Optuna yet (the progress lines', as it ends), counted
    as complete.
    """
    pending = pending or {}
    plan = stored_plan(confirm) if confirm is not None else []
    if not plan:
        return None
    maximize = search.direction == optuna.study.StudyDirection.MAXIMIZE
    complete_search = search.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    confirm_trials = confirm.get_trials(deepcopy=False)
    rows = []
    for number in dict.fromkeys(job.confirms for job in plan):
        params = next(j.params for j in plan if j.confirms == number)
        key = _params_key(params)
        values = [float(t.value) for t in complete_search if _params_key(t.params) == key]
        confirmed = [
            float(t.value) if t.state == TrialState.COMPLETE else pending[t.number]
            for t in confirm_trials
            if (t.state == TrialState.COMPLETE or t.number in pending)
            and job_key(t) is not None
            and job_key(t)[0] == number
        ]
        if values or confirmed:
            rows.append(ConfigResult(number, params, values + confirmed, len(confirmed)))
    if not rows:
        return None
    winner = rows[0]
    for row in rows[1:]:
        if is_better(row.mean, winner.mean, maximize) or (row.mean == winner.mean and row.runs > winner.runs):
            winner = row
    done = done_counter(plan)
    complete = sum(done(t) or t.number in pending for t in confirm_trials) >= len(plan)
    return Confirmation(metric, rows, winner, search.best_trial, complete)


def confirmed_info(outcome: Confirmation) -> dict[str, Any]:
    """The stage's result as the kept model's trial.json (and the export's metrics.json) state it."""
    w = outcome.winner
    info = {
        "trial": w.trial,
        "metric": outcome.metric,
        "mean": w.mean,
        "sd": w.sd,
        "runs": w.runs,
        "values": w.values,
        "search_best": float(outcome.search_best.value),
        "search_best_trial": outcome.search_best.number,
    }
    gap = outcome.optimism_gap
    return info if gap is None else {**info, "optimism_gap": gap}

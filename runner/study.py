"""The study: config -> data and model -> Optuna study -> trials -> MLflow -> summary."""

from __future__ import annotations

import collections
import logging
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import distribution_to_json
from optuna.trial import TrialState

from runner import artifacts, worker
from runner.checkpoint import BestCheckpoint
from runner.cli import WorkFailed
from runner.config import ConfigError, SweepConfig, TrackingConfig, to_yaml
from runner.data import MrpcData, load_mrpc, resolve_data_dir, tokenize
from runner.model import attention_dropout, load_tokenizer, resolve_model
from runner.objective import Objective
from runner.progress import SweepProgress
from runner.redact import redact_argv, redact_url
from runner.scheduler import FINISHED, retry_origin, run_until_total, settle_dead_workers
from runner.space import max_epochs, to_distributions
from runner.storage import StudyLock, check_storage_reachable, check_storage_url, open_storage
from runner.tracking import Tracker, check_reachable
from runner.train import resolve_precision

log = logging.getLogger("runner")

__all__ = ["check_storage_url", "open_storage", "make_study", "run_sweep"]

WORKER_STARTS_ATTR = "runner.worker_starts"  # study user attr: how many sweep processes have joined it
OBJECTIVE_ATTR = "runner.objective"  # study user attr: metric, direction and search space it optimises


class SweepFailed(WorkFailed):
    """The sweep could not do its work (exit 1)."""


def make_study(cfg: SweepConfig) -> optuna.Study:
    """Create or load the study; sampler and pruner are not stored, so they are rebuilt each time.

    Several workers starting together must call this holding the study's ``StudyLock``:
    creating the tables and the study is not safe to interleave (see runner.storage).
    """
    storage = open_storage(cfg.study.storage)
    study = optuna.create_study(
        study_name=cfg.study.name,
        storage=storage,
        pruner=make_pruner(cfg),
        direction=cfg.study.direction,
        load_if_exists=True,
    )
    check_same_objective(study, cfg)
    # Offset the seed by the trials already run, so a resumed study does not replay its first
    # proposals, and by the workers that joined before, so workers starting together on an empty
    # study do not propose the same parameters in lockstep. A lone first start keeps train.seed.
    starts = int(study.user_attrs.get(WORKER_STARTS_ATTR, 0))
    study.set_user_attr(WORKER_STARTS_ATTR, starts + 1)
    seed = cfg.train.seed + len(study.get_trials(deepcopy=False)) + 7919 * starts
    study.sampler = (
        optuna.samplers.TPESampler(seed=seed, n_startup_trials=cfg.study.n_startup_trials)
        if cfg.study.sampler == "tpe"
        else optuna.samplers.RandomSampler(seed=seed)
    )
    return study


def check_same_objective(study: optuna.Study, cfg: SweepConfig) -> None:
    """A resumed study must optimise the same metric, direction and search space as it began with.

    Otherwise TPE would model trials from different spaces as one and the best
    trial would compare unlike things; the first run records what it optimises.
    """
    space = {name: distribution_to_json(d) for name, d in to_distributions(cfg).items()}
    # Pinned values may change between runs (each trial's run records them); what is searched may not.
    current = {"metric": cfg.study.metric, "direction": cfg.study.direction, "search_space": space}
    stored = study.user_attrs.get(OBJECTIVE_ATTR)
    if study.direction.name.lower() != cfg.study.direction:
        stored = {**(stored or current), "direction": study.direction.name.lower()}
    if stored is None:
        study.set_user_attr(OBJECTIVE_ATTR, current)
        return
    labels = {"search_space": "search space"}
    changed = []
    for key, now in current.items():
        before = stored.get(key)
        if before == now:
            continue
        if isinstance(now, dict) and isinstance(before, dict):
            names = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
            changed.append(f"{labels[key]} ({', '.join(names)})")
        else:
            changed.append(key)
    if changed:
        raise ConfigError(
            f"study {cfg.study.name!r} already exists with a different {' and '.join(changed)}: "
            "use --study NEW_NAME to start a new study"
        )


def make_pruner(cfg: SweepConfig) -> optuna.pruners.BasePruner:
    """The configured pruner; steps are epochs."""
    if cfg.study.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=cfg.study.pruner_startup_trials,
            n_warmup_steps=cfg.study.pruner_warmup_epochs + 1,  # the earliest prune is at step == n_warmup_steps
        )
    if cfg.study.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_epochs(cfg), reduction_factor=3)
    return optuna.pruners.NopPruner()


def settle_stale(study: optuna.Study, tracker: Tracker) -> None:
    """Trials left RUNNING by a dead process: fail them in Optuna and in MLflow.

    A trial whose worker ran on this host and is gone is failed at once; others
    (other hosts) when Optuna's heartbeat grace period has passed.
    """
    settle_dead_workers(study)
    optuna.storages.fail_stale_trials(study)  # other hosts' trials, once the heartbeat grace has passed
    live = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    tracker.settle_orphans(study.study_name, live)


class FailureGuard:
    """Stops the study when too many of this sweep's trials fail."""

    def __init__(self, max_rate: float):
        self.max_rate, self.attempts, self.errors = max_rate, 0, []

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.attempts += 1
        if trial.state == TrialState.FAIL:
            self.errors.append(trial.user_attrs.get("error", "unknown error"))
        if len(self.errors) >= 3 and len(self.errors) / self.attempts >= self.max_rate:
            study.stop()

    @property
    def tripped(self) -> bool:
        return len(self.errors) >= 3 and len(self.errors) / max(self.attempts, 1) >= self.max_rate

    def common_error(self) -> str:
        return collections.Counter(self.errors).most_common(1)[0][0] if self.errors else ""


@dataclass(frozen=True)
class Inputs:
    """Everything trials share, built once per sweep."""

    data: MrpcData
    model_source: str
    tokenizer: Any
    tokenized: Any  # DatasetDict


def prepare_inputs(cfg: SweepConfig, data_dir: str | None) -> Inputs:
    """Check the stores and load data, tokenizer and tokens; writes nothing to the stores."""
    check_storage_url(cfg.study.storage)
    check_storage_reachable(cfg.study.storage)
    check_reachable(cfg.tracking.tracking_uri)
    data = load_mrpc(cfg.data, resolve_data_dir(cfg.data, data_dir), seed=cfg.train.seed)
    log.info("data: %s %s", data.source, data.sizes())
    source = resolve_model(cfg.model.name)
    tokenizer = load_tokenizer(source)
    attention_dropout(source, cfg.model)  # an override the model cannot take fails here, not in a trial
    return Inputs(data, source, tokenizer, tokenize(data, tokenizer, cfg.model.max_length))


def run_sweep(cfg: SweepConfig, data_dir: str | None = None) -> int:
    """Run the study to ``cfg.study.n_trials`` finished trials; raises ConfigError / SweepFailed.

    Any number of workers may run this at once against one storage and tracking store:
    together they finish exactly ``n_trials`` trials under one MLflow study run.
    """
    inputs = prepare_inputs(cfg, data_dir)
    lock = _open_lock(cfg)
    try:
        # One worker at a time creates the tables, the study, the experiment and the study run:
        # the second one in finds them and joins (see runner.storage).
        with lock:
            study = make_study(cfg)
            tracker = Tracker(
                cfg.tracking.tracking_uri, cfg.study.name, cfg.tracking.artifact_location, cfg.tracking.system_metrics
            )
            tracker.open_study_run(study, reproduction_tags(cfg))
        status = "KILLED"  # unless we get to the end: Ctrl-C, SIGTERM or a bug
        try:
            tracker.log_dataset(dict(inputs.data.splits), inputs.data.source, "mrpc")
            with lock:
                settle_stale(study, tracker)
            checkpoint = BestCheckpoint(cfg.tracking.best_model_dir, cfg.study.name, cfg.study.direction == "maximize")
            checkpoint.remove_leftovers()
            guard = optimize(study, cfg, inputs, tracker, checkpoint, lock)
            status = "FAILED" if guard.tripped else "FINISHED"
        finally:
            finish_study_run(study, tracker, cfg, status)
    finally:
        lock.close()
    if guard.tripped:
        raise SweepFailed(
            f"stopped: {len(guard.errors)} of {guard.attempts} trials failed; most common error: {guard.common_error()}"
        )
    print_summary(study, cfg, checkpoint)
    return 0


def _open_lock(cfg: SweepConfig) -> StudyLock:
    try:
        return StudyLock(cfg.study.storage, cfg.study.name)
    except Exception as err:  # noqa: BLE001 - a database or folder we cannot use is the user's to fix
        raise ConfigError(f"cannot lock study {cfg.study.name!r} in {cfg.study.storage}: {err}") from None


def optimize(
    study: optuna.Study,
    cfg: SweepConfig,
    inputs: Inputs,
    tracker: Tracker,
    checkpoint: BestCheckpoint,
    lock: StudyLock,
) -> FailureGuard:
    """Run trials until the study has ``n_trials`` finished ones (across all workers) or too many fail."""
    done = len(study.get_trials(deepcopy=False, states=FINISHED))
    progress = SweepProgress(cfg.study.n_trials, done, cfg.study.metric, cfg.study.direction == "maximize")
    if any(t.state == TrialState.COMPLETE for t in study.trials):
        progress.set_best(study.best_value, study.best_trial.number)
    objective = Objective(
        cfg, inputs.model_source, inputs.tokenizer, inputs.data, inputs.tokenized, tracker, checkpoint, progress
    )
    guard = FailureGuard(cfg.study.max_failure_rate)
    log.info(
        "study %r: %d/%d trials finished; model %s; fp16=true runs as %s",
        cfg.study.name,
        done,
        cfg.study.n_trials,
        cfg.model.name,
        resolve_precision(True),
    )

    def linked(trial: optuna.Trial) -> float:
        # Other workers finish trials too: show the study's count and best, not this process's.
        progress.done = len(study.get_trials(deepcopy=False, states=FINISHED))
        if any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
            progress.set_best(study.best_value, study.best_trial.number)
        # A retried trial's run points at the run of the trial it repeats.
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        origin = retry_origin(next(t for t in running if t.number == trial.number))
        if origin is not None:
            tracker.link_retry(study.study_name, trial.number, *origin)
        return objective(trial)

    run_until_total(
        study,
        linked,
        cfg.study.n_trials,
        lock,
        callbacks=[guard],
        should_stop=lambda: guard.tripped,
        retry_failed=cfg.study.retry_failed,
    )
    return guard


def reproduction_tags(cfg: SweepConfig) -> dict[str, str]:
    """Tags that let someone rerun this sweep: command, code version, library versions."""
    import datasets
    import mlflow
    import torch
    import transformers

    tags = {
        # The command as typed, minus any password (a --storage or --tracking-uri URL may hold one).
        "runner.command": shlex.join([Path(sys.executable).name, "-m", "runner.sweep", *redact_argv(sys.argv[1:])]),
        "runner.storage": redact_url(cfg.study.storage),
        "runner.versions": f"transformers={transformers.__version__} datasets={datasets.__version__} "
        f"torch={torch.__version__} optuna={optuna.__version__} mlflow={mlflow.__version__}",
        "runner.model": cfg.model.name,
    }
    commit = _git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).resolve().parent
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def finish_study_run(study: optuna.Study, tracker: Tracker, cfg: SweepConfig, status: str) -> None:
    """Config, trials table, best trial and plots on the study run, then end it.

    With several workers the last one to stop ends it: a worker that stops while
    trials of other live workers still run leaves it RUNNING (each worker records
    its own trial's end before it looks, so the last to look sees none running).
    """
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            (folder / "config.yaml").write_text(to_yaml(cfg), encoding="utf-8")
            artifacts.trials_table(study).to_csv(folder / "trials.csv", index=False)
            files = [folder / "config.yaml", folder / "trials.csv", *artifacts.write_study_plots(study, folder)]
            metrics, tags = {}, {"runner.trials_finished": len(study.get_trials(deepcopy=False, states=FINISHED))}
            if any(t.state == TrialState.COMPLETE for t in study.trials):
                best = study.best_trial
                metrics = {f"best_{k}": v for k, v in best.user_attrs.get("best_metrics", {}).items()}
                metrics |= {f"best_{cfg.study.metric}": best.value, "best_trial": best.number}
                tags |= {"best_trial.number": best.number, "best_trial.run_id": _run_id_of(tracker, study, best.number)}
                tags |= {f"best_trial.params.{k}": v for k, v in best.params.items()}
            tracker.update_study_run(metrics, tags, files)
    finally:
        # A sibling worker killed during this sweep: its trial was failed in Optuna by the
        # scheduler; fail its MLflow run too, so no run stays RUNNING for ever.
        live = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        tracker.settle_orphans(study.study_name, live)
        others = running_elsewhere(study)
        if others:
            log.info("study run left open: trial(s) %s still running on other workers", ", ".join(map(str, others)))
        else:
            tracker.close_study_run(status)


def running_elsewhere(study: optuna.Study) -> list[int]:
    """Numbers of RUNNING trials whose worker is alive (or on another host)."""
    return [
        t.number
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if not worker.is_dead(t.user_attrs.get("worker"))
    ]


def _run_id_of(tracker: Tracker, study: optuna.Study, number: int) -> str:
    runs = tracker.client.search_runs(
        [tracker.experiment_id],
        filter_string=f"tags.`runner.study` = '{study.study_name}' and tags.`optuna.trial_number` = '{number}'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else ""


def print_summary(study: optuna.Study, cfg: SweepConfig, checkpoint: BestCheckpoint) -> None:
    """The trials table and where to look next, on stdout."""
    table = artifacts.trials_table(study)
    out = sys.stdout
    out.write("\n" + table.to_string(index=False) + "\n\n")
    states = collections.Counter(t.state.name for t in study.trials)
    out.write("trials: " + ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items())) + "\n")
    if states.get("COMPLETE"):
        best = study.best_trial
        out.write(f"best: trial {best.number}, {cfg.study.metric}={best.value:.4f}, params {best.params}\n")
        out.write(f"best model: {checkpoint.path}  (ship it: python -m runner.export --study {cfg.study.name})\n")
    flags = (
        ""
        if cfg.tracking.tracking_uri == TrackingConfig().tracking_uri
        else f" --tracking-uri {redact_url(cfg.tracking.tracking_uri)}"
    )
    out.write(
        f"compare the runs: python -m runner.ui{flags}  or  python -m runner.report --study {cfg.study.name}{flags}\n"
    )

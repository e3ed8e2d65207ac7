"""The Optuna study: created or joined, checked against what it began optimising, its sampler, pruner and best trial."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import optuna
from optuna.distributions import distribution_to_json
from optuna.trial import FrozenTrial, TrialState

from runner.config import SweepConfig
from runner.errors import ConfigError
from runner.search.progress import Best
from runner.search.space import max_epochs, to_distributions
from runner.training.metrics import is_better
from runner.workers.storage import open_storage

WORKER_STARTS_ATTR = "runner.worker_starts"  # study user attr: how many sweep processes have joined it


OBJECTIVE_ATTR = "runner.objective"  # study user attr: metric, direction and search space it optimises


def make_study(cfg: SweepConfig) -> optuna.Study:
    """Create or load the study; sampler and pruner are not stored, so they are rebuilt each time.

    Several workers starting together must call this holding the study's ``StudyLock``:
    creating the tables and the study is not safe to interleave (see runner.workers.storage).
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
    name_objective(study, cfg.study.metric)
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

    The direction has two records: Optuna's own, fixed when the study was created
    (``create_study(load_if_exists=True)`` ignores the direction it is given for an existing
    study), and ours in the user attr. Optuna's wins: it is merged over ours, or over the
    current objective when the study has none (one made before this check, or by another
    tool), so a changed direction is refused even then instead of being recorded as if new.
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


def name_objective(study: optuna.Study, metric: str) -> None:
    """Name the objective in the storage, so optuna-dashboard and Optuna's plots say ``eval_f1``, not "Objective 0".

    A study made before this has no name stored: resuming it names it.
    """
    if study.metric_names != [metric]:
        with warnings.catch_warnings():  # experimental since Optuna 3.2, and still so
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([metric])


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


def best_trial(
    study: optuna.Study, pending: dict[int, float], trials: Sequence[FrozenTrial] | None = None
) -> Best | None:
    """The search's best trial in the storage, counting ``pending`` (number -> value, not told yet) as complete.

    Ties go to the earlier trial, as Optuna's ``best_trial``; None before any trial is complete.
    ``trials``: the study's trials when the caller has just read them (not read again).
    """
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = None
    for number, value in [(t.number, t.value) for t in complete] + sorted(pending.items()):
        if is_better(value, best.value if best else None, maximize):
            best = Best(value, number)
    return best

"""The declarative search space -> Optuna distributions and a trial's hyperparameters."""

from __future__ import annotations

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from runner.config import Categorical, FloatRange, Hyperparameters, IntRange, SweepConfig


def to_distributions(cfg: SweepConfig) -> dict[str, BaseDistribution]:
    """Optuna distributions for the searched entries (fixed values are not searched)."""
    out: dict[str, BaseDistribution] = {}
    for name, entry in cfg.searched().items():
        if isinstance(entry, FloatRange):
            out[name] = FloatDistribution(entry.low, entry.high, log=entry.log, step=entry.step)
        elif isinstance(entry, IntRange):
            out[name] = IntDistribution(entry.low, entry.high, log=entry.log, step=entry.step)
        elif isinstance(entry, Categorical):
            out[name] = CategoricalDistribution(entry.choices)
    return out


def suggest(trial: optuna.Trial, cfg: SweepConfig) -> Hyperparameters:
    """Ask the trial for every searched value; fill the rest from the fixed settings."""
    values = dict(cfg.fixed_hyperparameters())
    for name, dist in to_distributions(cfg).items():
        if isinstance(dist, FloatDistribution):
            values[name] = trial.suggest_float(name, dist.low, dist.high, log=dist.log, step=dist.step)
        elif isinstance(dist, IntDistribution):
            values[name] = trial.suggest_int(name, dist.low, dist.high, log=dist.log, step=dist.step)
        else:
            values[name] = trial.suggest_categorical(name, dist.choices)
    return Hyperparameters(**values)


def max_epochs(cfg: SweepConfig) -> int:
    """The largest number of epochs any trial can run (the pruner's max resource)."""
    entry = cfg.search_space.get("num_train_epochs", cfg.hyperparameters.num_train_epochs)
    if isinstance(entry, IntRange):
        return entry.high
    if isinstance(entry, Categorical):
        return max(int(c) for c in entry.choices)
    return int(entry)  # a fixed value; a float range cannot pass the config's integer check

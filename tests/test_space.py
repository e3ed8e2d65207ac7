"""runner.space: the declarative search space -> Optuna distributions -> one trial's hyperparameters."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FixedTrial
from pydantic import ValidationError

from runner.config import Hyperparameters, SweepConfig
from runner.search.space import max_epochs, suggest, to_distributions

SPACE = {
    "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
    "warmup_ratio": {"type": "float", "low": 0.0, "high": 0.2, "step": 0.05},
    "num_train_epochs": {"type": "int", "low": 1, "high": 4},
    "per_device_train_batch_size": {"type": "categorical", "choices": [8, 16, 32]},
    "fp16": True,
}


@pytest.fixture
def cfg() -> SweepConfig:
    return SweepConfig.model_validate({"hyperparameters": {"weight_decay": 0.0}, "search_space": SPACE})


def test_to_distributions_types_and_bounds(cfg):
    dists = to_distributions(cfg)
    assert set(dists) == {"learning_rate", "warmup_ratio", "num_train_epochs", "per_device_train_batch_size"}
    assert dists["learning_rate"] == FloatDistribution(1e-5, 1e-3, log=True)
    assert dists["warmup_ratio"] == FloatDistribution(0.0, 0.2, step=0.05)
    assert dists["num_train_epochs"] == IntDistribution(1, 4)
    assert dists["per_device_train_batch_size"] == CategoricalDistribution([8, 16, 32])


def test_fixed_values_are_not_distributions():
    cfg = SweepConfig.model_validate({"search_space": {"learning_rate": 3e-5, "num_train_epochs": 2}})
    assert to_distributions(cfg) == {}


def test_suggest_with_fixed_trial_fills_in_fixed_values(cfg):
    """Searched values come from the trial; the rest from fixed search_space values, then `hyperparameters`."""
    trial = FixedTrial(
        {"learning_rate": 2e-4, "warmup_ratio": 0.05, "num_train_epochs": 3, "per_device_train_batch_size": 16}
    )
    hp = suggest(trial, cfg)
    assert hp == Hyperparameters(
        learning_rate=2e-4,
        warmup_ratio=0.05,
        num_train_epochs=3,
        per_device_train_batch_size=16,
        fp16=True,  # fixed in search_space
        weight_decay=0.0,  # from the hyperparameters section
    )
    assert isinstance(hp.num_train_epochs, int)


def test_suggest_asks_for_every_searched_name(cfg):
    with pytest.raises(ValueError, match="num_train_epochs"):
        suggest(FixedTrial({"learning_rate": 2e-4, "warmup_ratio": 0.05, "per_device_train_batch_size": 16}), cfg)


def test_suggest_in_a_study_stays_inside_the_space(cfg):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(25):
        trial = study.ask()
        hp = suggest(trial, cfg)
        assert 1e-5 <= hp.learning_rate <= 1e-3
        assert any(hp.warmup_ratio == pytest.approx(step) for step in (0.0, 0.05, 0.1, 0.15, 0.2))
        assert 1 <= hp.num_train_epochs <= 4
        assert hp.per_device_train_batch_size in (8, 16, 32)
        assert hp.fp16 is True
        assert set(trial.params) == set(to_distributions(cfg))
        study.tell(trial, 0.0)


@pytest.mark.parametrize(
    ("space", "hyperparameters", "expected"),
    [
        ({"num_train_epochs": {"type": "int", "low": 1, "high": 5}}, {}, 5),
        ({"num_train_epochs": {"type": "categorical", "choices": [2, 6, 3]}}, {}, 6),
        ({"num_train_epochs": 4}, {}, 4),
        ({}, {"num_train_epochs": 7}, 7),
        ({}, {}, Hyperparameters().num_train_epochs),
    ],
    ids=["int-range", "categorical", "fixed-in-space", "hyperparameters", "default"],
)
def test_max_epochs(space, hyperparameters, expected):
    cfg = SweepConfig.model_validate({"search_space": space, "hyperparameters": hyperparameters})
    assert max_epochs(cfg) == expected


@pytest.mark.parametrize("low, high", [(1, 3), (1.0, 3.0)])
def test_a_float_range_of_epochs_is_refused_so_max_epochs_never_sees_one(low, high):
    """Why max_epochs handles int ranges, choices and fixed values only: the config refuses a float range."""
    with pytest.raises(ValidationError, match="num_train_epochs"):
        SweepConfig.model_validate({"search_space": {"num_train_epochs": {"type": "float", "low": low, "high": high}}})

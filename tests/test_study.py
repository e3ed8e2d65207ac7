"""runner.study and runner.search.progress units: failure guard, pruner, study creation, progress counting."""

from __future__ import annotations

import logging

import optuna
import pytest
from optuna.trial import TrialState

from runner.config import SweepConfig
from runner.errors import ConfigError
from runner.search.guard import FailureGuard
from runner.search.progress import Best, SweepProgress
from runner.search.study import best_trial, make_pruner, make_study
from runner.workers.storage import check_storage_url


def failing_study(guard: FailureGuard, n_trials: int, fail_every: int = 1) -> optuna.Study:
    """Run ``n_trials`` where every ``fail_every``-th trial raises, with ``guard`` as a callback."""
    study = optuna.create_study()

    def objective(trial):
        if trial.number % fail_every == 0:
            trial.set_user_attr("error", f"RuntimeError: boom {trial.number % 2}")
            raise RuntimeError("boom")
        return 1.0

    study.optimize(objective, n_trials=n_trials, callbacks=[guard], catch=(RuntimeError,))
    return study


def test_failure_guard_stops_after_three_failures():
    guard = FailureGuard(0.5)
    study = failing_study(guard, n_trials=10)
    assert len(study.trials) == 3
    assert guard.tripped
    assert guard.common_error() == "RuntimeError: boom 0"  # two of the three


def test_failure_guard_tolerates_a_low_failure_rate():
    guard = FailureGuard(0.5)
    study = failing_study(guard, n_trials=9, fail_every=3)  # trials 0, 3, 6 fail: 3 of 9
    assert len(study.trials) == 9
    assert not guard.tripped


def test_failure_guard_at_rate_one_stops_when_every_trial_fails():
    guard = FailureGuard(1.0)
    study = failing_study(guard, n_trials=10)
    assert len(study.trials) == 3
    assert guard.tripped


def _cfg(**study) -> SweepConfig:
    return SweepConfig.model_validate({"study": study})


def test_median_pruner_waits_for_the_warmup_epochs():
    """With pruner_warmup_epochs=1 a weak trial is not pruned at epoch 1, and is at epoch 2."""
    pruner = make_pruner(_cfg(pruner="median", pruner_startup_trials=1, pruner_warmup_epochs=1))
    study = optuna.create_study(direction="maximize", pruner=pruner)
    good = study.ask()
    for epoch in (1, 2, 3):
        good.report(0.9, step=epoch)
    study.tell(good, 0.9)
    weak = study.ask()
    weak.report(0.1, step=1)
    assert not weak.should_prune()
    weak.report(0.1, step=2)
    assert weak.should_prune()


def test_other_pruners():
    cfg = SweepConfig.model_validate(
        {"study": {"pruner": "hyperband"}, "search_space": {"num_train_epochs": {"type": "int", "low": 1, "high": 4}}}
    )
    hyperband = make_pruner(cfg)
    assert isinstance(hyperband, optuna.pruners.HyperbandPruner)
    assert hyperband._max_resource == 4
    assert isinstance(make_pruner(_cfg(pruner="none")), optuna.pruners.NopPruner)


def test_existing_study_with_another_direction_is_a_config_error(tmp_path):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    make_study(_cfg(name="s", storage=storage, direction="maximize"))
    assert make_study(_cfg(name="s", storage=storage, direction="maximize")).study_name == "s"
    with pytest.raises(ConfigError, match="already exists with a different direction"):
        make_study(_cfg(name="s", storage=storage, direction="minimize"))


def test_existing_study_with_another_search_space_or_metric_is_a_config_error(tmp_path):
    """Resuming must optimise what the study began with; the message names what changed and how to start anew."""
    storage = f"sqlite:///{tmp_path}/optuna.db"
    space = {"learning_rate": {"type": "float", "low": 1.0e-5, "high": 1.0e-4, "log": True}}

    def cfg(**changes):
        raw = {"study": {"name": "s", "storage": storage}, "search_space": dict(space)}
        for key, value in changes.items():
            raw[key] = {**raw.get(key, {}), **value}
        return SweepConfig.model_validate(raw)

    make_study(cfg())
    make_study(cfg())  # the same objective resumes
    with pytest.raises(ConfigError, match=r"different search space \(learning_rate\).*--study NEW_NAME"):
        make_study(cfg(search_space={"learning_rate": {"type": "float", "low": 1.0e-5, "high": 3.0e-4, "log": True}}))
    with pytest.raises(ConfigError, match=r"different search space \(num_train_epochs\)"):
        make_study(cfg(search_space={"num_train_epochs": {"type": "int", "low": 1, "high": 3}}))
    make_study(cfg(search_space={"weight_decay": 0.1}))  # a pinned value may change: each run records it
    with pytest.raises(ConfigError, match="different metric"):
        make_study(cfg(study={"metric": "eval_accuracy"}))


@pytest.mark.parametrize("url", ["nosuchdb://x/y", "not a url", "postgresql+nosuchdriver://h/db"])
def test_bad_storage_url_is_a_config_error(url):
    with pytest.raises(ConfigError, match="storage"):
        check_storage_url(url)


def test_progress_counts_finished_trials_and_tracks_the_best(caplog):
    progress = SweepProgress(total=4, done=1, metric="eval_f1", maximize=True)
    progress.best = Best(0.5, 0)
    with caplog.at_level(logging.INFO, logger="runner"):
        progress.trial_finished(1, "COMPLETE", 0.7)
        progress.trial_finished(2, "FAIL", None)
        progress.trial_finished(3, "PRUNED", None, " at epoch 1")
        progress.trial_finished(4, "COMPLETE", 0.6)
    assert progress.done == 4  # 1 before + 2 complete + 1 pruned; the failure does not count
    assert progress.best == Best(0.7, 1)
    assert "[4/4 done]" in caplog.records[-1].getMessage()
    assert "best eval_f1=0.7000, trial 1" in caplog.records[-1].getMessage()


def test_progress_shows_what_other_workers_finished_meanwhile(caplog):
    """A worker's lines show the study's count and best: trials another worker finished during this one count too."""
    study = optuna.create_study(direction="maximize")
    mine = study.ask()  # this worker's trial 0, running in the storage
    progress = SweepProgress(
        4,
        0,
        "eval_f1",
        True,
        count_done=lambda: len(study.get_trials(states=(TrialState.COMPLETE,))),
        best_now=lambda pending: best_trial(study, pending),
    )
    with caplog.at_level(logging.INFO, logger="runner"):
        progress.trial_started(mine.number, {})
        study.tell(study.ask(), 0.85)  # another worker's trial 1 ended while trial 0 ran
        progress.epoch(mine.number, 1, 2, {"eval_f1": 0.7})
        assert "best eval_f1=0.8500, trial 1" in caplog.records[-1].getMessage()
        progress.trial_finished(mine.number, "COMPLETE", 0.8)  # not told yet: pending, and not the best
        assert "[2/4 done] | best eval_f1=0.8500, trial 1" in caplog.records[-1].getMessage()
        study.tell(mine, 0.8)
        study.tell(study.ask(), 0.9)  # trial 2 from elsewhere
        mine = study.ask()
        progress.trial_started(mine.number, {})
        assert "[3/4 done]" in caplog.records[-1].getMessage()
        progress.trial_finished(mine.number, "COMPLETE", 0.95)  # this process's own better result shows at once
        assert "[4/4 done] | best eval_f1=0.9500, trial 3" in caplog.records[-1].getMessage()
        assert best_trial(study, {}) == Best(0.9, 2)  # the pending value is the line's alone, never the storage's


def test_progress_minimize():
    progress = SweepProgress(total=2, done=0, metric="eval_loss", maximize=False)
    progress.trial_finished(0, "COMPLETE", 0.6)
    progress.trial_finished(1, "COMPLETE", 0.4)
    assert progress.best == Best(0.4, 1)


def test_an_existing_study_is_opened_and_nothing_is_created(tmp_path):
    """One way to open a study (export, report's plots): a missing file stays missing; the known studies are listed."""
    from runner.files import sqlite_file
    from runner.workers.storage import UnknownStudy, load_existing_study

    missing = tmp_path / "nothing" / "optuna.db"
    with pytest.raises(UnknownStudy, match="no Optuna storage at .*run a sweep first"):
        load_existing_study(f"sqlite:///{missing}", "s")
    assert not missing.parent.exists()

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    for name in ("b", "a"):
        optuna.create_study(study_name=name, storage=url)
    assert load_existing_study(url, "a").study_name == "a"
    with pytest.raises(UnknownStudy, match=r"unknown study 'c' in sqlite:///.*optuna\.db \(known: a, b\)"):
        load_existing_study(url, "c")
    with pytest.raises(ConfigError, match="invalid Optuna storage URL") as bad:
        load_existing_study("postgresql+nosuchdriver://user:s3cret@h/db", "a")
    assert "s3cret" not in str(bad.value) and not isinstance(bad.value, UnknownStudy)
    # The same parser as the storage's: the query and driver do not hide the file.
    assert sqlite_file(f"sqlite+pysqlite:///{tmp_path / 'optuna.db'}?timeout=3") == tmp_path / "optuna.db"
    assert sqlite_file("sqlite:///:memory:") is None and sqlite_file("sqlite://") is None
    assert sqlite_file("postgresql://h/db") is None and sqlite_file("not a url") is None


def test_the_objective_is_named_in_the_storage(tmp_path):
    """optuna-dashboard and Optuna's plots read the metric's name from the storage: a fresh load sees it."""
    storage = f"sqlite:///{tmp_path}/optuna.db"
    optuna.create_study(study_name="old", storage=storage, direction="maximize")  # made before names were stored
    assert optuna.load_study(study_name="old", storage=storage).metric_names is None
    for name, metric in (("s", "eval_f1"), ("old", "eval_f1"), ("loss", "eval_loss")):
        direction = "minimize" if metric == "eval_loss" else "maximize"
        make_study(_cfg(name=name, storage=storage, metric=metric, direction=direction))
        assert optuna.load_study(study_name=name, storage=storage).metric_names == [metric]


def test_the_trials_table_shows_epochs_as_whole_numbers_beside_a_running_trial():
    """A running trial has no best epoch yet; the others' still read "3", not "3.0"."""
    from runner.record.artifacts import trials_table

    study = optuna.create_study(direction="maximize")
    space = {"num_train_epochs": optuna.distributions.IntDistribution(4, 4)}
    done = study.ask(space)
    done.set_user_attr("best_epoch", 3)
    done.set_user_attr("epochs_run", 4)
    study.tell(done, 0.87)
    study.ask(space)  # still running: its params, but no epochs yet
    table = trials_table(study)
    assert table["best_epoch"].tolist()[0] == 3 and table["best_epoch"].isna().tolist() == [False, True]
    first_row = table.to_string(index=False).splitlines()[1]
    assert " 3 " in first_row and "3.0" not in first_row and "4.0" not in first_row

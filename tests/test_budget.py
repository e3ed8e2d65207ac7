"""The time budget (``--timeout``): durations, the decision rules, and sweeps that stop by themselves and go on."""

from __future__ import annotations

import datetime as dt
import threading
import time

import optuna
import pytest
from conftest import run_threads
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from runner.config import load_config
from runner.config.schema import parse_duration
from runner.errors import ConfigError
from runner.search import budget as budget_mod
from runner.search.budget import BUDGET_ATTR, Budget, cheapest_trial_seconds, check_fits, join, min_epochs
from runner.search.estimate import EPOCH_SECONDS_ATTR, TrialTimes

START = dt.datetime(2026, 1, 1, 12, 0, 0)
EPOCH_S = 0.3  # a scripted epoch's wall time in the end-to-end sweeps
# A trial's end may pass the deadline by its last epoch, plus what writing its files took beyond
# the estimate: on this busy shared machine up to about a second.
LATE_S = EPOCH_S + 1.0


class Clock:
    """A settable unix clock for Budget."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def measured(epochs: list[float], total: float, batch: int = 8, n_epochs: int = 1) -> optuna.trial.FrozenTrial:
    """A finished trial that ran ``epochs`` (seconds each) and took ``total`` seconds in all."""
    trial = create_trial(
        state=TrialState.COMPLETE,
        value=0.8,
        params={"per_device_train_batch_size": batch, "num_train_epochs": n_epochs},
        distributions={
            "per_device_train_batch_size": CategoricalDistribution([8, 32]),
            "num_train_epochs": IntDistribution(1, 3),
        },
        user_attrs={EPOCH_SECONDS_ATTR: epochs, "precision": "fp32"},
    )
    trial.datetime_start = START
    trial.datetime_complete = START + dt.timedelta(seconds=total)
    return trial


# --- durations ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("45m", 2700), ("90s", 90), ("2h", 7200), ("1h30m", 5400), ("90", 90), (90, 90), ("1.5h", 5400), ("2m5s", 125)],
)
def test_durations_read_as_seconds(text, seconds):
    assert parse_duration(text) == seconds
    assert load_config(None, {"study.timeout": text}).study.timeout == seconds


@pytest.mark.parametrize("text", ["soon", "", "0", "-5s", "10d", "1h 30m", "m", "nan", True, "9999h"])
def test_a_bad_duration_is_a_one_line_config_error(text):
    with pytest.raises(ConfigError) as caught:
        load_config(None, {"study.timeout": text})
    message = str(caught.value)
    assert message.startswith("defaults: study.timeout: ") and "\n" not in message


def test_a_bad_timeout_flag_exits_2_with_one_line_naming_it(run_sweep, tmp_path):
    result = run_sweep("--timeout", "soon")
    assert result.code == 2
    assert result.err.strip().splitlines() == [
        "runner.sweep: error: --timeout: expected a duration such as 90s, 45m, 2h or 1h30m, or a number of seconds, "
        "got 'soon'"
    ]
    assert not (tmp_path / "mlruns").exists(), "nothing written"


def test_a_budget_below_the_floor_exits_2_before_anything_loads(run_sweep, tmp_path):
    result = run_sweep("--timeout", "5s")
    assert result.code == 2
    (line,) = result.err.strip().splitlines()
    assert "time budget 5.0 s is too short" in line and "at least 10 s" in line
    assert not (tmp_path / "mlruns").exists(), "nothing written"


def test_a_budget_below_the_cheapest_measured_trial_is_refused(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=storage)
    study.add_trial(measured([30.0, 30.0], 80.0, n_epochs=2))  # 30 s epochs, 20 s outside them
    cfg = {"study": {"name": "s", "storage": storage, "timeout": "45s"}}
    cfg["search_space"] = {"num_train_epochs": {"type": "int", "low": 1, "high": 3}}
    with pytest.raises(ConfigError, match=r"shorter than the cheapest trial study 's' measured: about 50 s"):
        check_fits(load_config(None, cfg))
    cfg["study"]["timeout"] = "50s"
    check_fits(load_config(None, cfg))  # one 1-epoch trial fits: accepted


def test_an_unknown_study_is_checked_against_the_floor_only_and_creates_nothing(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    check_fits(load_config(None, {"study": {"storage": storage, "timeout": "10s"}}))
    assert not (tmp_path / "optuna.db").exists()


# --- the decision rules -----------------------------------------------------------------


def test_a_trial_starts_only_when_the_cheapest_one_fits():
    clock = Clock()
    budget = Budget(start=clock.now, seconds=100, clock=clock)
    assert budget.may_start(TrialTimes(), epochs=3), "nothing measured: start one"
    # Batch 8 epochs take 20 s, batch 32 ones 10 s; a trial spends 5 s outside its epochs.
    times = TrialTimes.from_trials([measured([20.0, 20.0], 45.0), measured([10.0], 15.0, batch=32)])
    assert cheapest_trial_seconds(times, epochs=2) == pytest.approx(5 + 2 * 10)
    clock.now += 75  # 25 s left: a 2-epoch trial at the fastest pace just fits
    assert budget.may_start(times, epochs=2)
    clock.now += 1
    assert not budget.may_start(times, epochs=2)
    assert budget.may_start(times, epochs=1)
    clock.now += 24
    assert not budget.may_start(TrialTimes(), epochs=1), "no time left: not even an unmeasured trial"


def test_a_run_stops_at_the_boundary_its_next_epoch_cannot_pass():
    clock = Clock()
    budget = Budget(start=clock.now - 80, seconds=100, clock=clock)  # 20 s left
    assert not budget.must_stop([8.0, 9.0, 10.0], tail=10.0), "9 s + 10 s fits in 20 s"
    assert budget.must_stop([8.0, 9.0, 10.0], tail=12.0)
    assert budget.must_stop([30.0], tail=0.0)


def test_the_last_epoch_is_never_stopped(tmp_path):
    clock = Clock()
    budget = Budget(start=clock.now - 100, seconds=100, clock=clock)  # nothing left
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'o.db'}")
    trial = study.ask()
    trial.set_user_attr(EPOCH_SECONDS_ATTR, [5.0])
    assert budget.stops_run(trial, epoch=2, epochs=2) is None
    why = budget.stops_run(trial, epoch=1, epochs=2)
    assert why.startswith("time budget: stopped after epoch 1 of 2")


def test_the_fewest_epochs_come_from_the_space_or_the_jobs():
    space = {"num_train_epochs": {"type": "categorical", "choices": [4, 2, 3]}}
    assert min_epochs(load_config(None, {"search_space": space})) == 2
    ranged = {"num_train_epochs": {"type": "int", "low": 3, "high": 5}}
    assert min_epochs(load_config(None, {"search_space": ranged})) == 3
    cfg = load_config(None, {"search_space": {"num_train_epochs": 4}})
    assert min_epochs(cfg) == 4
    assert min_epochs(cfg, [{"learning_rate": 1e-4}, {"num_train_epochs": 1}]) == 1


def test_workers_join_the_running_budget_and_a_new_command_starts_a_new_one(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'o.db'}")
    clock = Clock(1000.0)
    first = join(study, 60, started=1000.0, clock=clock)
    clock.now = 1010.0
    assert join(study, 60, started=1008.0, clock=clock).deadline == first.deadline == 1060.0, "joins, same deadline"
    assert join(study, 120, started=1009.0, clock=clock).deadline == 1129.0, "another length: its own budget"
    budget_mod.release(study, Budget(1009.0, 120, clock))
    assert study.user_attrs[BUDGET_ATTR]["ended"], "no trial running: the budget ended with its command"
    assert join(study, 120, started=1011.0, clock=clock).deadline == 1131.0, "ended: a new budget"
    clock.now = 2000.0
    assert join(study, 120, started=1990.0, clock=clock).deadline == 2110.0, "run out: a new budget"


def test_the_launcher_hands_its_start_to_every_worker(monkeypatch):
    import runner.sweep
    import runner.workers.launch as launch

    seen = {}

    class FakeLauncher:
        def __init__(self, commands, envs, **kwargs):
            seen["envs"] = envs

        def run(self):
            return 0

    monkeypatch.setattr(launch, "Launcher", FakeLauncher)
    assert launch.launch_workers(["--timeout", "60s"], 2, budget_start=1234.5) == 0
    assert [env[launch.BUDGET_START_ENV] for env in seen["envs"]] == ["1234.5", "1234.5"]
    monkeypatch.setenv(launch.WORKER_ENV, "1")
    monkeypatch.setenv(launch.BUDGET_START_ENV, "1234.5")
    assert runner.sweep._budget_start() == 1234.5, "a worker counts from the launcher's start"


# --- sweeps that stop by themselves --------------------------------------------------------


@pytest.fixture
def slow_epochs(fake_train, monkeypatch):
    """Scripted training (``fake_train``) whose every epoch takes EPOCH_S of wall time; the budget's floor at 1 s."""
    import runner.record.artifacts as artifacts
    import runner.search.objective as objective

    fake = objective.train

    def slow(*args, on_epoch=None, **kwargs):
        def hook(epoch, row):
            time.sleep(EPOCH_S)
            return on_epoch(epoch, row)

        return fake(*args, on_epoch=hook, **kwargs)

    monkeypatch.setattr(objective, "train", slow)
    monkeypatch.setattr(budget_mod, "FLOOR_S", 1.0)  # the tests' tiny sweeps start in a few seconds
    # pyplot is not thread-safe: workers in threads draw their confusion matrices one at a time.
    draw, lock = artifacts.write_confusion_matrix, threading.Lock()

    def one_at_a_time(*args, **kwargs):
        with lock:
            return draw(*args, **kwargs)

    monkeypatch.setattr(artifacts, "write_confusion_matrix", one_at_a_time)


def finished(study) -> int:
    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)


def assert_nothing_running(store) -> None:
    assert not [t.number for t in store.study().trials if t.state == TrialState.RUNNING], "an Optuna trial RUNNING"
    assert not [r.info.run_name for r in store.runs() if r.info.status == "RUNNING"], "an MLflow run RUNNING"


@pytest.mark.usefixtures("premade_mlflow_db", "slow_epochs")
def test_a_trial_running_at_the_deadline_stops_at_its_epoch_boundary(run_sweep, store):
    """A long trial (30 epochs of 0.3 s) in a 5 s budget: pruned at a boundary, tagged, exit 0, nothing left running."""
    began = time.time()
    result = run_sweep("--trials", "20", "--timeout", "5s", "--set", "search_space.num_train_epochs=30")
    assert result.code == 0, result.err
    (trial,) = store.study().trials
    assert trial.state == TrialState.PRUNED and trial.user_attrs["runner.stopped"] == "time budget"
    assert trial.datetime_complete.timestamp() <= began + 5 + LATE_S, "within the budget plus one epoch"
    (run,) = store.children()
    assert run.info.status == "KILLED"
    assert run.data.tags["runner.stopped"].startswith("time budget: stopped after epoch ")
    assert_nothing_running(store)
    parent = store.parent()
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["runner.stopped"].startswith("time budget: 1/20 trials finished")
    assert "time budget used up: 1/20 trials finished" in result.out
    assert "larger --timeout continues" in result.out
    # Now measured: a 30-epoch trial takes about 9 s, more than a 4 s budget holds.
    refused = run_sweep("--trials", "20", "--timeout", "4s", "--set", "search_space.num_train_epochs=30")
    assert refused.code == 2
    assert "shorter than the cheapest trial study 'tiny' measured" in refused.err.strip()


@pytest.mark.usefixtures("premade_mlflow_db", "slow_epochs")
def test_the_same_command_with_a_larger_budget_continues_the_study(run_sweep, store):
    began = time.time()
    first = run_sweep("--trials", "20", "--timeout", "5s")
    assert first.code == 0, first.err
    after_first = finished(store.study())
    assert 0 < after_first < 20
    ends = [t.datetime_complete.timestamp() for t in store.study().trials]
    assert max(ends) <= began + 5 + LATE_S, "within the budget plus one epoch"
    assert_nothing_running(store)
    study_run = store.parent()
    assert study_run.data.tags["runner.stopped"].startswith(f"time budget: {after_first}/20 trials finished")
    assert f"time budget used up: {after_first}/20 trials finished; best so far: trial " in first.out

    second = run_sweep("--trials", "20", "--timeout", "8s")
    assert second.code == 0, second.err
    assert after_first < finished(store.study()) < 20, "continued, and stopped by the budget again"
    assert store.parent().info.run_id == study_run.info.run_id, "the same study run"
    assert store.parent().info.status == "FINISHED"
    assert_nothing_running(store)
    # A budget large enough for the rest: the study reaches its total and the stop note goes.
    third = run_sweep("--trials", str(finished(store.study()) + 1), "--timeout", "10s")
    assert third.code == 0, third.err
    assert "runner.stopped" not in store.parent().data.tags
    assert "time budget used up" not in third.out


@pytest.mark.usefixtures("premade_mlflow_db", "slow_epochs")
def test_two_workers_keep_one_budget(run_sweep, store, tmp_path, sweep_yaml, mrpc_dir, tiny_model):
    """Two workers (threads) started together on one study: both stop by themselves within the budget."""
    from runner.config import resolve_data_dir
    from runner.search.run import run_sweep as sweep

    overrides = {"study.n_trials": 20, "study.timeout": "6s", "model.name": str(tiny_model)}
    overrides["tracking.system_metrics"] = False
    cfg = resolve_data_dir(load_config(sweep_yaml, overrides), str(mrpc_dir))
    began = time.time()
    codes = []
    run_threads(lambda: codes.append(sweep(cfg, started=began)), lambda: codes.append(sweep(cfg, started=began)))
    assert codes == [0, 0]
    study = store.study()
    assert 0 < finished(study) < 20
    assert max(t.datetime_complete.timestamp() for t in study.trials) <= began + 6 + LATE_S
    assert_nothing_running(store)
    assert store.parent().info.status == "FINISHED", "the last worker out closed the study run"
    assert study.user_attrs[BUDGET_ATTR] == {"start": began, "seconds": 6.0, "ended": True}

"""One owner per fact: the trial's run id, the data folder and the tracking URI are each resolved in one place."""

from __future__ import annotations

import copy

import optuna
import pytest

from runner.config import SweepConfig, load_config, resolve_data_dir, tracking_uri_override
from runner.record import history, store
from runner.record.history import TRIAL_RUN_ATTR
from runner.record.runs import Tracker
from runner.sweep import build_parser, resolve_config


@pytest.fixture
def tracker(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "facts", str(tmp_path / "artifacts"), system_metrics=False)
    tracker.open_study_run(optuna.create_study(study_name="facts"), {})
    return tracker


def test_trial_run_carries_the_tags_it_is_given(tracker):
    """Retry tags go straight onto the trial's run when it is created, not through a parking dict."""
    with tracker.trial_run("facts", 4, {"a": 1}, tags={"runner.retry_of": "1"}) as run:
        run_id = run.run_id
    tags = tracker.client.get_run(run_id).data.tags
    assert tags["runner.retry_of"] == "1" and tags["optuna.trial_number"] == "4"


def test_trial_run_id_is_the_stored_attribute_else_found_by_tag(tracker):
    """A trial recorded before the run id was stored on it is still found, by its run's tags."""
    study = optuna.create_study(study_name="facts")
    trial = study.ask()
    study.tell(trial, 1.0)
    with tracker.trial_run("facts", trial.number, {}) as run:
        run_id = run.run_id
    old = study.trials[0]
    assert TRIAL_RUN_ATTR not in old.user_attrs
    assert tracker.trial_run_id("facts", old) == run_id
    assert history.trial_run_id(tracker.tracking_uri, "facts", old) == run_id

    stored = copy.deepcopy(old)
    stored.user_attrs = {TRIAL_RUN_ATTR: "the-stored-id"}  # the attribute wins over any search
    assert tracker.trial_run_id("facts", stored) == "the-stored-id"
    assert history.trial_run_id(tracker.tracking_uri, "facts", stored) == "the-stored-id"


def test_data_dir_precedence_and_absolute_path(tmp_path, monkeypatch):
    """--data-dir > RUNNER_DATA_DIR > the config's data.data_dir, stored as an absolute path."""
    monkeypatch.chdir(tmp_path)
    cfg = SweepConfig.model_validate({"data": {"data_dir": "from-config"}})
    assert resolve_data_dir(cfg, None).data.data_dir == str(tmp_path / "from-config")
    monkeypatch.setenv("RUNNER_DATA_DIR", "from-env")
    assert resolve_data_dir(cfg, None).data.data_dir == str(tmp_path / "from-env")
    assert resolve_data_dir(cfg, "from-flag").data.data_dir == str(tmp_path / "from-flag")
    monkeypatch.delenv("RUNNER_DATA_DIR")
    assert resolve_data_dir(SweepConfig(), None).data.data_dir is None  # the Hub


def test_sweep_resolves_the_data_dir_into_its_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "sweep.yaml"
    path.write_text("data:\n  data_dir: from-yaml\n", encoding="utf-8")
    parser = build_parser()
    assert resolve_config(parser.parse_args(["--config", str(path)])).data.data_dir == str(tmp_path / "from-yaml")
    monkeypatch.setenv("RUNNER_DATA_DIR", "from-env")
    assert resolve_config(parser.parse_args(["--config", str(path)])).data.data_dir == str(tmp_path / "from-env")
    # As before: the flag wins even over --set data.data_dir.
    args = ["--config", str(path), "--set", "data.data_dir=from-set", "--data-dir", "from-flag"]
    assert resolve_config(parser.parse_args(args)).data.data_dir == str(tmp_path / "from-flag")


@pytest.mark.parametrize(("flag", "env"), [(None, None), (None, "sqlite:///env.db"), ("sqlite:///flag.db", "x")])
def test_sweep_and_the_other_commands_resolve_the_tracking_uri_alike(tmp_path, monkeypatch, flag, env):
    """--tracking-uri > $MLFLOW_TRACKING_URI > the default, one rule for the sweep and for export/report/ui."""
    monkeypatch.chdir(tmp_path)
    if env:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", env)
    path = tmp_path / "sweep.yaml"
    path.write_text("", encoding="utf-8")
    cli = ["--config", str(path), *(["--tracking-uri", flag] if flag else [])]
    swept = resolve_config(build_parser().parse_args(cli)).tracking.tracking_uri
    assert swept == (flag or env or load_config(None).tracking.tracking_uri)
    assert tracking_uri_override(flag) == (flag or env)
    assert store.resolve_tracking_uri(flag) == store.absolute_sqlite_uri(swept)

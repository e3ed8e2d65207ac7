"""The confirmation stage: re-runs with new seeds, the winner by mean, resume and workers without duplicates."""

from __future__ import annotations

import threading

import optuna
import pytest
from conftest import run_threads, staged_confirmation
from optuna.trial import TrialState

import runner.training.metrics
import runner.training.train
from runner.config import SweepConfig
from runner.search import confirm as confirm_mod

CONFIRM = ("--set", "study.confirm.top_k=2", "--set", "study.confirm.seeds=2")


def confirm_runs(store):
    return store.runs("tiny", "confirm")


def confirm_study(store):
    return optuna.load_study(study_name="tiny.confirm", storage=f"sqlite:///{store.root / 'mlruns' / 'optuna.db'}")


def test_confirmation_runs_are_tagged_seeded_and_never_pruned(run_sweep, store, fake_train, premade_mlflow_db):
    # Bookkeeping: scripted epochs, real pruner, stores and scheduler. The search trials improve on each
    # other, so the median pruner keeps all three; the confirmation runs score what the fake's seeds give.
    fake_train([[0.5, 0.6], [0.6, 0.7], [0.7, 0.8]])
    result = run_sweep(
        "--trials",
        "3",
        *CONFIRM,
        *("--set", "search_space.num_train_epochs=2"),
        *("--set", "study.pruner=median"),
        *("--set", "study.pruner_startup_trials=0"),
        *("--set", "study.pruner_warmup_epochs=0"),
    )
    assert result.code == 0, result.err
    search = store.study()
    top = confirm_mod.top_configurations(search, 2)
    runs = confirm_runs(store)
    assert len(runs) == 4, "2 configurations x 2 seeds"
    parent = store.parent()
    seen = set()
    for run in runs:
        tags, params = run.data.tags, run.data.params
        assert tags["runner.phase"] == "confirm"
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == "FINISHED" and tags["optuna.state"] == "COMPLETE"
        seen.add((int(tags["runner.confirms"]), int(params["seed"])))
        assert params["seed"] != "7", "a new seed, not the search's"
        assert run.data.metrics["best_eval_f1_ci_low"] <= run.data.metrics["best_eval_f1"]
    assert seen == {(t.number, s) for t in top for s in (8, 9)}
    assert all(r.data.tags["runner.phase"] == "search" for r in store.children())
    assert len(search.trials) == 3, "confirmation runs do not count toward --trials"
    for trial in confirm_study(store).trials:
        assert trial.user_attrs["epochs_run"] == 2, "never pruned"
    metrics = parent.data.metrics
    for key in ("confirmed_trial", "confirmed_mean_eval_f1", "confirmed_sd_eval_f1", "confirmed_runs"):
        assert key in metrics
    assert metrics["confirmed_runs"] == 3
    assert metrics["search_best_eval_f1"] == pytest.approx(search.best_value)
    assert "optimism_gap_eval_f1" in metrics
    assert "confirmation" in result.out and "confirmed winner" in result.out


def test_the_winner_is_the_best_mean_not_the_lucky_run_and_export_ships_it(
    run_sweep, store, scripted_f1, tmp_path, monkeypatch, capsys, caplog, premade_mlflow_db
):
    import json

    # Search (1 epoch each): trial 0 0.90 (lucky), trial 1 0.85, trial 2 0.50.
    # Confirmation (top 2, 2 seeds, in plan order): trial 0's config 0.60, 0.62; trial 1's 0.84, 0.86.
    left = scripted_f1([0.90, 0.85, 0.50, 0.60, 0.62, 0.84, 0.86])
    result = run_sweep("--trials", "3", *CONFIRM, "--set", "search_space.num_train_epochs=1")
    assert result.code == 0, result.err
    assert left == []
    # The stage's lines show the leading configuration's mean, as the stage ranks them, never one lucky
    # run; the run that just ended counts though Optuna is not told yet (0.845 is 0.85 and 0.84).
    ended = [line for line in caplog.messages if line.startswith("confirmation") and "COMPLETE" in line]
    assert len(ended) == 4, caplog.messages
    assert "leading eval_f1=0.8500 ± 0.0000 over 1 run of trial 1" in ended[0]
    assert "leading eval_f1=0.8450 ± 0.0071 over 2 runs of trial 1" in ended[2]
    assert "leading eval_f1=0.8500 ± 0.0100 over 3 runs of trial 1" in ended[3]
    assert "best eval_f1" not in "".join(ended)
    metrics = store.parent().data.metrics
    assert metrics["confirmed_trial"] == 1
    assert metrics["confirmed_mean_eval_f1"] == pytest.approx((0.85 + 0.84 + 0.86) / 3)
    assert metrics["search_best_eval_f1"] == pytest.approx(0.90)
    assert metrics["optimism_gap_eval_f1"] == pytest.approx(0.90 - (0.90 + 0.60 + 0.62) / 3)
    kept = json.loads((tmp_path / "mlruns" / "best" / "tiny" / "trial.json").read_text())
    assert kept["trial"] == 1, "the kept model comes from the winning configuration"
    assert kept["value"] == pytest.approx(0.86), "its best run"
    assert kept["confirmed"]["mean"] == pytest.approx(metrics["confirmed_mean_eval_f1"])
    assert not (tmp_path / "mlruns" / "best" / "tiny.candidates").exists()

    # Export ships the confirmed winner and says both numbers. Its re-evaluation must reproduce the
    # scripted score of the kept run, so the metric is scripted the same way there.
    from runner.export import main as export_main

    def kept_run_scores(eval_pred):
        return {"accuracy": 0.5, "f1": 0.86}

    monkeypatch.setattr(runner.training.metrics, "compute_metrics", kept_run_scores)
    capsys.readouterr()
    assert export_main(["--study", "tiny"]) == 0
    out = capsys.readouterr().out
    shipped = json.loads((tmp_path / "mlruns" / "best" / "tiny" / "metrics.json").read_text())
    assert shipped["trial"] == 1 and shipped["seed"] in (8, 9)
    assert shipped["confirmed"]["runs"] == 3
    assert shipped["run_id"] == kept["run_id"], "registered under the confirmation run that trained it"
    assert "0.8500 ± 0.0100 over 3 runs" in out and "this model: eval_f1 0.8600" in out
    card = (tmp_path / "mlruns" / "best" / "tiny" / "README.md").read_text()
    assert "0.8500 ± 0.0100 over 3 runs" in card and "0.8600" in card


@pytest.mark.usefixtures("fake_train")
def test_resume_during_confirmation_finishes_the_stage_without_a_duplicate(
    run_sweep, store, monkeypatch, premade_mlflow_db
):
    import runner.search.objective as objective

    real = objective.new_model
    calls = {"n": 0}

    def stop_in_second_confirmation(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # 2 search trials, then the second confirmation run: Ctrl-C inside its run
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(objective, "new_model", stop_in_second_confirmation)
    args = ("--trials", "2", *CONFIRM, "--set", "search_space.num_train_epochs=1")
    first = run_sweep(*args)
    assert first.code != 0
    assert len(confirm_study(store).trials) == 2, "stopped in the stage's second run"
    monkeypatch.setattr(objective, "new_model", real)
    second = run_sweep(*args)
    assert second.code == 0, second.err

    trials = confirm_study(store).trials
    complete = [confirm_mod.job_key(t) for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == len(set(complete)) == 4, "every job once, none twice"
    assert any(t.state == TrialState.FAIL for t in trials), "the interrupted run is recorded as failed"
    assert {r.data.tags["optuna.state"] for r in confirm_runs(store)} == {"COMPLETE", "FAIL"}
    assert store.parent().data.metrics["confirmed_runs"] == 3


def split_between_two_workers(url: str) -> None:
    """Two workers (threads, each with its own lock handle) run one confirmation stage on ``url``; check it."""
    from runner.workers.scheduler import run_until_total
    from runner.workers.storage import StudyLock

    cfg = SweepConfig.model_validate(
        {"study": {"name": "w", "storage": url, "confirm": {"top_k": 3, "seeds": 3}}, "train": {"seed": 1}}
    )
    search = optuna.create_study(study_name="w", storage=url, direction="maximize")
    for value in (0.7, 0.9, 0.8, 0.6):
        search.enqueue_trial({"x": value})
        search.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    confirm = confirm_mod.open_confirm_study(cfg)
    plan = confirm_mod.make_plan(search, confirm, cfg)
    assert [(j.confirms, j.seed) for j in plan] == [(n, s) for n in (1, 2, 0) for s in (2, 3, 4)]

    def work() -> None:
        lock = StudyLock(url, "w")  # each worker its own lock handle, as separate processes have
        study = confirm_mod.open_confirm_study(cfg)

        def objective(trial):
            threading.Event().wait(0.05)  # long enough for the other worker to ask meanwhile
            return trial.user_attrs[confirm_mod.JOB_ATTR]["seed"] / 10

        try:
            run_until_total(
                study,
                objective,
                len(plan),
                lock,
                is_done=confirm_mod.done_counter(plan),
                claim=confirm_mod.claimer(study, plan),
            )
        finally:
            lock.close()

    run_threads(work, work)
    keys = [confirm_mod.job_key(t) for t in confirm.trials if t.state == TrialState.COMPLETE]
    assert sorted(keys) == sorted(j.key for j in plan), "no job twice, none left out"
    assert len(confirm.trials) == len(plan)


def test_two_workers_split_the_stage_exactly(tmp_path):
    split_between_two_workers(f"sqlite:///{tmp_path / 'optuna.db'}")


def test_an_unfinished_stage_names_its_leader_never_a_winner():
    from runner.search.summary import _budget_line, confirmation_view

    # Trial 0 ran lucky (0.90) and re-runs at 0.60; trial 1's single run (0.85) leads on the mean.
    search, confirm = staged_confirmation([0.90, 0.85, 0.50], [0.60])
    outcome = confirm_mod.summarize(search, confirm, "eval_f1")
    assert not outcome.complete and outcome.winner.trial == 1
    assert not any(row["winner"] for row in outcome.table()), "the recorded table names no winner yet"
    shown = confirmation_view(outcome)
    assert list(shown["winner"]) == ["", "<- leading"]
    line = _budget_line(search, SweepConfig.model_validate({}), "3/3 trials finished, 1/4 confirmation runs", outcome)
    assert "leading eval_f1=0.8500 ± 0.0000 over 1 run of trial 1" in line
    assert "best so far" not in line

    # The last runs in, one of them still pending (finished, Optuna not told yet): now a winner.
    search, confirm = staged_confirmation([0.90, 0.85, 0.50], [0.60, 0.62, 0.84])
    last = confirm.ask()
    last.set_user_attr(confirm_mod.JOB_ATTR, confirm_mod.stored_plan(confirm)[3].to_attr())
    outcome = confirm_mod.summarize(search, confirm, "eval_f1", pending={last.number: 0.86})
    assert outcome.complete and outcome.winner.trial == 1 and outcome.winner.values == [0.85, 0.84, 0.86]
    assert list(confirmation_view(outcome)["winner"]) == ["", "<- winner"]

"""The README's central promises, each with a test that fails when the promise is broken.

The training curve on tiny data is often monotone, so "return the last epoch" or "report at the
global step" would pass a test that compares against whatever training produced. Here the
validation scores are scripted, epoch by epoch, through the evaluation's metric function.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import REPO

import runner.training.train


@pytest.fixture
def weights_per_epoch(monkeypatch) -> list[dict[str, torch.Tensor]]:
    """A copy of the live model's weights taken at each epoch's evaluation, in order."""
    captured: list[dict[str, torch.Tensor]] = []
    on_evaluate = runner.training.train._EpochCallback.on_evaluate

    def spy(self, *args, **kwargs):
        captured.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})
        return on_evaluate(self, *args, **kwargs)

    monkeypatch.setattr(runner.training.train._EpochCallback, "on_evaluate", spy)
    return captured


def test_the_objective_is_the_best_epoch_not_the_last(
    run_sweep, store, tmp_path, scripted_f1, weights_per_epoch, premade_mlflow_db
):
    from safetensors.torch import load_file

    left = scripted_f1([0.6, 0.9, 0.7])
    result = run_sweep(
        "--trials",
        "1",
        "--set",
        "search_space.num_train_epochs=3",
        "--set",
        "search_space.learning_rate=1e-3",
    )
    assert result.code == 0, result.err
    assert left == [], "every epoch was evaluated once"

    (trial,) = store.study().trials
    assert trial.value == pytest.approx(0.9)
    assert trial.user_attrs["best_epoch"] == 2
    assert trial.user_attrs["epochs_run"] == 3, "the best epoch is not the last"
    assert sorted(trial.intermediate_values) == [1, 2, 3]
    (run,) = store.children()
    assert run.data.metrics["best_epoch"] == 2
    assert run.data.metrics["best_eval_f1"] == pytest.approx(0.9)

    assert len(weights_per_epoch) == 3
    saved = load_file(tmp_path / "mlruns" / "best" / "tiny" / "model.safetensors")
    epoch2, epoch3 = weights_per_epoch[1], weights_per_epoch[2]
    name = next(k for k in saved if k.endswith("classifier.weight"))
    key = next(k for k in epoch2 if k.endswith("classifier.weight"))
    assert not torch.equal(epoch2[key], epoch3[key]), "training moved the weights between epochs 2 and 3"
    assert torch.equal(saved[name], epoch2[key]), "the saved model holds epoch 2's weights"
    assert not torch.equal(saved[name], epoch3[key])


def test_pruning_compares_trials_at_the_same_epoch(run_sweep, store, scripted_f1, sweep_yaml, premade_mlflow_db):
    # Trial 0 sets the median: 0.5 at epoch 1, 0.8 after. Trial 1 leads at epoch 1 (0.6), then its best so
    # far (what the median pruner compares) falls behind at epoch 2.
    scripted_f1([0.5, 0.8, 0.8, 0.6, 0.6, 0.6])
    result = run_sweep(
        "--trials",
        "2",
        *("--set", "study.pruner=median"),
        *("--set", "study.pruner_startup_trials=1"),
        *("--set", "study.pruner_warmup_epochs=0"),
        *("--set", "search_space.num_train_epochs=3"),
    )
    assert result.code == 0, result.err

    import optuna

    good, bad = store.study().trials
    assert good.state == optuna.trial.TrialState.COMPLETE
    assert sorted(good.intermediate_values) == [1, 2, 3], "intermediate values are keyed by epoch"
    assert bad.state == optuna.trial.TrialState.PRUNED
    assert bad.intermediate_values == {1: pytest.approx(0.6), 2: pytest.approx(0.6)}, "stopped after epoch 2"
    assert bad.user_attrs["epochs_run"] == 2

    _, bad_run = store.children()
    assert bad_run.info.status == "KILLED"
    assert bad_run.data.tags["optuna.state"] == "PRUNED"


CONFIG_ERROR = """
import sys
from runner.sweep import main
code = main({argv!r})
heavy = sorted(name for name in ("torch", "transformers", "datasets", "optuna", "mlflow") if name in sys.modules)
print(code, ",".join(heavy) or "-")
"""


@pytest.mark.e2e
@pytest.mark.parametrize(
    "argv",
    [
        ["--set", "study.n_trials=0"],
        ["--set", "study.no_such_key=1"],
    ],
    ids=["bad-value", "unknown-key"],
)
def test_config_errors_come_back_before_any_heavy_import(argv):
    """In a fresh interpreter: exit 2, one line on stderr, and no ML library imported."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CONFIG_ERROR.format(argv=argv))],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    code, heavy = proc.stdout.split()
    assert code == "2", proc.stderr
    assert heavy == "-", f"imported on a config error: {heavy}"
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("runner.sweep: error: "), proc.stderr


@pytest.mark.usefixtures("fake_train")  # the flag is the objective's: scripted epochs, probabilities patched below
def test_a_collapsed_trial_is_flagged_on_its_run_and_a_healthy_one_is_not(run_sweep, store, monkeypatch):
    """A model that predicts one class for every pair gets ``runner.collapsed``; one that predicts both does not."""
    import numpy as np

    real = runner.training.train.probabilities
    outputs = iter(["one class", "both classes"])

    def scripted(logits):
        probs = real(logits)
        if next(outputs) == "one class":
            return np.tile([0.2, 0.8], (len(probs), 1))  # "equivalent" for every pair
        half = np.arange(len(probs)) % 2
        return np.stack([half, 1 - half], axis=1).astype(float)

    monkeypatch.setattr(runner.training.train, "probabilities", scripted)
    result = run_sweep("--trials", "2", "--set", "search_space.num_train_epochs=1")
    assert result.code == 0, result.err
    collapsed, healthy = store.children()
    assert collapsed.data.tags["runner.collapsed"] == "predicts only class 1 (majority-class baseline)"
    assert "runner.collapsed" not in healthy.data.tags


def _sweep_command(sweep_yaml, mrpc_dir, tiny_model, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "runner.sweep",
        *("--config", str(sweep_yaml), "--data-dir", str(mrpc_dir), "--model", str(tiny_model)),
        "--no-system-metrics",
        *extra,
    ]


def _run_until(command: list[str], cwd, marker: str, sig: int, timeout: float = 200) -> str:
    """Start ``command`` in a process group of its own, send ``sig`` once ``marker`` is on stderr; the stderr read."""
    import os
    import signal
    import time

    proc = subprocess.Popen(
        command,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    seen = []
    try:
        deadline = time.monotonic() + timeout
        for line in proc.stderr:
            seen.append(line)
            if marker in line:
                os.killpg(proc.pid, sig)
                break
            assert time.monotonic() < deadline, "".join(seen[-20:])
        else:
            pytest.fail(f"{marker!r} never appeared:\n" + "".join(seen[-20:]))
        proc.wait(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return "".join(seen)


@pytest.mark.e2e
def test_kill_9_mid_trial_then_the_same_command_finishes_the_study(tmp_path, sweep_yaml, mrpc_dir, tiny_model):
    """SIGKILL a real sweep after its first epoch; the same command again settles the dead trial and finishes."""
    import json
    import signal

    import optuna
    from conftest import Stores

    # 5 epochs: the kill lands after epoch 1, long before the trial could end.
    epochs = ("--set", "search_space.num_train_epochs=5")
    command = _sweep_command(sweep_yaml, mrpc_dir, tiny_model, "--trials", "2", *epochs)
    _run_until(command, tmp_path, "trial 0 epoch 1/5", signal.SIGKILL)
    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=280)
    assert again.returncode == 0, again.stderr[-3000:]

    store = Stores(tmp_path)
    states = [t.state for t in store.study().trials]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.COMPLETE]
    runs = {int(r.data.tags["optuna.trial_number"]): r for r in store.children()}
    assert runs[0].info.status == "FAILED" and runs[0].data.tags["optuna.state"] == "FAIL"
    assert "died" in runs[0].data.tags["runner.error"]
    assert all(runs[n].info.status == "FINISHED" for n in (1, 2))
    assert store.parent().info.status == "FINISHED"
    best = tmp_path / "mlruns" / "best"
    kept = json.loads((best / "tiny" / "trial.json").read_text())
    assert kept["trial"] == store.study().best_trial.number
    assert [p.name for p in best.iterdir()] == ["tiny"], "no staging folder left behind"


@pytest.mark.e2e
def test_sigterm_mid_epoch_to_two_workers_then_the_same_command_finishes(
    tmp_path, sweep_yaml, mrpc_dir, tiny_model, premade_mlflow_db
):
    """SIGTERM to a real ``--workers 2`` run mid-epoch: exit 130, nothing RUNNING, and the rerun reaches the total.

    The rerun is also the test of two real local workers (tests/test_launch.py has the rest of launching):
    output prefixed, cores split, one study run with every trial run under it, and the storage, given as
    a flag, which the workers get as $RUNNER_STORAGE: they must all use it.
    """
    import signal

    import optuna
    from conftest import Stores

    from runner.workers.launch import cpu_count

    command = _sweep_command(
        sweep_yaml, mrpc_dir, tiny_model, "--workers", "2", "--trials", "4", "--set", "search_space.num_train_epochs=3"
    )
    command.append("--storage=sqlite:///mlruns/shared.db")
    _run_until(command, tmp_path, "epoch 1/3", signal.SIGTERM)
    store = Stores(tmp_path)
    shared = f"sqlite:///{tmp_path / 'mlruns' / 'shared.db'}"
    first = optuna.load_study(study_name="tiny", storage=shared).trials
    assert first and all(t.state != optuna.trial.TrialState.RUNNING for t in first), "each worker recorded its stop"
    assert all(r.info.status != "RUNNING" for r in store.children())

    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=280)
    assert again.returncode == 0, again.stderr[-3000:]
    trials = optuna.load_study(study_name="tiny", storage=shared).trials
    finished = [t for t in trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(finished) == 4, "exactly the total, across both runs"
    assert len(trials) == len(first) + 4 - len([t for t in first if t in finished]), "no surplus trial was started"
    assert not (tmp_path / "mlruns" / "optuna.db").exists(), "every worker used the --storage flag's database"
    # Workers that start together must not propose the same parameters in lockstep.
    assert len({t.params["learning_rate"] for t in trials}) == len(trials)

    threads = max(1, cpu_count() // 2)
    assert f"{threads} torch thread(s) each" in again.stderr
    assert again.stderr.count(" started (pid ") == 2  # two workers, none of which launched more
    for index in (0, 1):
        assert f"[worker {index}] " in again.stderr
        assert f"this worker uses {threads} torch thread(s)" in again.stderr
    parent = store.parent()
    assert parent.info.status == "FINISHED"
    children = store.children()
    assert sorted(int(c.data.tags["optuna.trial_number"]) for c in children) == [t.number for t in trials]
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    assert all(c.info.status != "RUNNING" for c in children)
    import sqlite3

    for name in ("shared.db", "mlflow.db"):  # concurrent local writers: write-ahead logging on both stores
        with sqlite3.connect(tmp_path / "mlruns" / name) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.e2e
@pytest.mark.parametrize("case", ["no-such-model", "no-such-data"])
def test_a_bad_input_leaves_exactly_one_line_on_the_real_stderr(tmp_path, sweep_yaml, mrpc_dir, tiny_model, case):
    """In a real process (pytest's log capture cannot hide a line here): stderr is the error and nothing else."""
    model, data = (tmp_path / "no-such-model", mrpc_dir) if case == "no-such-model" else (tiny_model, tmp_path / "nope")
    command = _sweep_command(sweep_yaml, data, model, "--trials", "1")
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("runner.sweep: error: "), proc.stderr
    assert not (tmp_path / "mlruns").exists(), "nothing written"

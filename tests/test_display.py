"""The live display (runner.search.display): its ETA, its frames, the plain lines it leaves alone.

The end-to-end tests run a tiny sweep once under a real pseudo-terminal (the live display, then a
clean screen) and once piped (plain lines, no escape characters).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import optuna
import pytest
from conftest import SWEEP_YAML
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console

from runner.config import SweepConfig
from runner.search import progress as progress_module
from runner.search.confirm import JOB_ATTR, make_plan
from runner.search.display import SweepDisplay, duration, live_wanted
from runner.search.estimate import EPOCH_SECONDS_ATTR, Running, TrialTimes, eta_seconds
from runner.search.progress import Best, SweepProgress
from runner.search.watch import StudyWatch
from runner.workers.processes import Launcher

HIDE_CURSOR, SHOW_CURSOR = "\x1b[?25l", "\x1b[?25h"
T0 = dt.datetime(2026, 1, 1, 12, 0, 0)


def finished(epoch_seconds: list[float], total: float, lr: float = 1e-4) -> FrozenTrial:
    """A finished trial that took ``total`` seconds, ``epoch_seconds`` of them in its epochs."""
    return FrozenTrial(
        number=0,
        state=TrialState.COMPLETE,
        value=0.5,
        datetime_start=T0,
        datetime_complete=T0 + dt.timedelta(seconds=total),
        params={"learning_rate": lr},
        distributions={"learning_rate": FloatDistribution(1e-5, 1e-3, log=True)},
        user_attrs={EPOCH_SECONDS_ATTR: epoch_seconds, "precision": "fp32"},
        system_attrs={},
        intermediate_values={},
        trial_id=0,
    )


# --- the ETA arithmetic ------------------------------------------------------------------------------


def test_eta_is_unknown_until_something_was_timed():
    nothing = Running(params={}, precision="fp32", epochs=3)
    assert eta_seconds(TrialTimes(), not_started=4, running=[nothing]) is None
    assert duration(None) == "measuring..."


def test_eta_in_the_first_epoch_comes_from_the_step_rate():
    # 10 of 110 steps at 5 steps/s: 20 s left; a whole trial like it 22 s; two more such trials.
    first = Running(params={}, precision="fp32", epochs=None, steps_done=10, steps_total=110, steps_per_second=5.0)
    assert eta_seconds(TrialTimes(), not_started=2, running=[first]) == pytest.approx(2 * 22 + 20)


def test_eta_from_measured_trials_and_the_running_trials_own_epochs():
    # Two finished trials of 25 s, 20 s of them in epochs: typical trial 25 s, fixed part 5 s.
    times = TrialTimes.from_trials([finished([10.0, 10.0], 25.0), finished([9.0, 11.0], 25.0)])
    assert times.typical_trial_seconds() == 25.0 and times.fixed_seconds() == 5.0
    # The running trial timed one epoch of 12 s and has 2 of 3 left: 2 * 12 + 5 = 29 s.
    running = Running(params={"learning_rate": 1e-4}, precision="fp32", epochs=3, epoch_seconds=(12.0,))
    assert eta_seconds(times, not_started=3, running=[running]) == pytest.approx(3 * 25 + 29)
    assert eta_seconds(times, not_started=3, running=[running], workers=2) == pytest.approx((3 * 25 + 29) / 2)


def test_eta_before_the_running_trial_timed_an_epoch_uses_the_others_epochs():
    times = TrialTimes.from_trials([finished([10.0, 10.0], 25.0)])
    fresh = Running(params={"learning_rate": 1e-4}, precision="fp32", epochs=2)
    assert eta_seconds(times, not_started=0, running=[fresh]) == pytest.approx(2 * 10 + 5)


def test_durations_read_as_clock_times():
    assert [duration(s) for s in (0, 65, 3725)] == ["0:00", "1:05", "1:02:05"]


# --- the live view's frames ------------------------------------------------------------------------


def frame_text(render) -> str:
    console = Console(record=True, width=120, file=open(os.devnull, "w"))  # noqa: SIM115 - closed with console
    console.print(render())
    console.file.close()
    return console.export_text()


def test_sweep_display_shows_study_trial_step_bar_and_eta():
    display = SweepDisplay()
    display.attach(optuna.create_study(), lambda: TrialTimes.from_trials([finished([10.0, 10.0], 25.0)]))
    progress = SweepProgress(3, 1, "eval_f1", True, view=display)
    progress.best = Best(0.81, 0)
    progress.trial_started(1, {"learning_rate": 3e-5, "num_train_epochs": 2})
    progress.step(1, 0.25, 5, 40)
    progress.step(1, 0.5, 10, 40)  # the same call a moment later: a rate
    progress.epoch(1, 1, 2, {"eval_f1": 0.8, "eval_accuracy": 0.7, "eval_loss": 0.5})
    text = frame_text(display.render)
    assert "trials 1/3 done" in text
    assert re.search(r"ETA \d+:\d\d", text), text
    assert "best eval_f1=0.8100, trial 0" in text
    assert "trial 1: learning_rate=3e-05, num_train_epochs=2" in text
    assert "epoch 2/2" in text and "step 10/40" in text
    assert "last epoch (1): f1=0.8000 accuracy=0.7000 loss=0.5000" in text


def test_sweep_display_shows_the_best_trials_interval():
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    trial.set_user_attr("intervals", {"eval_f1": [0.7, 0.9]})
    display = SweepDisplay()
    display.attach(study)
    progress = SweepProgress(2, 0, "eval_f1", True, view=display)
    progress.trial_started(trial.number, {})
    progress.trial_finished(trial.number, "COMPLETE", 0.8)
    text = frame_text(display.render)
    assert "trials 1/2 done" in text and "best eval_f1=0.8000 (0.700-0.900), trial 0" in text


def test_the_confirmation_stage_shows_its_leading_mean_not_a_runs_interval():
    study = optuna.create_study(direction="maximize")
    trial = study.ask()  # confirmation 0, with its own interval: not what a configuration's mean shows
    trial.set_user_attr("intervals", {"eval_f1": [0.7, 0.9]})
    display = SweepDisplay()
    display.attach(study)
    leader = Best(0.85, 0, runs=3, sd=0.01)  # search trial 0's configuration, over 3 runs
    progress = SweepProgress(4, 0, "eval_f1", True, kind="confirmation", view=display, best_now=lambda p: leader)
    progress.trial_started(trial.number, {"repeats trial": 0, "seed": 8})
    progress.trial_finished(trial.number, "COMPLETE", 0.8)
    text = frame_text(display.render)
    assert "confirmation runs 1/4 done" in text
    assert "leading eval_f1=0.8500 ± 0.0100 over 3 runs of trial 0" in text
    assert "0.700" not in text and "best eval_f1" not in text


def test_step_lines_stay_every_30_s_while_the_view_gets_every_step(monkeypatch, caplog):
    now = [0.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: now[0])
    seen = []

    class Recorder:
        def step(self, progress, number, epoch, step, steps):
            seen.append(step)

    progress = SweepProgress(1, 0, "eval_f1", True)
    progress.view = Recorder()
    with caplog.at_level(logging.INFO, logger="runner"):
        for step, at in ((1, 0.5), (2, 1.0), (3, 31.0), (4, 31.5), (5, 62.0)):
            now[0] = at
            progress.step(0, step / 10, step, 10)
    assert seen == [1, 2, 3, 4, 5]
    assert [r.getMessage() for r in caplog.records] == ["trial 0 epoch 0.30 step 3/10", "trial 0 epoch 0.50 step 5/10"]


def test_the_display_needs_a_terminal_and_no_quiet(tmp_path, monkeypatch):
    monkeypatch.setenv("TERM", "xterm")
    with open(tmp_path / "file", "w") as not_a_tty:
        assert not live_wanted(stream=not_a_tty)
    master, slave = os.openpty()
    with os.fdopen(slave, "w") as tty:
        assert live_wanted(stream=tty)
        assert not live_wanted(quiet=True, stream=tty)
    os.close(master)


# --- --workers K: the launcher's view and its log files -------------------------------------------


def test_study_watch_reads_running_trials_and_best_from_the_storage(tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    cfg = SweepConfig.model_validate({"study": {"name": "w", "n_trials": 4, "storage": url}})
    watch = StudyWatch(cfg, workers=2)
    assert "waiting for the workers" in frame_text(watch.read)  # no database yet, and none made by looking
    assert not (tmp_path / "optuna.db").exists()
    study = optuna.create_study(study_name="w", storage=url, direction="maximize")
    done = study.ask({"learning_rate": FloatDistribution(1e-5, 1e-3, log=True)})
    done.set_user_attr(EPOCH_SECONDS_ATTR, [4.0, 4.0])
    done.set_user_attr("intervals", {"eval_f1": [0.6, 0.8]})
    study.tell(done, 0.7)
    running = study.ask({"learning_rate": FloatDistribution(1e-5, 1e-3, log=True)})
    running.set_user_attr(EPOCH_SECONDS_ATTR, [5.0])
    running.set_user_attr("epochs_run", 1)
    running.set_user_attr("worker", {"host": "h", "pid": 123})
    text = frame_text(watch.read)
    assert "trials 1/4 done" in text and "best eval_f1=0.7000 (0.600-0.800), trial 0" in text
    assert re.search(r"ETA \d+:\d\d", text), text
    assert "trial 1 (pid 123): epoch 1/" in text


def test_study_watch_shows_the_confirmation_stages_leading_configuration(tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    cfg = SweepConfig.model_validate(
        {"study": {"name": "w", "n_trials": 2, "storage": url, "confirm": {"top_k": 2, "seeds": 2}}}
    )
    search = optuna.create_study(study_name="w", storage=url, direction="maximize")
    space = {"learning_rate": FloatDistribution(1e-6, 1e-3)}
    for lr, value in ((1e-5, 0.90), (2e-5, 0.85)):  # trial 0 ran lucky
        search.add_trial(optuna.trial.create_trial(params={"learning_rate": lr}, distributions=space, value=value))
    confirm = optuna.create_study(study_name="w.confirm", storage=url, direction="maximize")
    plan = make_plan(search, confirm, cfg)
    rerun = confirm.ask()
    rerun.set_user_attr(JOB_ATTR, plan[0].to_attr())
    confirm.tell(rerun, 0.60)  # trial 0's configuration: 0.75 on the mean, behind trial 1's 0.85
    text = frame_text(StudyWatch(cfg, workers=2).read)
    assert "confirmation runs 1/4 done" in text
    assert "leading eval_f1=0.8500 ± 0.0000 over 1 run of trial 1" in text


def test_watched_launcher_keeps_worker_lines_in_log_files_and_prints_results_once(tmp_path, capfd):
    calls = []

    class Watch:
        def start(self, log_dir):
            calls.append(("start", log_dir))

        def tick(self):
            calls.append("tick")

        def stop(self):
            calls.append("stop")

    script = "import sys, time; print('summary of', sys.argv[1]); print('progress', file=sys.stderr); "
    commands = [[sys.executable, "-c", script + "time.sleep(0.5)", "first"], [sys.executable, "-c", script, "second"]]
    code = Launcher(commands, [{}, {}], watch=Watch(), log_dir=tmp_path).run()
    out, err = capfd.readouterr()
    assert code == 0
    assert calls[0] == ("start", str(tmp_path)) and "tick" in calls and calls[-1] == "stop"
    assert out == "summary of first\n"  # the last worker to end well; once, unprefixed
    assert "progress" not in err
    for index, name in enumerate(("first", "second")):
        lines = (tmp_path / f"worker-{index}.log").read_text().splitlines()
        assert sorted(lines) == [f"[worker {index}] progress", f"[worker {index}] summary of {name}"]


def test_watched_launcher_names_a_failed_workers_error_and_log(tmp_path, caplog):
    class Watch:
        start = tick = stop = lambda self, *args: None

    command = [sys.executable, "-c", "import sys; print('working', file=sys.stderr); sys.exit('boom: disk full')"]
    with caplog.at_level(logging.WARNING, logger="runner"):
        code = Launcher([command], [{}], watch=Watch(), log_dir=tmp_path).run()
    assert code == 1
    assert f"worker 0: boom: disk full (all its lines: {tmp_path}/worker-0.log)" in caplog.text


# --- end to end: a real terminal, and a pipe --------------------------------------------------------


def sweep_command(folder: Path, tiny_model: Path, mrpc_dir: Path) -> list[str]:
    config = folder / "tiny.yaml"
    config.write_text(SWEEP_YAML, encoding="utf-8")
    return [
        *(sys.executable, "-m", "runner.sweep", "--config", str(config)),
        *("--model", str(tiny_model), "--data-dir", str(mrpc_dir), "--no-system-metrics"),
    ]


def sweep_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "COLUMNS", "LINES")}
    return {**env, "TERM": "xterm-256color", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def run_in_terminal(command: list[str], cwd: Path, timeout: float = 180) -> tuple[int, str, str]:
    """Run ``command`` with stdin and stderr on a 120x40 pseudo-terminal; (exit code, terminal text, stdout)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(command, cwd=cwd, env=sweep_env(), stdin=slave, stderr=slave, stdout=subprocess.PIPE)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every end of the terminal closed
                break
            if not data:
                break
            chunks.append(data)
        out = proc.stdout.read().decode()
        code = proc.wait(timeout=10)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return code, b"".join(chunks).decode(errors="replace"), out


@pytest.fixture(scope="module")
def both_sweeps(tmp_path_factory, tiny_model, mrpc_dir):
    """The same tiny sweep (2 trials), at once in two folders: piped, and on a terminal."""
    piped_dir, tty_dir = tmp_path_factory.mktemp("piped"), tmp_path_factory.mktemp("tty")
    piped = subprocess.Popen(
        sweep_command(piped_dir, tiny_model, mrpc_dir),
        cwd=piped_dir,
        env=sweep_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        terminal = run_in_terminal(sweep_command(tty_dir, tiny_model, mrpc_dir), tty_dir)
        out, err = piped.communicate(timeout=180)
    finally:
        if piped.poll() is None:
            piped.kill()
    return {"terminal": terminal, "piped": (piped.returncode, out, err)}


@pytest.mark.e2e
def test_in_a_terminal_the_sweep_shows_the_live_display_and_leaves_a_clean_screen(both_sweeps):
    code, screen, out = both_sweeps["terminal"]
    assert code == 0, screen[-2000:]
    assert HIDE_CURSOR in screen, "no live display"
    # While trial 1 ran, trial 0 had been timed: a frame with a real ETA.
    assert re.search(r"trials 1/2 done \| elapsed \d+:\d\d \| ETA \d+:\d\d", screen), screen[-3000:]
    assert "trials 2/2 done" in screen  # the final frame, left on screen
    # A clean end: the cursor is shown again after it was last hidden, and nothing redraws after that.
    assert screen.rindex(SHOW_CURSOR) > screen.rindex(HIDE_CURSOR)
    after = screen[screen.rindex(SHOW_CURSOR) + len(SHOW_CURSOR) :]
    assert "\x1b[1A" not in after and "\x1b[2K" not in after, repr(after)
    # The log lines were printed above the display, and the summary went to stdout after it.
    assert "trial 1 COMPLETE" in screen and "search best: trial" in out


@pytest.mark.e2e
def test_piped_the_sweep_prints_plain_lines_without_escape_characters(both_sweeps):
    code, out, err = both_sweeps["piped"]
    assert code == 0, err[-2000:]
    assert "\x1b" not in err and "\x1b" not in out and "\r" not in err
    assert re.search(r"^\d\d:\d\d:\d\d trial 0 epoch 1/\d: f1=", err, re.MULTILINE), err
    assert re.search(r"^\d\d:\d\d:\d\d trial 1 COMPLETE eval_f1=[\d.]+ \[2/2 done\]", err, re.MULTILINE), err
    assert "ETA" not in err and "search best: trial" in out


# --- --quiet and --verbose --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "info", "debug"), [([], True, False), (["--quiet"], False, False), (["--verbose"], True, True)]
)
def test_quiet_and_verbose_set_runners_log_level(flags, info, debug):
    from runner.cli import log_level, setup_logging
    from runner.sweep import build_parser

    try:
        setup_logging(log_level(build_parser().parse_args(flags)))
        runner_log = logging.getLogger("runner.search.objective")
        assert (runner_log.isEnabledFor(logging.INFO), runner_log.isEnabledFor(logging.DEBUG)) == (info, debug)
        assert runner_log.isEnabledFor(logging.WARNING)
    finally:
        setup_logging()  # the next test's level


def test_quiet_and_verbose_exclude_each_other(capsys):
    from runner.sweep import build_parser

    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(["--quiet", "--verbose"])
    assert stopped.value.code == 2 and "not allowed with" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["sweep", "export", "report", "predict"])
@pytest.mark.parametrize(("flag", "level"), [("--quiet", logging.WARNING), ("--verbose", logging.DEBUG)])
def test_every_command_that_logs_takes_quiet_and_verbose(command, flag, level, monkeypatch):
    """Each command's main hands the level its flag asks for to the logging setup, before any work."""
    import importlib

    from runner import cli

    class LoggingSetUp(Exception):
        """Raised by the stand-in for setup_logging: the command stops right there."""

    def record(level: int = logging.INFO) -> None:
        raise LoggingSetUp(level)

    monkeypatch.setattr(cli, "setup_logging", record)
    required = {"sweep": [], "export": ["--study", "s"], "report": ["--study", "s"], "predict": ["--model", "m"]}
    with pytest.raises(LoggingSetUp) as set_up:
        importlib.import_module(f"runner.{command}").main([*required[command], flag])
    assert set_up.value.args[0] == level

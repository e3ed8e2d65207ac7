"""Process safety (issue 14, items 4, 5, 11, 13): no fork bomb from a shortened --workers, no password
on a worker's command line, workers that stop with their launcher, and no judging another machine's
workers by a shared hostname.

The launcher tests start real processes: tiny Python children under a real Launcher, itself a
subprocess where the launcher has to die. Every process group they start is killed in ``finally``.
"""

from __future__ import annotations

import importlib
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

import runner.workers.processes as processes
from runner.sweep import build_parser, resolve_config
from runner.workers import worker

REPO = Path(__file__).resolve().parents[1]
DEAD_PID = 2**22 + 12345  # above Linux's highest pid_max: no process has it
# The environment variables are part of the interface (README): spelled out, not imported.
WORKER_ENV, STORAGE_ENV = "RUNNER_WORKER_INDEX", "RUNNER_STORAGE"
MACHINE_ID_FILES, BOOT_ID_FILE = ("/etc/machine-id", "/var/lib/dbus/machine-id"), "/proc/sys/kernel/random/boot_id"


# --- item 5: a shortened --workers flag is a fork bomb ---------------------------------------------


@pytest.mark.parametrize("module", ["sweep", "export", "predict", "report", "ui"])
def test_no_parser_accepts_a_shortened_flag(module, capsys):
    """Every long flag, cut short by one letter, is an error (argparse would take it for the full flag)."""
    parser = importlib.import_module(f"runner.{module}").build_parser()
    flags = [s for a in parser._actions for s in a.option_strings if s.startswith("--") and s != "--help"]
    assert flags
    for flag in flags:
        short = flag[:-1]
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args([short, "1"])
        assert exit_.value.code == 2, short


def test_a_shortened_workers_flag_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["--trials", "1", "--worker", "2"])
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("runner.sweep: error: unrecognized arguments: --worker 2"), lines


def test_a_worker_may_not_launch_workers(run_sweep, tmp_path, monkeypatch, no_launcher):
    """A --workers flag that reaches a worker anyway is a one-line error, not K more processes."""
    monkeypatch.setenv(WORKER_ENV, "0")
    result = run_sweep("--trials", "1", "--workers", "2")
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("runner.sweep: error: --workers"), result.err
    assert no_launcher == []
    assert not (tmp_path / "mlruns").exists()


def test_each_worker_is_marked_and_gets_no_workers_flag(run_sweep, tmp_path, no_launcher):
    assert run_sweep("--trials", "1", "--workers=3").code == 0
    ((commands, envs),) = no_launcher
    assert len(commands) == 3
    assert [env[WORKER_ENV] for env in envs] == ["0", "1", "2"]
    for command in commands:
        assert not any(arg.startswith("--workers") for arg in command), command
        # What the worker runs parses, and runs one worker.
        assert build_parser().parse_args(command[3:]).workers is None


# --- item 4: passwords visible to ps --------------------------------------------------------------


STORAGE, TRACKING = "sqlite:///mlruns/sentinel-storage.db", "sqlite:///mlruns/sentinel-tracking.db"


@pytest.mark.parametrize(
    "flags",
    [["--storage", STORAGE, "--tracking-uri", TRACKING], [f"--storage={STORAGE}", f"--tracking-uri={TRACKING}"]],
    ids=["separate", "joined"],
)
def test_workers_get_storage_and_tracking_uri_in_their_environment(run_sweep, no_launcher, flags):
    """A worker's command line (which ps shows to every user) holds no storage URL or tracking URI."""
    assert run_sweep("--trials", "1", "--workers", "2", *flags).code == 0
    ((commands, envs),) = no_launcher
    for command, env in zip(commands, envs, strict=True):
        assert not any("sentinel" in arg or arg.startswith(("--storage", "--tracking-uri")) for arg in command)
        assert env[STORAGE_ENV] == STORAGE and env["MLFLOW_TRACKING_URI"] == TRACKING


def test_runner_storage_is_the_storage_unless_the_flag_says_otherwise(tmp_path, monkeypatch, sweep_yaml):
    """Config file < $RUNNER_STORAGE < --storage < --set: a worker given only the variable uses it."""
    config = tmp_path / "with-storage.yaml"
    config.write_text(
        sweep_yaml.read_text(encoding="utf-8").replace(
            "  name: tiny\n", "  name: tiny\n  storage: sqlite:///file.db\n"
        ),
        encoding="utf-8",
    )

    def storage(*flags: str) -> str:
        return resolve_config(build_parser().parse_args(["--config", str(config), *flags])).study.storage

    monkeypatch.delenv(STORAGE_ENV, raising=False)
    assert storage() == "sqlite:///file.db"
    monkeypatch.setenv(STORAGE_ENV, "sqlite:///env.db")
    assert storage() == "sqlite:///env.db"
    assert storage("--storage", "sqlite:///flag.db") == "sqlite:///flag.db"
    assert storage("--set", "study.storage=sqlite:///set.db") == "sqlite:///set.db"


# --- item 11: workers survive their launcher -------------------------------------------------------

# A worker as the launcher sees one: says it is ready (with its pid), stops cleanly on SIGTERM, else
# ends by itself after a while (long enough to outlast every wait below).
CHILD = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *a: (print("stopping cleanly", flush=True), sys.exit(130)))
print("ready", os.getpid(), flush=True)
time.sleep(120)
"""
# A launcher of its own process, for the tests that signal or kill it: argv[1] workers running argv[2].
LAUNCHER = """
import sys
from runner.workers.processes import Launcher
n = int(sys.argv[1])
sys.exit(Launcher([[sys.executable, "-c", sys.argv[2]]] * n, [{}] * n).run())
"""


class LauncherProcess:
    """``python -c LAUNCHER`` in a session of its own, its output read line by line in the background."""

    def __init__(self, workers: int, child: str = CHILD):
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, str(workers), child],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.workers: list[psutil.Process] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_ready(self, workers: int) -> None:
        """Until ``workers`` workers said they are ready (each is remembered, to be killed in the end)."""
        while len(self.workers) < workers:
            line = self.lines.get(timeout=60)
            self.seen.append(line)
            if "] ready " in line:
                self.workers.append(psutil.Process(int(line.split()[-1])))

    def output(self) -> str:
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return "".join(self.seen)

    def kill_all(self) -> None:
        for proc in [self.proc, *self.workers]:
            try:
                if proc.pid == self.proc.pid or proc.is_running():
                    os.killpg(proc.pid, signal.SIGKILL)  # each one leads a session (and group) of its own
            except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
                pass
        self.proc.wait()


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(processes: list[psutil.Process], within: float = 15) -> list[psutil.Process]:
    """The processes still alive after waiting up to ``within`` seconds for them all to end."""
    deadline = time.monotonic() + within
    while any(alive(p) for p in processes) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [p for p in processes if alive(p)]


@pytest.mark.e2e
def test_sighup_is_passed_on_and_the_workers_stop_cleanly():
    """The terminal closes: each worker gets SIGTERM (its clean stop), and the launcher waits for them."""
    launcher = LauncherProcess(2)
    try:
        launcher.wait_ready(2)
        launcher.proc.send_signal(signal.SIGHUP)
        assert launcher.proc.wait(timeout=30) == 130
        out = launcher.output()
        assert "[worker 0] stopping cleanly" in out and "[worker 1] stopping cleanly" in out, out
        assert wait_gone(launcher.workers) == []
    finally:
        launcher.kill_all()


@pytest.mark.e2e
def test_workers_end_when_their_launcher_is_killed():
    """SIGKILL to the launcher (nothing it can pass on): the kernel stops its workers."""
    launcher = LauncherProcess(2)
    try:
        launcher.wait_ready(2)
        launcher.proc.kill()
        launcher.proc.wait(timeout=30)
        assert wait_gone(launcher.workers) == [], "workers outlived their launcher"
    finally:
        launcher.kill_all()


def test_a_stop_while_workers_start_reaches_the_started_and_starts_no_more(monkeypatch):
    """SIGTERM while worker 0 is being started (before the launcher holds it): it reaches worker 0,
    and workers 1 and 2 never start."""
    popen = subprocess.Popen
    started: list[subprocess.Popen] = []

    def popen_then_sigterm(*args, **kwargs):
        proc = popen(*args, **kwargs)
        started.append(proc)
        if len(started) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs now, before Popen returns
        return proc

    monkeypatch.setattr(subprocess, "Popen", popen_then_sigterm)
    child = CHILD.replace("sleep(120)", "sleep(15)")  # today's code waits for it: fail, but not slowly
    launcher = processes.Launcher([[sys.executable, "-c", child]] * 3, [{}] * 3)
    try:
        code = launcher.run()
    finally:
        for proc in started:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert len(started) == 1 and launcher.procs == started
    # Stopped by the signal: its clean stop (130), or SIGTERM itself if it came before Python set a handler.
    assert started[0].returncode in (130, -signal.SIGTERM)
    assert code == 130


# --- item 13: two hosts with the same hostname -----------------------------------------------------


def dead_worker(**ids: str) -> dict[str, object]:
    """The record of a worker of this hostname whose process is gone."""
    return {"host": socket.gethostname(), **ids, "pid": DEAD_PID, "started": 0.0}


def this_machine() -> dict[str, str]:
    """This system's machine and boot ids, read here as the systemd and kernel documentation say."""
    ids = {}
    for key, paths in (("machine", MACHINE_ID_FILES), ("boot", [BOOT_ID_FILE])):
        found = [Path(p).read_text(encoding="ascii").strip() for p in paths if Path(p).is_file()]
        if found and found[0]:
            ids[key] = found[0]
    return ids


def test_a_worker_records_this_machine_and_boot():
    record = worker.current()
    assert record["host"] == socket.gethostname() and record["pid"] == os.getpid()
    assert {key: record[key] for key in ("machine", "boot") if key in record} == this_machine()


def test_a_dead_worker_is_dead_only_on_this_machine_since_this_boot():
    here = this_machine()
    if here.keys() != {"machine", "boot"}:
        pytest.skip("this system has no machine id or no boot id")
    assert worker.is_dead(dead_worker(**here))
    assert worker.is_dead(dead_worker())  # a record from an older study: the hostname decides, as before
    assert not worker.is_dead(dead_worker(machine="0" * 32, boot=here["boot"]))  # another machine, same name
    assert not worker.is_dead(dead_worker(machine=here["machine"], boot="0" * 32))  # cloned id, or before a reboot


def test_without_machine_ids_a_worker_is_judged_by_hostname_alone(monkeypatch, tmp_path):
    """A system without the id files: nothing recorded, nothing compared; a record that has ids is not ours."""
    missing = str(tmp_path / "missing")
    monkeypatch.setattr(worker, "MACHINE_ID_FILES", (missing,))
    monkeypatch.setattr(worker, "BOOT_ID_FILE", missing)
    assert "machine" not in worker.current() and "boot" not in worker.current()
    assert worker.is_dead(dead_worker())
    assert not worker.is_dead(dead_worker(machine="0" * 32))

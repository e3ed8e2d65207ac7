"""`runner.sweep --workers K`: the split of cores and GPUs, signal forwarding, and two real local workers."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import runner.workers.launch as launch
from runner.training.model import count_parameters
from runner.workers.launch import auto_workers, worker_commands, worker_env
from runner.workers.processes import Launcher

REPO = Path(__file__).resolve().parents[1]


def test_cpu_cores_are_split_between_workers():
    assert worker_env(0, 2, cores=2, gpus=[])["OMP_NUM_THREADS"] == "1"
    assert worker_env(1, 2, cores=16, gpus=[])["RUNNER_TORCH_THREADS"] == "8"
    assert worker_env(1, 3, cores=16, gpus=[])["RUNNER_LOCAL_WORKERS"] == "3"  # recorded on each trial's run
    assert worker_env(2, 3, cores=2, gpus=[])["OMP_NUM_THREADS"] == "1"  # never 0
    assert "CUDA_VISIBLE_DEVICES" not in worker_env(0, 2, cores=2, gpus=[])


def test_one_gpu_per_worker():
    assert [worker_env(i, 3, cores=8, gpus=["0", "1", "2"])["CUDA_VISIBLE_DEVICES"] for i in range(3)] == [
        "0",
        "1",
        "2",
    ]
    assert [worker_env(i, 3, cores=8, gpus=["4", "7"])["CUDA_VISIBLE_DEVICES"] for i in range(3)] == ["4", "7", "4"]


# --- --workers auto ----------------------------------------------------------------------------------

MINILM, BERT_BASE = 22_713_986, 109_483_778  # with a 2-class head


@pytest.mark.parametrize(
    ("cores", "gpus", "params", "trials", "expected"),
    [
        (2, [], MINILM, 20, 2),  # the measured case: two single-thread workers finish more trials per hour
        (16, [], MINILM, 20, 2),
        (2, [], BERT_BASE, 20, 1),  # not measured for a larger model: every core to one worker
        (1, [], MINILM, 20, 1),
        (2, [], MINILM, 1, 1),  # never more workers than trials
        (16, ["0", "1", "2"], BERT_BASE, 20, 3),  # one per GPU
        (16, ["0", "1", "2"], BERT_BASE, 2, 2),
    ],
)
def test_workers_auto_chooses_from_the_machine_and_the_model(cores, gpus, params, trials, expected):
    workers, note = auto_workers(cores, gpus, params, trials)
    assert workers == expected
    assert note.startswith(f"{expected} worker(s) (") and note.endswith("--workers auto)")


def test_parameters_are_counted_from_the_config_without_loading_weights(tiny_model):
    from transformers import AutoModelForSequenceClassification

    loaded = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2)
    assert count_parameters(str(tiny_model)) == loaded.num_parameters() > 0


def test_workers_auto_launches_two_on_two_cores_for_a_small_model(run_sweep, no_launcher, monkeypatch):
    monkeypatch.setattr(launch, "cpu_count", lambda: 2)
    monkeypatch.setattr(launch, "visible_gpus", list)
    assert run_sweep("--trials", "4", "--workers", "auto").code == 0
    ((commands, envs),) = no_launcher
    assert len(commands) == 2 and [env["OMP_NUM_THREADS"] for env in envs] == ["1", "1"]
    assert all(not any(arg.startswith("--workers") for arg in command) for command in commands)
    # Each worker is told why, for its summary.
    assert all(env["RUNNER_WORKERS_AUTO"].startswith("2 worker(s) (2 CPU cores and a ") for env in envs)


def test_workers_auto_on_one_core_runs_in_process_and_says_why(run_sweep, no_launcher, monkeypatch):
    monkeypatch.setattr(launch, "cpu_count", lambda: 1)
    monkeypatch.setattr(launch, "visible_gpus", list)
    result = run_sweep("--trials", "1", "--workers", "auto")
    assert result.code == 0, result.err
    assert no_launcher == []
    assert "ran as: 1 worker(s) (1 CPU core; --workers auto)" in result.out


def test_a_worker_of_workers_auto_says_in_its_summary_what_was_chosen(run_sweep, monkeypatch):
    monkeypatch.setenv("RUNNER_WORKER_INDEX", "0")
    monkeypatch.setenv("RUNNER_WORKERS_AUTO", "2 worker(s) (chosen here; --workers auto)")
    result = run_sweep("--trials", "1")
    assert result.code == 0, result.err
    assert "ran as: 2 worker(s) (chosen here; --workers auto)" in result.out


def test_workers_flag_is_not_passed_on():
    argv = ["--trials", "4", "--workers", "2", "--study", "s", "--workers=3", "--set", "study.name=--workers"]
    commands, _ = worker_commands(argv, 2, cores=2, gpus=[])
    expected = ["--trials", "4", "--study", "s", "--set", "study.name=--workers"]
    assert commands == [[sys.executable, "-m", "runner.sweep", *expected]] * 2


CHILD = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *a: (print("stopping cleanly", flush=True), sys.exit(130)))
print("ready", flush=True)
time.sleep(60)
"""


class ReadyWatch(io.TextIOBase):
    """A stdout for the launcher's relay: keeps what is written, and tells when ``workers`` workers said ready."""

    def __init__(self, workers: int):
        super().__init__()
        self.text = ""
        self.workers = workers
        self.all_ready = threading.Event()

    def write(self, text: str) -> int:
        self.text += text
        if self.text.count("] ready\n") >= self.workers:
            self.all_ready.set()
        return len(text)


def kill_groups(procs: list[subprocess.Popen]) -> None:
    """SIGKILL each process group (a launcher starts each worker in a session of its own), then reap."""
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run_in_own_group(command: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run`` in a process group of its own, which is killed in the end, even on a timeout.

    A launcher's workers, in sessions of their own, get SIGTERM from the kernel when it dies.
    """
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        kill_groups([proc])
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def test_sigterm_is_forwarded_to_every_worker(monkeypatch):
    """SIGTERM to the launcher reaches each worker; the launcher waits for them and exits 130."""
    out = ReadyWatch(workers=2)
    monkeypatch.setattr(sys, "stdout", out)  # where the launcher relays the workers' lines
    launcher = Launcher([[sys.executable, "-c", CHILD]] * 2, [{}, {}])

    def terminate_when_ready():
        # The signal goes to this process, pytest itself: only once both workers run, so the launcher's
        # handler is in place. Workers that never get ready are killed instead, and the test fails.
        if out.all_ready.wait(60):
            os.kill(os.getpid(), signal.SIGTERM)
        else:
            kill_groups(launcher.procs)

    threading.Thread(target=terminate_when_ready, daemon=True).start()
    try:
        code = launcher.run()
    finally:
        kill_groups(launcher.procs)
    assert code == 130
    assert [p.returncode for p in launcher.procs] == [130, 130]
    assert "[worker 0] stopping cleanly" in out.text and "[worker 1] stopping cleanly" in out.text, out.text


def test_a_failing_worker_makes_the_launcher_fail():
    launcher = Launcher(
        [[sys.executable, "-c", "raise SystemExit(0)"], [sys.executable, "-c", "raise SystemExit(1)"]], [{}, {}]
    )
    assert launcher.run() == 1


# Two real local workers (exact total, one study run, output prefixed, cores split, the storage flag passed
# on) are checked on the rerun in tests/test_promises.py's SIGTERM-to-two-workers test: one pair of worker
# processes for both promises.


@pytest.mark.parametrize(
    "flags", [["--workers", "0"], ["--workers", "two"], ["--workers", "Auto"], ["--retry-failed", "-1"]]
)
def test_bad_counts_are_one_line_errors(run_sweep, tmp_path, flags):
    result = run_sweep("--trials", "1", *flags)
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("runner.sweep: error: --"), result.err
    assert not (tmp_path / "mlruns").exists()


def test_workers_need_a_shared_storage(run_sweep, tmp_path):
    result = run_sweep("--trials", "1", "--workers", "2", "--storage", "sqlite:///:memory:")
    assert result.code == 2 and "--workers needs a storage the workers share" in result.err
    assert len(result.err.strip().splitlines()) == 1

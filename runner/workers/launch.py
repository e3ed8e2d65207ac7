"""``runner.sweep --workers K``: K local worker processes on one study, sharing the machine fairly.

Each worker is the same ``runner.sweep`` command without ``--workers``; they meet in
the study's storage, which keeps their total exact (see runner.workers.scheduler). With GPUs,
worker i sees one GPU (``CUDA_VISIBLE_DEVICES``); on CPU the cores are split, because
torch processes that each spin one thread per core slow each other down many times over.

Safety: a worker is marked (``RUNNER_WORKER_INDEX``) and may not launch workers of its own, so
a ``--workers`` flag that reaches it anyway cannot multiply processes. The storage URL and
tracking URI reach the workers through their environment, not their command line, where ``ps``
would show any password in them to every user. Workers die with the launcher (Linux), and a
stop signal reaches every worker, including one that was starting when the signal came.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO

log = logging.getLogger("runner")

THREADS_ENV = "RUNNER_TORCH_THREADS"  # set by the launcher; the worker applies it to torch
WORKER_ENV = "RUNNER_WORKER_INDEX"  # set by the launcher: this process is a worker, it may not launch workers
STORAGE_ENV = "RUNNER_STORAGE"  # the Optuna storage URL, as --storage (which wins over it)
# Flags whose value may hold a password: the workers get it in this environment variable instead.
FLAGS_TO_ENV = {"--storage": STORAGE_ENV, "--tracking-uri": "MLFLOW_TRACKING_URI"}
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def cpu_count() -> int:
    """Cores this process may use (its affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def visible_gpus() -> list[str]:
    """GPU ids the workers may use: ``CUDA_VISIBLE_DEVICES`` when set, else every CUDA device."""
    declared = os.environ.get("CUDA_VISIBLE_DEVICES")
    if declared is not None:
        return [d.strip() for d in declared.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import torch
    except ImportError:
        return []
    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def worker_env(index: int, workers: int, cores: int, gpus: Sequence[str]) -> dict[str, str]:
    """Environment additions for worker ``index`` of ``workers``: its GPU, or its share of the cores."""
    threads = max(1, cores // workers)
    env = {
        WORKER_ENV: str(index),
        THREADS_ENV: str(threads),
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
    }
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    return env


def apply_thread_limit() -> None:
    """In a worker: use the launcher's share of the cores for torch's intra-op threads."""
    threads = os.environ.get(THREADS_ENV)
    if threads and threads.isdigit() and int(threads) > 0:
        import torch

        torch.set_num_threads(int(threads))
        log.info("this worker uses %d torch thread(s)", torch.get_num_threads())


def split_flags(argv: Sequence[str], flags: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """``argv`` without each of ``flags`` (``--flag V`` or ``--flag=V``), and the value given for each.

    ``argv`` is one that argparse accepted with abbreviations off, so a token spelled as one of
    ``flags`` is that flag, never another flag's value; a repeated flag keeps its last value, as in argparse.
    """
    out: list[str] = []
    values: dict[str, str] = {}
    pending = None
    for arg in argv:
        if pending is not None:
            values[pending], pending = arg, None
            continue
        name, equals, value = arg.partition("=")
        if name in flags:
            if equals:
                values[name] = value
            else:
                pending = name
            continue
        out.append(arg)
    return out, values


def strip_workers_flag(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--workers K`` / ``--workers=K``: what each worker runs."""
    return split_flags(argv, ["--workers"])[0]


def worker_commands(
    argv: Sequence[str], workers: int, cores: int, gpus: Sequence[str]
) -> tuple[list[list[str]], list[dict[str, str]]]:
    """The command and environment additions of each of ``workers`` copies of ``runner.sweep ARGV``.

    The command has no ``--workers`` and no secret-bearing flag: their values go in the environment.
    """
    rest, values = split_flags(argv, ["--workers", *FLAGS_TO_ENV])
    passed = {FLAGS_TO_ENV[flag]: value for flag, value in values.items() if flag in FLAGS_TO_ENV}
    command = [sys.executable, "-m", "runner.sweep", *rest]
    return [command] * workers, [{**worker_env(i, workers, cores, gpus), **passed} for i in range(workers)]


def die_with_parent():
    """A ``preexec_fn`` that has the kernel send the child SIGTERM when its parent dies (Linux), else None.

    Without it, a launcher killed with SIGKILL (or by the OOM killer) leaves its workers running, unseen,
    in sessions of their own. The kernel watches the thread that started the child: run the launcher
    from the main thread. ctypes is loaded here, before the fork, not in the child.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        log.warning("no prctl here: workers will outlive a launcher that is killed with SIGKILL")
        return None
    parent, sigterm = os.getpid(), int(signal.SIGTERM)

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, sigterm)
        if os.getppid() != parent:  # the launcher died before prctl: no one is left to send the signal
            os.kill(os.getpid(), sigterm)

    return preexec


class Launcher:
    """Start worker processes, relay their output with a prefix, forward signals, wait.

    SIGINT, SIGTERM and SIGHUP are passed on to every worker; SIGHUP (the terminal closed) goes on as
    SIGTERM, the signal workers stop cleanly on. A stop that comes while workers are starting
    reaches those already started, and no further worker starts.
    """

    def __init__(self, commands: Sequence[Sequence[str]], envs: Sequence[dict[str, str]]):
        self.commands, self.envs = [list(c) for c in commands], list(envs)
        self.procs: list[subprocess.Popen] = []
        self.interrupted = False
        self._write = threading.Lock()
        # Signals to pass on, in order, and how many of them each worker got. The handler only appends;
        # the main loop sends (_deliver), so a signal that lands mid-Popen, before the new worker is in
        # self.procs, still reaches it, and none is sent twice.
        self._signals: list[tuple[int, int]] = []
        self._sent: list[int] = []

    def run(self) -> int:
        """Run every worker to its end; the exit code is 0 only when every worker's is."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in FORWARDED}
        relays = []
        preexec = die_with_parent()
        try:
            for index, (command, env) in enumerate(zip(self.commands, self.envs, strict=True)):
                if self._signals:
                    log.info("stopping: worker(s) %d to %d not started", index, len(self.commands) - 1)
                    break
                # A session of its own: a terminal's Ctrl-C reaches only us, and we pass it on once.
                proc = subprocess.Popen(
                    command,
                    env={**os.environ, **env},
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    bufsize=1,
                    start_new_session=True,
                    preexec_fn=preexec,
                )
                self.procs.append(proc)
                self._sent.append(0)
                log.info("worker %d started (pid %d)", index, proc.pid)
                self._deliver()
                for stream, sink in ((proc.stdout, sys.stdout), (proc.stderr, sys.stderr)):
                    relay = threading.Thread(target=self._relay, args=(index, stream, sink), daemon=True)
                    relay.start()
                    relays.append(relay)
            codes = self._wait_all()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        for relay in relays:
            relay.join(timeout=5)
        return self._summarise(codes)

    def _wait_all(self) -> list[int]:
        # Reap each worker as soon as it ends, whatever the order: a dead worker left unreaped is a
        # zombie, and its siblings must see it gone to take over its trial (runner.workers.worker.is_dead).
        codes: dict[int, int] = {}
        while len(codes) < len(self.procs):
            self._deliver()
            for index, proc in enumerate(self.procs):
                if index not in codes and proc.poll() is not None:
                    codes[index] = proc.returncode
                    if proc.returncode != 0:
                        log.warning("worker %d ended with exit code %d", index, proc.returncode)
            time.sleep(0.2)
        return [codes[i] for i in range(len(self.procs))]

    def _on_signal(self, signum: int, frame) -> None:
        self.interrupted = True
        self._signals.append((signum, signal.SIGTERM if signum == signal.SIGHUP else signum))

    def _deliver(self) -> None:
        """Pass each signal received so far on to every running worker that has not had it yet."""
        for index, proc in enumerate(self.procs):
            while self._sent[index] < len(self._signals):
                received, sent = self._signals[self._sent[index]]
                self._sent[index] += 1
                if proc.poll() is None:
                    as_ = "" if sent == received else f" as {signal.Signals(sent).name}"
                    log.info("passing %s on to worker %d%s", signal.Signals(received).name, index, as_)
                    proc.send_signal(sent)

    def _relay(self, index: int, stream: IO[str], sink: IO[str]) -> None:
        for line in stream:
            with self._write:
                try:
                    sink.write(f"[worker {index}] {line}")
                    sink.flush()
                except (OSError, ValueError):
                    # Our terminal is gone (SIGHUP): keep draining, or a worker blocks on a full pipe
                    # and never finishes stopping.
                    pass

    def _summarise(self, codes: list[int]) -> int:
        log.info("workers ended with exit codes %s", ", ".join(map(str, codes)))
        if all(code == 0 for code in codes):
            return 0
        if self.interrupted or 130 in codes:
            return 130
        return 2 if 2 in codes else 1


def launch_workers(argv: Sequence[str], workers: int) -> int:
    """Start ``workers`` copies of ``python -m runner.sweep ARGV`` and wait for them all."""
    gpus = visible_gpus()
    cores = cpu_count()
    commands, envs = worker_commands(argv, workers, cores, gpus)
    if gpus:
        log.info("%d workers on GPU(s) %s", workers, ", ".join(gpus))
        if workers > len(gpus):
            log.warning("%d workers share %d GPU(s): they compete for its memory", workers, len(gpus))
    else:
        log.info("%d workers on %d CPU core(s): %s torch thread(s) each", workers, cores, envs[0][THREADS_ENV])
    return Launcher(commands, envs).run()

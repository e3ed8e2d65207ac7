"""``runner.sweep --workers K``: K local worker processes on one study, sharing the machine fairly.

Each worker is the same ``runner.sweep`` command without ``--workers``; they meet in
the study's storage, which keeps their total exact (see runner.scheduler). With GPUs,
worker i sees one GPU (``CUDA_VISIBLE_DEVICES``); on CPU the cores are split, because
torch processes that each spin one thread per core slow each other down many times over.
"""

from __future__ import annotations

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


def strip_workers_flag(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--workers K`` / ``--workers=K``: what each worker runs."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--workers":
            skip = True
            continue
        if arg.startswith("--workers="):
            continue
        out.append(arg)
    return out


class Launcher:
    """Start worker processes, relay their output with a prefix, forward signals, wait."""

    def __init__(self, commands: Sequence[Sequence[str]], envs: Sequence[dict[str, str]]):
        self.commands, self.envs = [list(c) for c in commands], list(envs)
        self.procs: list[subprocess.Popen] = []
        self.interrupted = False
        self._write = threading.Lock()

    def run(self) -> int:
        """Run every worker to its end; the exit code is 0 only when every worker's is."""
        previous = {sig: signal.signal(sig, self._forward) for sig in (signal.SIGINT, signal.SIGTERM)}
        relays = []
        try:
            for index, (command, env) in enumerate(zip(self.commands, self.envs, strict=True)):
                # A session of its own: a terminal's Ctrl-C reaches only us, and we pass it on once.
                proc = subprocess.Popen(
                    command,
                    env={**os.environ, **env},
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    bufsize=1,
                    start_new_session=True,
                )
                self.procs.append(proc)
                log.info("worker %d started (pid %d)", index, proc.pid)
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
        # zombie, and its siblings must see it gone to take over its trial (runner.worker.is_dead).
        codes: dict[int, int] = {}
        while len(codes) < len(self.procs):
            for index, proc in enumerate(self.procs):
                if index not in codes and proc.poll() is not None:
                    codes[index] = proc.returncode
                    if proc.returncode != 0:
                        log.warning("worker %d ended with exit code %d", index, proc.returncode)
            time.sleep(0.2)
        return [codes[i] for i in range(len(self.procs))]

    def _forward(self, signum: int, frame) -> None:
        self.interrupted = True
        name = signal.Signals(signum).name
        log.info("passing %s on to %d worker(s); they stop after cleaning up", name, len(self.procs))
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    def _relay(self, index: int, stream: IO[str], sink: IO[str]) -> None:
        for line in stream:
            with self._write:
                sink.write(f"[worker {index}] {line}")
                sink.flush()

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
    command = [sys.executable, "-m", "runner.sweep", *strip_workers_flag(argv)]
    envs = [worker_env(i, workers, cores, gpus) for i in range(workers)]
    if gpus:
        log.info("%d workers on GPU(s) %s", workers, ", ".join(gpus))
        if workers > len(gpus):
            log.warning("%d workers share %d GPU(s): they compete for its memory", workers, len(gpus))
    else:
        log.info("%d workers on %d CPU core(s): %s torch thread(s) each", workers, cores, envs[0][THREADS_ENV])
    return Launcher([command] * workers, envs).run()

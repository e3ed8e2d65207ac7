"""The process manager behind ``runner.sweep --workers K``: start workers, relay their output, pass on signals.

Workers die with the launcher (Linux), and a stop signal reaches every worker, including one
that was starting when the signal came. What each worker runs, and with which share of the
machine, is decided in runner.workers.launch.
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
from pathlib import Path
from typing import IO, Protocol

log = logging.getLogger("runner")

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
WATCH_TICK_S = 2.0  # how often a watch re-reads the study


class Watch(Protocol):
    """A live view the launcher shows instead of relaying its workers' lines (runner.sweep builds one).

    ``start`` gets the folder of the workers' log files, ``tick`` comes every ~2 s from the
    launcher's wait loop, ``stop`` once every worker ended (or the start failed).
    """

    def start(self, log_dir: str) -> None: ...

    def tick(self) -> None: ...

    def stop(self) -> None: ...


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

    With a ``watch`` (a terminal), each worker's output goes to ``log_dir/worker-I.log`` instead and
    the watch shows the study; at the end, the results (stdout) of the last worker to finish well are
    printed once, unprefixed: every worker prints the same summary, the last one the most complete.
    """

    def __init__(
        self,
        commands: Sequence[Sequence[str]],
        envs: Sequence[dict[str, str]],
        watch: Watch | None = None,
        log_dir: Path | None = None,
    ):
        self.commands, self.envs = [list(c) for c in commands], list(envs)
        self.watch, self.log_dir = watch, log_dir
        self._logs: list[IO[str]] = []
        self._stdout: list[list[str]] = []  # each watched worker's stdout lines, for the end
        self._ended: list[int] = []  # worker indexes in the order they ended
        self._last_tick = 0.0
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
        codes: list[int] = []
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
            # Our threads start only now that every worker is forked: ``preexec_fn`` runs Python in the
            # forked child, which is safe only while no other thread of ours may hold a lock at the fork.
            # A worker's first lines wait in its pipe meanwhile (64 KiB, far more than its start-up writes).
            if self.watch is not None:
                self.watch.start(str(self.log_dir))
            for index, proc in enumerate(self.procs):
                for stream, sink in self._sinks(index, proc):
                    relay = threading.Thread(target=self._relay, args=(index, stream, sink), daemon=True)
                    relay.start()
                    relays.append(relay)
            codes = self._wait_all()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for relay in relays:
                relay.join(timeout=5)
            if self.watch is not None:
                self.watch.stop()
            for file in self._logs:
                file.close()
        self._print_results(codes)
        return self._summarise(codes)

    def _sinks(self, index: int, proc: subprocess.Popen) -> list[tuple[IO[str], IO[str] | None]]:
        """Where worker ``index``'s stdout and stderr go: ours, or (watched) its log file."""
        if self.watch is None:
            return [(proc.stdout, sys.stdout), (proc.stderr, sys.stderr)]
        path = Path(self.log_dir) / f"worker-{index}.log"
        self._logs.append(path.open("a", encoding="utf-8", buffering=1))
        self._stdout.append([])
        return [(proc.stdout, None), (proc.stderr, self._logs[index])]

    def _print_results(self, codes: list[int]) -> None:
        """Watched: the stdout of the last worker that ended well, once; where every worker's lines are."""
        if self.watch is None:
            return
        finished = [i for i in self._ended if i < len(codes) and codes[i] == 0]
        if finished:
            sys.stdout.write("".join(self._stdout[finished[-1]]))
            sys.stdout.flush()
        for index, code in enumerate(codes):
            if code != 0:
                path = Path(self.log_dir) / f"worker-{index}.log"
                lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines() if path.exists() else []
                last = lines[-1].removeprefix(f"[worker {index}] ") if lines else "(no output)"
                log.warning("worker %d: %s (all its lines: %s)", index, last, path)

    def _wait_all(self) -> list[int]:
        # Reap each worker as soon as it ends, whatever the order: a dead worker left unreaped is a
        # zombie, and its siblings must see it gone to take over its trial (runner.workers.worker.is_dead).
        codes: dict[int, int] = {}
        while len(codes) < len(self.procs):
            self._deliver()
            for index, proc in enumerate(self.procs):
                if index not in codes and proc.poll() is not None:
                    codes[index] = proc.returncode
                    self._ended.append(index)
                    if proc.returncode != 0:
                        log.warning("worker %d ended with exit code %d", index, proc.returncode)
            self._tick()
            time.sleep(0.2)
        return [codes[i] for i in range(len(self.procs))]

    def _tick(self) -> None:
        now = time.monotonic()
        if self.watch is not None and now - self._last_tick >= WATCH_TICK_S:
            self._last_tick = now
            self.watch.tick()

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

    def _relay(self, index: int, stream: IO[str], sink: IO[str] | None) -> None:
        """Each line to ``sink`` with the worker's prefix; ``sink`` None: a watched worker's stdout, kept and logged."""
        for line in stream:
            with self._write:
                if sink is None:
                    self._stdout[index].append(line)
                try:
                    out = self._logs[index] if sink is None else sink
                    out.write(f"[worker {index}] {line}")
                    out.flush()
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

"""Who runs a trial, so a restart can tell a dead worker's trial from a live one.

Optuna's heartbeat fails a stale trial only after its grace period; a trial whose
worker ran on this host and is gone can be failed at once.
"""

from __future__ import annotations

import os
import socket

import psutil


def current() -> dict[str, object]:
    """This process: host, pid and start time (a reused pid has another start time)."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "started": psutil.Process(pid).create_time()}


def is_dead(worker: dict | None) -> bool:
    """True only when ``worker`` ran on this host and that process no longer exists."""
    if not worker or worker.get("host") != socket.gethostname():
        return False
    try:
        process = psutil.Process(int(worker["pid"]))
        # A killed worker whose parent (e.g. the --workers launcher) has not reaped it yet is a zombie:
        # it still has its pid and start time, but it will never finish its trial.
        return process.create_time() != worker.get("started") or process.status() == psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied, KeyError, ValueError):
        return True

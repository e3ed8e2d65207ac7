"""Who runs a trial, so a restart can tell a dead worker's trial from a live one.

Optuna's heartbeat fails a stale trial only after its grace period; a trial whose
worker ran on this host and is gone can be failed at once.

A hostname alone does not name a machine: cloned VMs and containers often share one. So a
worker is also identified by its machine id and boot id, and a trial whose worker ran on
another machine, or on this one before a reboot, is left to the heartbeat.
"""

from __future__ import annotations

import os
import socket

import psutil

MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")  # systemd's, then D-Bus's copy
BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"  # Linux: new at every boot


def _read_id(*paths: str) -> str | None:
    for path in paths:
        try:
            with open(path, encoding="ascii") as f:
                text = f.read().strip()
        except (OSError, ValueError):
            continue
        if text:
            return text
    return None


def machine_ids() -> dict[str, str]:
    """This machine's ``machine`` and ``boot`` ids, each only when the system has it."""
    ids = {"machine": _read_id(*MACHINE_ID_FILES), "boot": _read_id(BOOT_ID_FILE)}
    return {key: value for key, value in ids.items() if value}


def current() -> dict[str, object]:
    """This process: host, machine and boot ids, pid and start time (a reused pid has another start time)."""
    pid = os.getpid()
    return {
        "host": socket.gethostname(),
        **machine_ids(),
        "pid": pid,
        "started": psutil.Process(pid).create_time(),
    }


def is_dead(worker: dict | None) -> bool:
    """True only when ``worker`` ran on this machine, since its last boot, and that process no longer exists.

    A record from before machine and boot ids were kept (an older study) is judged on the hostname alone.
    """
    if not worker or worker.get("host") != socket.gethostname():
        return False
    here = machine_ids()
    if any(key in worker and worker[key] != here.get(key) for key in ("machine", "boot")):
        return False  # another machine with our name, or ours before a reboot: not ours to judge
    try:
        process = psutil.Process(int(worker["pid"]))
        # A killed worker whose parent (e.g. the --workers launcher) has not reaped it yet is a zombie:
        # it still has its pid and start time, but it will never finish its trial.
        return process.create_time() != worker.get("started") or process.status() == psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied, KeyError, ValueError):
        return True

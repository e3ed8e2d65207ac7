"""Keep exactly one model on disk per study: the best trial's best epoch.

Each complete trial offers its best weights; they replace the folder only when
better than what it holds. Replacing is atomic (write aside, then rename), so a
crash never leaves a half-written model where a good one was.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

log = logging.getLogger(__name__)

INFO_FILE = "trial.json"


class BestCheckpoint:
    """The folder ``<root>/<study>`` holding the best model found so far."""

    def __init__(self, root: str | Path, study_name: str, maximize: bool):
        self.path = Path(root) / study_name
        self.maximize = maximize

    def remove_leftovers(self) -> list[Path]:
        """Delete staging folders that a killed save left behind (their pid is gone)."""
        removed = []
        for leftover in self.path.parent.glob(f".{self.path.name}.*-*"):
            pid = leftover.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not psutil.pid_exists(int(pid)):
                shutil.rmtree(leftover, ignore_errors=True)
                removed.append(leftover)
        return removed

    def current(self) -> dict[str, Any] | None:
        """What the folder holds (trial number, value, params), or None."""
        try:
            return json.loads((self.path / INFO_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def is_better(self, value: float) -> bool:
        """Would ``value`` replace the stored model?"""
        held = self.current()
        if held is None:
            return True
        return value > held["value"] if self.maximize else value < held["value"]

    def offer(self, model, tokenizer, value: float, info: dict[str, Any], config_yaml: str) -> bool:
        """Save ``model`` (already holding its best weights) if it beats the stored one."""
        with self._exclusive():
            return self._offer(model, tokenizer, value, info, config_yaml)

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        # Local workers of one study share this folder: compare and replace as one step,
        # or a worse model saved last could win, or two renames of the same folder collide.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _offer(self, model, tokenizer, value: float, info: dict[str, Any], config_yaml: str) -> bool:
        if not self.is_better(value):
            return False
        staging = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        model.save_pretrained(staging)  # safetensors weights only: no optimizer state
        tokenizer.save_pretrained(staging)
        (staging / "runner_config.yaml").write_text(config_yaml, encoding="utf-8")
        (staging / INFO_FILE).write_text(json.dumps({**info, "value": value}, indent=2, default=str), encoding="utf-8")
        replace_dir(staging, self.path)
        log.info("new best model (%.4f) saved to %s", value, self.path)
        return True


def replace_dir(src: Path, dst: Path) -> None:
    """Swap ``src`` into ``dst``; the old folder is removed only once the new one is in place."""
    old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.rename(old)
    src.rename(dst)
    shutil.rmtree(old, ignore_errors=True)

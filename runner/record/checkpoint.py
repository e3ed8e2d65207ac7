"""Keep exactly one model on disk per study: the best trial's best epoch.

Each complete trial offers its best weights; they replace the folder only when
better than what it holds. Replacing is atomic (write aside, then rename), so a
crash never leaves a half-written model where a good one was, and a stop between
the two renames of a swap is repaired on the next start (``remove_leftovers``).
Staging folders get unpredictable names (``mkdtemp``) and the folders made for
the stores and models are private (0700): models and databases are not for other users.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from runner.files import private_dir
from runner.training.metrics import is_better

log = logging.getLogger(__name__)

INFO_FILE = "trial.json"
# What a swap leaves next to ``<folder>`` while it runs: ``.<folder>.<kind>-<pid>-<random>`` (mkdtemp).
# The pid tells a dead process's leftovers from a live one's; names without the random part are
# from older versions.
_LEFTOVER = re.compile(r"(?P<kind>tmp|export|old)-(?P<pid>\d+)(-[a-z0-9_]+)?")


def read_info(folder: Path, name: str = INFO_FILE) -> dict[str, Any] | None:
    """The JSON object ``folder/name`` holds (trial.json: trial number, value, params), or None."""
    try:
        held = json.loads((folder / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return held if isinstance(held, dict) else None


def staging_dir(dst: Path, kind: str) -> Path:
    """A new empty folder next to ``dst``, named so ``remove_leftovers`` knows its owner's pid.

    mkdtemp picks a random name and creates it exclusively: nobody can plant a folder or
    symlink there in advance for us to write the model into.
    """
    return Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.{kind}-{os.getpid()}-"))


@contextlib.contextmanager
def folder_lock(folder: str | Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``folder`` (created if missing) for the block.

    The sweep's workers and ``runner.export`` take it on the best-model folder's parent around
    every compare-and-swap of a model folder. Not re-entrant: a second ``folder_lock`` on the
    same folder in the same process waits forever.
    """
    fd = os.open(private_dir(folder), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def remove_leftovers(dst: Path) -> list[Path]:
    """Clean what killed swaps of ``dst`` left next to it; restore ``dst`` if a stop lost it.

    Only leftovers of dead processes are touched. A stop between the two renames of
    ``replace_dir`` leaves no ``dst`` and the previous model under ``.old``: the newest such copy
    goes back in place. An ``.old`` copy is deleted only when ``dst`` exists. The caller holds
    ``folder_lock`` on ``dst.parent`` (or no other process uses it). Returns the paths removed.
    """
    if not dst.parent.is_dir():
        return []
    dead: dict[str, list[Path]] = {"tmp": [], "export": [], "old": []}
    for leftover in dst.parent.iterdir():
        match = _LEFTOVER.fullmatch(leftover.name.removeprefix(f".{dst.name}."))
        if leftover.name.startswith(f".{dst.name}.") and match and not psutil.pid_exists(int(match["pid"])):
            dead[match["kind"]].append(leftover)
    olds = sorted(dead["old"], key=lambda p: p.stat().st_mtime_ns)
    if olds and not dst.exists():
        restored = olds.pop()
        restored.rename(dst)
        log.warning("restored %s from %s, left behind by a stopped swap", dst, restored.name)
    removed = []
    for leftover in dead["tmp"] + dead["export"] + olds:
        shutil.rmtree(leftover, ignore_errors=True)
        removed.append(leftover)
    return removed


class BestCheckpoint:
    """The folder ``<root>/<study>`` holding the best model found so far."""

    def __init__(self, root: str | Path, study_name: str, maximize: bool):
        self.path = Path(root) / study_name
        self.maximize = maximize

    def remove_leftovers(self) -> list[Path]:
        """Clean what killed saves left behind, restoring the model a stop lost (see ``remove_leftovers``)."""
        with self.exclusive():
            return remove_leftovers(self.path)

    def current(self) -> dict[str, Any] | None:
        """What the folder holds (trial number, value, params), or None."""
        return read_info(self.path)

    def is_better(self, value: float) -> bool:
        """Would ``value`` replace the stored model?"""
        held = self.current()
        return is_better(value, None if held is None else held["value"], self.maximize)

    def offer(self, model, tokenizer, value: float, info: dict[str, Any], config_yaml: str) -> bool:
        """Save ``model`` (already holding its best weights) if it beats the stored one."""
        with self.exclusive():
            return self._offer(model, tokenizer, value, info, config_yaml)

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        """The lock around every compare-and-swap of this folder (``folder_lock`` on its parent).

        Local workers of one study and ``runner.export`` share the folder: compare and replace
        as one step, or a worse model saved last could win, or two renames of it collide.
        """
        return folder_lock(self.path.parent)

    def promote(self, candidate: BestCheckpoint, trial: int, confirmed: dict[str, Any]) -> bool:
        """Keep the winning configuration's best run here, with the confirmed result in its trial.json.

        After a confirmation stage the kept model must come from the configuration with the best
        mean (search trial ``trial``), not from the luckiest single run. The better of the two
        is kept: this folder (when it already holds that configuration, from its search run or
        an earlier promotion) or ``candidate`` (its best confirmation run), which is moved here.
        Returns False when no model of the winner was kept (all its confirmation runs failed and
        its search run was not the best). Safe to call from every worker: the first one moves
        the candidate, the others find it gone.
        """
        with self.exclusive():
            held, offered = self.current(), candidate.current()
            holds_winner = held is not None and held.get("trial") == trial
            take = offered is not None and (
                not holds_winner or is_better(offered["value"], held["value"], self.maximize)
            )
            if take:
                _write_info(candidate.path, {**offered, "confirmed": confirmed})
                replace_dir(candidate.path, self.path)
                log.info("kept the confirmed winner's best run (%.4f) in %s", offered["value"], self.path)
            elif holds_winner:
                _write_info(self.path, {**held, "confirmed": confirmed})
            else:
                log.warning("no model of the confirmed winner (trial %d) was kept: %s holds another", trial, self.path)
            return take or holds_winner

    def _offer(self, model, tokenizer, value: float, info: dict[str, Any], config_yaml: str) -> bool:
        if not self.is_better(value):
            return False
        staging = staging_dir(self.path, "tmp")
        try:
            model.save_pretrained(staging)  # safetensors weights only: no optimizer state
            tokenizer.save_pretrained(staging)
            (staging / "runner_config.yaml").write_text(config_yaml, encoding="utf-8")
            info_text = json.dumps({**info, "value": value}, indent=2, default=str)
            (staging / INFO_FILE).write_text(info_text, encoding="utf-8")
            replace_dir(staging, self.path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # gone already when the swap went through
        log.info("new best model (%.4f) saved to %s", value, self.path)
        return True


def _write_info(folder: Path, info: dict[str, Any]) -> None:
    """Rewrite ``folder``'s trial.json in one rename: a reader sees the old file or the new one."""
    tmp = folder / f".{INFO_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(info, indent=2, default=str), encoding="utf-8")
    tmp.replace(folder / INFO_FILE)


def replace_dir(src: Path, dst: Path) -> None:
    """Swap ``src`` into ``dst``; the old folder is removed only once the new one is in place.

    Two renames: a stop between them leaves no ``dst`` and the old model under ``.<dst>.old-<pid>-*``,
    which ``remove_leftovers`` puts back. Callers hold ``folder_lock`` on ``dst.parent``.
    """
    private_dir(dst.parent)
    old = None
    if dst.exists():
        old = staging_dir(dst, "old")  # an empty folder: renaming a folder onto it replaces it
        dst.rename(old)
    src.rename(dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

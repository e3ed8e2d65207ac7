"""The two kinds of error every command turns into one line on stderr and an exit code (runner.cli)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A problem with the user's configuration or input: reported in one line, exit 2."""


class WorkFailed(RuntimeError):
    """The command's work could not be done (exit 1); the message says why."""

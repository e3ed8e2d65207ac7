"""The two kinds of error every command turns into one line on stderr and an exit code (runner.cli)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A problem with the user's configuration or input: reported in one line, exit 2."""


class WorkFailed(RuntimeError):
    """The command's work could not be done (exit 1); the message says why."""


def first_line(err: BaseException) -> str:
    """The first non-blank line of ``err``'s message (else its type's name): libraries often add pages of detail."""
    lines = str(err).strip().splitlines()
    return lines[0].strip() if lines else type(err).__name__

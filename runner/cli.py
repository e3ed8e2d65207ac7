"""What every command (``runner VERB``, or ``python -m runner.VERB``) shares: the shared flags, one-line
errors (argparse's included), exit codes, SIGTERM, logging.

Exit codes: 0 done; 1 the work itself failed; 2 bad config or input; 130 interrupted.
Tracebacks only with ``--debug`` (or for real bugs, which are not caught here).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Literal

from runner.config import STORAGE_ENV, TRACKING_URI_ENV, StudyConfig, TrackingConfig
from runner.errors import ConfigError, WorkFailed, first_line
from runner.redact import RedactingFilter, printable, redact_text

DEFAULT_STORAGE = StudyConfig().storage
DEFAULT_TRACKING_URI = TrackingConfig().tracking_uri
DEBUG_HELP = "show tracebacks and library logs"


def command_name(prog: str) -> str:
    """What a command's messages start with: ``runner sweep``, or ``runner.sweep`` for ``python -m runner.sweep``."""
    return prog.removeprefix("python -m ")


class OneLineParser(argparse.ArgumentParser):
    """A bad flag is one line on stderr and exit 2, like every other error (no usage block).

    No abbreviations either: a shortened flag is an error, never a guess. ``--worker 3`` taken
    for ``--workers 3`` would slip past the launcher's stripping of --workers and have every
    worker launch workers again.
    """

    def __init__(self, *args, **kwargs):
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        # argparse quotes what it did not understand: a URL given without its flag may hold a password.
        text = " ".join(printable(message).split())
        self.exit(2, f"{command_name(self.prog)}: error: {text} (see --help)\n")


def shared_flags(
    storage: Literal["env", "file"] | None = None, debug_help: str = DEBUG_HELP
) -> argparse.ArgumentParser:
    """The flags several commands share, as a parent parser (``parents=[...]``): one help text each.

    ``storage="env"`` adds ``--storage`` defaulting to ``$RUNNER_STORAGE``, else the config default;
    ``storage="file"`` (the sweep) adds it defaulting to None, so an unset flag never overrides the
    config file (the sweep applies the variable with the file). ``--tracking-uri`` defaults to None
    everywhere: the tracking store applies ``$MLFLOW_TRACKING_URI``. Help texts name the variables,
    never their values, which may hold a password.
    """
    parent = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    group = parent.add_argument_group("shared options")
    file = ", else the config file's" if storage == "file" else ""
    if storage is not None:
        group.add_argument(
            "--storage",
            metavar="URL",
            default=None if storage == "file" else os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE,
            help=f"Optuna storage (default ${STORAGE_ENV}{file}, else {DEFAULT_STORAGE}); ${STORAGE_ENV} keeps "
            "a URL with a password out of the command line, which ps shows to everyone",
        )
    group.add_argument(
        "--tracking-uri",
        metavar="URI",
        help=f"MLflow tracking URI (default ${TRACKING_URI_ENV}{file}, else {DEFAULT_TRACKING_URI})",
    )
    group.add_argument("--debug", action="store_true", help=debug_help)
    return parent


def verbosity_flags() -> argparse.ArgumentParser:
    """``--quiet`` and ``--verbose`` as a parent parser; ``log_level(args)`` turns them into a level.

    --quiet: warnings, errors and the results on stdout only (no progress, no live display);
    --verbose: runner's DEBUG lines too. Library logs stay ``--debug``'s.
    """
    parent = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    group = parent.add_argument_group("output").add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", help="only warnings, errors and the results")
    group.add_argument("-v", "--verbose", action="store_true", help="runner's debug lines too")
    return parent


def log_level(args: argparse.Namespace) -> int:
    """The level of runner's log lines that ``--quiet`` / ``--verbose`` ask for (INFO when neither)."""
    if getattr(args, "quiet", False):
        return logging.WARNING
    return logging.DEBUG if getattr(args, "verbose", False) else logging.INFO


def _interrupt(signum, frame):
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_interrupt(sigint: bool = False) -> Iterator[None]:
    """Inside the block, SIGTERM (a job scheduler, ``kill``) stops the command like Ctrl-C: cleanly.

    ``sigint`` also reinstates Python's Ctrl-C handler, which a shell turns off in background jobs.
    The previous handlers come back at the end of the block.
    """
    previous = signal.signal(signal.SIGTERM, _interrupt)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler) if sigint else None
    try:
        yield
    finally:
        # None: a handler not set from Python, which cannot be put back (and was not ours to keep).
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if previous_int is not None:
            signal.signal(signal.SIGINT, previous_int)


def setup_logging(level: int = logging.INFO) -> None:
    """Progress at INFO on stderr, with a clock; no line shows a password (runner.redact).

    ``level`` (log_level): WARNING keeps only warnings and errors, DEBUG adds runner's own debug lines
    (the libraries' stay at INFO or above: they are ``--debug``'s). Set on every call, so one
    command's level never leaks into the next in the same process.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    logging.getLogger().setLevel(max(level, logging.INFO))
    logging.getLogger("runner").setLevel(level if level != logging.INFO else logging.NOTSET)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


def quiet_libraries() -> None:
    """Library chatter (warnings, progress bars, INFO logs) off; ``--debug`` keeps it."""
    import warnings

    import datasets
    import optuna
    import transformers

    # Experimental-API notices and schema hints are for us, not for users.
    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    # MLflow's "Downloading artifacts" bars (export, report); a user's own setting wins.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for noisy in (
        "mlflow",
        "mlflow.system_metrics.system_metrics_monitor",
        "alembic",
        "urllib3",
        "httpx",
        "huggingface_hub",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)


BROKEN_PIPE_CODE = 141  # what a shell reports for a process that SIGPIPE ended: 128 + 13


def run_command(
    prog: str,
    work: Callable[[], int],
    debug: bool = False,
    failures: tuple[type[BaseException], ...] = (),
    on_interrupt: str = "interrupted",
    interrupt_code: int = 130,
    quiet: bool = True,
    level: int = logging.INFO,
) -> int:
    """Run ``work`` and turn the expected errors into one line on stderr and an exit code.

    ``failures`` are extra exception types that mean "the work failed" (exit 1),
    e.g. MLflow's errors for commands that talk to a registry. ``quiet`` silences
    the ML libraries (and imports them: commands that do not use them pass False). ``level``: see
    setup_logging.
    """
    setup_logging(level)
    # MLflow writes "View run ... at: URL" to stdout, with the tracking URI as given: password included.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    try:
        if quiet and not debug:
            quiet_libraries()
        return work()
    except ConfigError as err:
        if debug:
            raise
        # One line whatever the message holds (a key from the YAML may contain a newline).
        print(f"{prog}: error: {' '.join(redact_text(str(err)).split())}", file=sys.stderr)
        return 2
    except (WorkFailed, *failures) as err:
        if debug:
            raise
        print(f"{prog}: {redact_text(first_line(err))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: {on_interrupt}", file=sys.stderr)
        return interrupt_code
    except BrokenPipeError:
        # The reader of stdout went away (`runner report | head`): stop quietly, as `yes | head` does.
        # Pointing stdout at /dev/null keeps the interpreter's last flush from raising it again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return BROKEN_PIPE_CODE


def run_checked(
    prog: str,
    check: Callable[[], int],
    work: Callable[[], int],
    debug: bool = False,
    failures: Callable[[], tuple[type[BaseException], ...]] = tuple,
    level: int = logging.INFO,
) -> int:
    """Run ``check`` then, if it passed, ``work``: each through run_command; the exit code of the first to fail.

    The check (names given as flags) runs before the ML libraries are even imported, so a bad
    name is one line and touches no store. ``failures`` gives run_command's extra failure types
    for the work, asked for only after the check: getting them may import a heavy library.
    ``level``: see setup_logging (``log_level(args)`` of ``--quiet``/``--verbose``).
    """
    name = command_name(prog)
    code = run_command(name, check, debug, quiet=False, level=level)
    if code:
        return code
    return run_command(name, work, debug, failures=failures(), level=level)

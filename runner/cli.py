"""What every ``python -m runner.<verb>`` shares: logging, exit codes and one-line errors.

Exit codes: 0 done; 1 the work itself failed; 2 bad config or input; 130 interrupted.
Tracebacks only with ``--debug`` (or for real bugs, which are not caught here).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from runner.errors import ConfigError, WorkFailed
from runner.redact import RedactingFilter, redact_text


def setup_logging() -> None:
    """Progress at INFO on stderr, with a clock; no line shows a password (runner.redact)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
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
    for noisy in (
        "mlflow",
        "mlflow.system_metrics.system_metrics_monitor",
        "alembic",
        "urllib3",
        "httpx",
        "huggingface_hub",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_command(
    prog: str,
    work: Callable[[], int],
    debug: bool = False,
    failures: tuple[type[BaseException], ...] = (),
    on_interrupt: str = "interrupted",
    interrupt_code: int = 130,
    quiet: bool = True,
) -> int:
    """Run ``work`` and turn the expected errors into one line on stderr and an exit code.

    ``failures`` are extra exception types that mean "the work failed" (exit 1),
    e.g. MLflow's errors for commands that talk to a registry. ``quiet`` silences
    the ML libraries (and imports them: commands that do not use them pass False).
    """
    setup_logging()
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
        print(f"{prog}: {redact_text(_first_line(err))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: {on_interrupt}", file=sys.stderr)
        return interrupt_code


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__

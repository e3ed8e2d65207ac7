"""``python -m runner.sweep``: the command line. Parses flags, validates the config, runs the study.

Exit codes: 0 done, 1 the sweep itself failed (too many failed trials), 2 bad
config or input, 130 interrupted (run the same command again to resume).
The heavy libraries are imported only after the config is valid, so a typo is
reported at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from runner.cli import (
    OneLineParser,
    command_name,
    log_level,
    quiet_libraries,
    run_command,
    shared_flags,
    sigterm_as_interrupt,
    verbosity_flags,
)
from runner.config import (
    STORAGE_ENV,
    SweepConfig,
    load_config,
    parse_override,
    resolve_data_dir,
    tracking_uri_override,
)
from runner.config.schema import parse_duration
from runner.errors import ConfigError
from runner.workers.launch import AUTO_CHOICE_ENV, BUDGET_START_ENV, WORKER_ENV

log = logging.getLogger("runner")

DEFAULT_CONFIG = Path("sweeps/mrpc.yaml")
EXAMPLES = """examples:
  python -m runner.sweep --trials 20                       # the default sweep (sweeps/mrpc.yaml)
  python -m runner.sweep --config sweeps/smoke.yaml --trials 3 --data-dir ../shared/data/mrpc
  python -m runner.sweep --study lr-fixed --set search_space.learning_rate=5e-5
  python -m runner.sweep --trials 20 --workers 2            # two worker processes on this machine
  python -m runner.sweep --trials 20 --workers auto         # as many as pay off here (GPUs, cores, model size)
  python -m runner.sweep --trials 20 --timeout 45m          # the best 45 minutes can give; run again to go on
  PGPASSWORD=... python -m runner.sweep --storage postgresql://USER@HOST/optuna --tracking-uri https://HOST
                                                           # the same command on each machine: one shared study
Re-running the same command after a crash or Ctrl-C resumes the study up to --trials."""


PROG = "python -m runner.sweep"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """Command-line flags; each defaults to None so an unset flag never overrides the file.

    ``prog`` is the command as typed: ``runner sweep`` from the ``runner`` command.
    """
    p = OneLineParser(
        prog=prog,
        description="Run an Optuna hyperparameter sweep fine-tuning a BERT-family model on GLUE MRPC, "
        "with every trial tracked in MLflow.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[shared_flags(storage="file"), verbosity_flags()],
    )
    p.add_argument("--config", metavar="FILE", help=f"sweep YAML file (default: {DEFAULT_CONFIG})")
    p.add_argument("--trials", metavar="N", type=int, help="total finished (complete or pruned) trials to reach")
    p.add_argument("--study", metavar="NAME", help="study name, also the MLflow experiment name")
    p.add_argument(
        "--data-dir", metavar="DIR", help="local MRPC folder: GLUE TSVs or csv/json/parquet (default $RUNNER_DATA_DIR)"
    )
    p.add_argument("--model", metavar="NAME_OR_PATH", help="Hub id or local folder of the pretrained model")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config value, e.g. --set search_space.learning_rate=5e-5 (repeatable)",
    )
    p.add_argument(
        "--workers",
        metavar="K",
        type=_int_arg("--workers"),
        help="run K worker processes on this machine on the same study (one per GPU when there are GPUs, "
        "else each with its share of the CPU cores); auto: one per GPU, or on a CPU two for a small model "
        "(measured: more trials per hour), else one; default 1",
    )
    p.add_argument(
        "--retry-failed",
        metavar="N",
        type=_int_arg("--retry-failed"),
        help="rerun a trial whose worker crashed or was stopped (killed, Ctrl-C, SIGTERM) up to N times with "
        "the same params; trials that failed by themselves (a NaN loss, an error in training) are not retried, "
        "they would fail the same way again (default: study.retry_failed, 0)",
    )
    p.add_argument(
        "--timeout",
        metavar="DURATION",
        help="time budget of the whole command (search and confirmation), e.g. 90s, 45m, 2h, 1h30m: no trial "
        "starts that cannot finish in it and a running one stops at an epoch boundary; the same command with "
        "a larger budget continues (default: study.timeout, none)",
    )
    p.add_argument("--no-system-metrics", action="store_true", help="do not log CPU/memory/GPU metrics on trial runs")
    return p


def _int_arg(flag: str):
    # Range and type are checked in main() as a ConfigError, so main(argv) returns 2 rather than exiting.
    def parse(text: str) -> int | str:
        try:
            return int(text)
        except ValueError:
            return text

    parse.__name__ = flag
    return parse


def _check_count(flag: str, value: int | str | None, minimum: int, words: tuple[str, ...] = ()) -> None:
    if value is None or value in words:
        return
    if not isinstance(value, int) or value < minimum:
        also = "".join(f" or {w}" for w in words)
        raise ConfigError(f"{flag} must be an integer >= {minimum}{also}, got {value!r}")


def _auto_workers(cfg: SweepConfig) -> tuple[int, str]:
    """``--workers auto``: the count for this machine and model (runner.workers.launch.auto_workers), logged.

    Returns the count and what was chosen and why, in words, for the summary.
    """
    from runner.training.model import count_parameters, resolve_model
    from runner.workers.launch import auto_workers, cpu_count, visible_gpus
    from runner.workers.storage import is_shared_storage

    if not is_shared_storage(cfg.study.storage):
        choice = 1, f"1 worker (--workers auto: {cfg.study.storage} is not shared between processes)"
    else:
        params = count_parameters(resolve_model(cfg.model.name))
        choice = auto_workers(cpu_count(), visible_gpus(), params, cfg.study.n_trials)
    log.info("%s", choice[1])
    return choice


def _check_timeout(value: str | None) -> None:
    """A bad ``--timeout`` is a one-line error naming the flag (the config check would name study.timeout)."""
    if value is not None:
        try:
            parse_duration(value)
        except ValueError as err:
            raise ConfigError(f"--timeout: {err}") from None


def _budget_start() -> float:
    """Now; in a launcher's worker, the launcher's start, so every worker has the same deadline."""
    given = os.environ.get(BUDGET_START_ENV) if os.environ.get(WORKER_ENV) is not None else None
    try:
        return float(given) if given else time.time()
    except ValueError:
        raise ConfigError(f"{BUDGET_START_ENV} must be a unix time, got {given!r}") from None


def _check_study_storage(cfg: SweepConfig) -> None:
    """The storage URL and server, then a time budget too small for one trial: errors now, before heavy imports."""
    from runner.workers.storage import check_storage_reachable, check_storage_url

    check_storage_url(cfg.study.storage)
    check_storage_reachable(cfg.study.storage)
    if cfg.study.timeout is not None:
        from runner.search.budget import check_fits

        check_fits(cfg)  # reads the trial times the study's storage measured, if it has any


def default_config_path() -> Path:
    """``sweeps/mrpc.yaml`` in the working directory, else next to the package (a source checkout)."""
    for candidate in (DEFAULT_CONFIG, Path(__file__).resolve().parent.parent / DEFAULT_CONFIG):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"no {DEFAULT_CONFIG} here: pass --config FILE")


def resolve_config(args: argparse.Namespace) -> SweepConfig:
    """Defaults < YAML < environment < named flags < --set, validated in one go.

    The data folder is the one exception, as it always was: ``--data-dir`` > ``$RUNNER_DATA_DIR``
    > the config (``--set data.data_dir`` included). It is resolved into the config here, once,
    so the config saved with the runs and the best model names the folder the sweep read.
    """
    path = args.config or default_config_path()
    overrides = {}
    named = {
        "study.n_trials": args.trials,
        "study.name": args.study,
        "study.storage": args.storage or os.environ.get(STORAGE_ENV) or None,
        "tracking.tracking_uri": tracking_uri_override(args.tracking_uri),
        "model.name": args.model,
        "study.retry_failed": args.retry_failed,
        "study.timeout": args.timeout,
    }
    overrides.update({k: v for k, v in named.items() if v is not None})
    if args.no_system_metrics:
        overrides["tracking.system_metrics"] = False
    overrides.update(parse_override(item) for item in args.overrides)
    return resolve_data_dir(load_config(path, overrides), args.data_dir)


def _launch(
    cfg: SweepConfig,
    workers: int,
    argv: list[str],
    quiet: bool = False,
    started: float | None = None,
    note: str | None = None,
) -> int:
    from runner.workers.launch import launch_workers
    from runner.workers.storage import is_shared_storage

    if not is_shared_storage(cfg.study.storage):
        raise ConfigError(f"--workers needs a storage the workers share, not {cfg.study.storage}")
    budget_start = started if cfg.study.timeout is not None else None  # the workers' budget counts from our start
    return launch_workers(argv, workers, watch=_study_watch(cfg, workers, quiet), budget_start=budget_start, note=note)


def _study_watch(cfg: SweepConfig, workers: int, quiet: bool):
    """In a terminal: the launcher's one live view of the shared study (runner.search.display), else None.

    Wired in here because the launcher (runner.workers) may not import runner.search.
    """
    from runner.search.display import live_wanted
    from runner.search.watch import StudyWatch

    return StudyWatch(cfg, workers) if live_wanted(quiet) else None


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """CLI entry point; returns the exit code. ``prog``: the command as typed, for help and errors."""
    args = build_parser(prog).parse_args(argv)

    def work() -> int:
        started = _budget_start()  # a time budget bounds the whole command: it counts from here
        _check_count("--workers", args.workers, 1, words=("auto",))
        _check_count("--retry-failed", args.retry_failed, 0)
        _check_timeout(args.timeout)
        if args.workers not in (None, 1) and os.environ.get(WORKER_ENV) is not None:
            # Belt and braces against a --workers flag the launcher failed to strip: no fork bomb.
            raise ConfigError(f"--workers: this process is a launcher's worker ({WORKER_ENV} is set): it launches none")
        cfg = resolve_config(args)  # before the heavy imports: a typo is reported at once
        # The stores too: a bad storage URL or an unreachable server fails fast.
        _check_study_storage(cfg)
        workers, note = _auto_workers(cfg) if args.workers == "auto" else (args.workers, None)
        if workers is not None and workers > 1:
            return _launch(cfg, workers, sys.argv[1:] if argv is None else argv, args.quiet, started, note)
        from runner.record.store import check_reachable  # imports mlflow: after the storage checks

        check_reachable(cfg.tracking.tracking_uri)
        if not args.debug:
            quiet_libraries()  # only now: quieting imports the ML libraries, which a config error must not wait for
        from runner.search.display import live_wanted
        from runner.search.run import run_sweep
        from runner.workers.launch import apply_thread_limit

        apply_thread_limit()
        if note is None and os.environ.get(WORKER_ENV) is not None:
            note = os.environ.get(AUTO_CHOICE_ENV)  # a launcher's worker: what --workers auto chose, for its summary
        return run_sweep(cfg, live=live_wanted(args.quiet), started=started, workers_note=note)

    # A SIGTERM (e.g. from a job scheduler) stops like Ctrl-C: clean and resumable.
    with sigterm_as_interrupt():
        return run_command(
            command_name(prog),
            work,
            args.debug,
            on_interrupt="interrupted; run the same command again to resume",
            quiet=False,  # work() quiets the libraries once the config is valid; the launcher trains nothing
            level=log_level(args),
        )


if __name__ == "__main__":
    sys.exit(main())

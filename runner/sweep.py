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
import signal
import sys
from pathlib import Path

from runner.config import ConfigError, SweepConfig, load_config, parse_override

log = logging.getLogger("runner")

DEFAULT_CONFIG = "sweeps/mrpc.yaml"


def build_parser() -> argparse.ArgumentParser:
    """Command-line flags; each defaults to None so an unset flag never overrides the file."""
    p = argparse.ArgumentParser(
        prog="python -m runner.sweep",
        description="Run an Optuna hyperparameter sweep fine-tuning a BERT-family model on GLUE MRPC, "
        "tracked in MLflow. Re-running the same command resumes the study up to --trials.",
    )
    p.add_argument("--config", default=None, help=f"sweep YAML file (default: {DEFAULT_CONFIG} if present)")
    p.add_argument("--trials", type=int, help="total finished (complete or pruned) trials the study should reach")
    p.add_argument("--study", help="study name (also the MLflow experiment name)")
    p.add_argument("--storage", help="Optuna storage URL (default sqlite:///mlruns/optuna.db)")
    p.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db)"
    )
    p.add_argument("--data-dir", help="local MRPC folder (GLUE TSVs or csv/json/parquet); also RUNNER_DATA_DIR")
    p.add_argument("--model", help="Hub id or local folder of the pretrained model")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config value, e.g. --set search_space.learning_rate=5e-5 (repeatable)",
    )
    p.add_argument("--no-system-metrics", action="store_true", help="do not log CPU/memory/GPU metrics on trial runs")
    p.add_argument("--debug", action="store_true", help="show tracebacks and library logs")
    return p


def resolve_config(args: argparse.Namespace) -> SweepConfig:
    """Defaults < YAML < named flags < --set, validated in one go."""
    path = args.config or (DEFAULT_CONFIG if Path(DEFAULT_CONFIG).is_file() else None)
    overrides = {}
    named = {
        "study.n_trials": args.trials,
        "study.name": args.study,
        "study.storage": args.storage,
        "tracking.tracking_uri": args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"),
        "model.name": args.model,
    }
    overrides.update({k: v for k, v in named.items() if v is not None})
    if args.no_system_metrics:
        overrides["tracking.system_metrics"] = False
    overrides.update(parse_override(item) for item in args.overrides)
    return load_config(path, overrides)


def _on_sigterm(signum, frame):
    # A SIGTERM (e.g. from a job scheduler) stops like Ctrl-C: clean and resumable.
    raise KeyboardInterrupt


def setup_logging() -> None:
    """Our progress at INFO on stderr, with a clock."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    setup_logging()
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        cfg = resolve_config(args)
        from runner.study import SweepFailed, quiet_libraries, run_sweep

        if not args.debug:
            quiet_libraries()
        return run_sweep(cfg, args.data_dir)
    except ConfigError as err:
        if args.debug:
            raise
        print(f"runner.sweep: error: {err}", file=sys.stderr)
        return 2
    except SweepFailed as err:
        print(f"runner.sweep: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("runner.sweep: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

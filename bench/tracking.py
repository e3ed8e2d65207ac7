"""Tracking overhead: one runner trial with MLflow tracking on versus off.

"On" is what ``runner.sweep`` does for every trial: a child run with params,
per-epoch metrics, system metrics, the predictions CSV, confusion matrix and log
history. "Off" swaps in a tracker that records nothing and skips the artifact
files that exist only for tracking. Everything else (training, evaluation, the
best-model save) is the same code path: ``runner.objective.Objective``.

    python -m bench.tracking            # full MRPC, 1 epoch bf16, 3 interleaved repeats
    python -m bench.tracking --quick    # 512 pairs, 2 repeats
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import tempfile
from pathlib import Path

import optuna

from bench import common

log = logging.getLogger("bench.tracking")


class _NullRun:
    run_id = "untracked"

    def log_params(self, params): ...
    def log_metrics(self, metrics, step=0): ...
    def set_tags(self, tags): ...
    def log_files(self, paths): ...
    def log_text(self, name, text): ...


class NullTracker:
    """A tracker that records nothing (the "off" variant)."""

    @contextlib.contextmanager
    def trial_run(self, study_name, trial_number, params, tags=None):
        yield _NullRun()


def make_objective(cfg, inputs, tracker, best_dir: Path, tracked: bool):
    """The objective every sweep uses; untracked, it skips the files made only for MLflow."""
    from runner.record.checkpoint import BestCheckpoint
    from runner.search.objective import Objective
    from runner.search.progress import SweepProgress

    objective = Objective(
        cfg=cfg,
        model_source=inputs.model_source,
        tokenizer=inputs.tokenizer,
        data=inputs.data,
        tokenized=inputs.tokenized,
        tracker=tracker,
        checkpoint=BestCheckpoint(best_dir, cfg.study.name, maximize=True),
        progress=SweepProgress(1, 0, cfg.study.metric, True),
    )
    if not tracked:
        objective._prediction_files = lambda *a, **k: []
    return objective


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="512 training pairs, 2 repeats")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--train-samples", type=int)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args(argv)
    common.setup()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    repeats = args.repeats or (2 if args.quick else 3)
    train_samples = args.train_samples or (512 if args.quick else None)

    from runner.config import SweepConfig
    from runner.record.runs import Tracker
    from runner.search.run import prepare_inputs

    with tempfile.TemporaryDirectory(prefix="bench-tracking-") as tmp:
        cfg = SweepConfig.model_validate(
            {
                "study": {"name": "bench-tracking", "storage": f"sqlite:///{tmp}/optuna.db"},
                "data": {"max_train_samples": train_samples, "data_dir": common.data_dir()},
                "hyperparameters": {"num_train_epochs": args.epochs, "fp16": True},
                "tracking": {"tracking_uri": f"sqlite:///{tmp}/mlflow.db", "artifact_location": f"{tmp}/artifacts"},
            }
        )
        inputs = prepare_inputs(cfg)
        tracker = Tracker(cfg.tracking.tracking_uri, cfg.study.name, cfg.tracking.artifact_location)
        quiet = Tracker(cfg.tracking.tracking_uri, cfg.study.name, cfg.tracking.artifact_location, system_metrics=False)
        studies = {name: optuna.create_study(direction="maximize") for name in ("on", "on, no system metrics", "off")}
        tracker.open_study_run(studies["on"], {})
        quiet.study_run_id = tracker.study_run_id
        objectives = {
            "on": make_objective(cfg, inputs, tracker, Path(tmp) / "best-on", tracked=True),
            "on, no system metrics": make_objective(cfg, inputs, quiet, Path(tmp) / "best-quiet", tracked=True),
            "off": make_objective(cfg, inputs, NullTracker(), Path(tmp) / "best-off", tracked=False),
        }
        cases = {
            f"tracking {name}": (lambda name=name: studies[name].optimize(objectives[name], n_trials=1))
            for name in objectives
        }
        times = common.interleaved(cases, repeats)
        tracker.close_study_run("FINISHED")
    off = common.median(times["tracking off"])
    rows = [
        {
            "variant": name,
            "s/trial (median)": common.median(t),
            "ratio": common.median(t) / off,
            "overhead": f"{100 * (common.median(t) - off) / off:+.1f}%",
            "repeats (s)": " ".join(f"{x:.1f}" for x in t),
        }
        for name, t in times.items()
    ]
    print(text := common.table(rows, list(rows[0])))
    common.save("tracking", {"train_samples": train_samples, "epochs": args.epochs, "seconds": times, "table": text})


if __name__ == "__main__":
    main()

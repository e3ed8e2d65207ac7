"""The end-of-sweep summary on stdout: the trials table and where to look next."""

from __future__ import annotations

import collections
import sys

import optuna

from runner.config import SweepConfig, TrackingConfig
from runner.record import artifacts
from runner.record.checkpoint import BestCheckpoint
from runner.redact import redact_url


def print_summary(study: optuna.Study, cfg: SweepConfig, checkpoint: BestCheckpoint) -> None:
    """The trials table and where to look next, on stdout."""
    table = artifacts.trials_table(study)
    out = sys.stdout
    out.write("\n" + table.to_string(index=False) + "\n\n")
    states = collections.Counter(t.state.name for t in study.trials)
    out.write("trials: " + ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items())) + "\n")
    if states.get("COMPLETE"):
        best = study.best_trial
        out.write(f"best: trial {best.number}, {cfg.study.metric}={best.value:.4f}, params {best.params}\n")
        out.write(f"best model: {checkpoint.path}  (ship it: python -m runner.export --study {cfg.study.name})\n")
    flags = (
        ""
        if cfg.tracking.tracking_uri == TrackingConfig().tracking_uri
        else f" --tracking-uri {redact_url(cfg.tracking.tracking_uri)}"
    )
    out.write(
        f"compare the runs: python -m runner.ui{flags}  or  python -m runner.report --study {cfg.study.name}{flags}\n"
    )

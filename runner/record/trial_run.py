"""The logging handle of one trial's MLflow run, and the small helpers every run write shares."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

MAX_PARAM_LENGTH = 6000  # MLflow's limit per param value


class TrialRun:
    """Logging handle for one trial's run."""

    def __init__(self, client: MlflowClient, run_id: str):
        self.client, self.run_id = client, run_id

    def log_params(self, params: dict[str, Any]) -> None:
        """Log params (MLflow takes at most 100 per call)."""
        items = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        """Log metrics at one step (the epoch, for per-epoch metrics)."""
        now = now_ms()
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def set_tags(self, tags: dict[str, Any]) -> None:
        """Set string tags on the run."""
        self.client.log_batch(self.run_id, tags=[run_tag(k, v) for k, v in tags.items()])

    def log_files(self, paths: list[Path]) -> None:
        """Upload local files as artifacts at the run's root."""
        for path in paths:
            self.client.log_artifact(self.run_id, str(path))

    def log_text(self, name: str, text: str) -> None:
        """Store a text artifact."""
        self.client.log_text(self.run_id, text, name)

    def end(self, status: str, optuna_state: str, tags: dict[str, str]) -> None:
        """Record the trial's fate and terminate the run."""
        self.set_tags({"optuna.state": optuna_state, **tags})
        self.client.set_terminated(self.run_id, status=RunStatus.to_string(RunStatus.from_string(status)))


def run_tag(key: str, value: Any) -> RunTag:
    """A string tag, cut to MLflow's 5000-character limit on a tag value."""
    return RunTag(key, str(value)[:5000])


def now_ms() -> int:
    """Now, in the milliseconds MLflow stamps metrics with."""
    return int(time.time() * 1000)

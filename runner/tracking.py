"""Everything the sweep records in MLflow. The only module that imports mlflow.

We drive MLflow through ``MlflowClient`` with explicit run ids instead of the
Trainer's or optuna-integration's callbacks: those lose params on later trials,
mark pruned trials FINISHED and create no parent run (see STACK.md).
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow
import optuna
import requests
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_PARENT_RUN_ID

from runner.config import ConfigError

log = logging.getLogger(__name__)

STUDY_RUN_ATTR = "mlflow_run_id"  # Optuna study user attr that remembers the parent run
MAX_PARAM_LENGTH = 6000  # MLflow's limit per param value


class TrackingError(ConfigError):
    """The tracking store cannot be used."""


def check_reachable(tracking_uri: str, timeout: float = 3.0) -> None:
    """Fail within seconds when a tracking server does not answer (MLflow itself retries for minutes)."""
    url = urlparse(tracking_uri)
    if url.scheme in ("http", "https"):
        try:
            requests.get(tracking_uri.rstrip("/") + "/health", timeout=timeout).raise_for_status()
        except requests.RequestException as err:
            raise TrackingError(
                f"MLflow tracking server {tracking_uri} does not answer: {type(err).__name__}"
            ) from None
    elif url.scheme in ("", "file"):
        raise TrackingError(
            f"tracking URI {tracking_uri!r} is a file store, which MLflow 3 refuses: use sqlite:///PATH/mlflow.db"
        )


def _artifact_uri(location: str) -> str:
    return location if urlparse(location).scheme not in ("", "file") else Path(location).resolve().as_uri()


class Tracker:
    """One study's MLflow experiment: a parent run for the study, a child run per trial."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_location: str, system_metrics: bool = True):
        url = urlparse(tracking_uri)
        if url.scheme == "sqlite" and url.path.removeprefix("/") not in ("", ":memory:"):
            Path(url.path.removeprefix("/")).parent.mkdir(parents=True, exist_ok=True)
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        self.system_metrics = system_metrics
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            location = _artifact_uri(f"{artifact_location.rstrip('/')}/{experiment}")
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
        else:
            self.experiment_id = found.experiment_id
        self.study_run_id: str | None = None

    # --- the study (parent) run ---------------------------------------------------

    def open_study_run(self, study: optuna.Study, tags: dict[str, str]) -> str:
        """Create the study's parent run, or reopen the one a previous invocation made."""
        run_id = study.user_attrs.get(STUDY_RUN_ATTR)
        if run_id is None:
            run = self.client.create_run(
                self.experiment_id,
                run_name=study.study_name,
                tags={"runner.role": "study", "runner.study": study.study_name, **tags},
            )
            run_id = run.info.run_id
            study.set_user_attr(STUDY_RUN_ATTR, run_id)
        else:
            self.client.update_run(run_id, status="RUNNING")
            self.client.log_batch(run_id, tags=[_tag(k, v) for k, v in tags.items()])
        self.study_run_id = run_id
        return run_id

    def log_dataset(self, splits: dict[str, Any], source: str, name: str) -> None:
        """Record each split as an MLflow dataset input (source, size, digest) on the study run."""
        inputs = []
        for split_name, split in splits.items():
            dataset = mlflow.data.from_huggingface(split, path=None, name=f"{name}-{split_name}", source=source)
            tags = [InputTag(key=MLFLOW_DATASET_CONTEXT, value=split_name)]
            inputs.append(DatasetInput(dataset=dataset._to_mlflow_entity(), tags=tags))
        self.client.log_inputs(self.study_run_id, datasets=inputs)

    def update_study_run(self, metrics: dict[str, float], tags: dict[str, str], files: list[Path]) -> None:
        """Best-trial metrics and tags, and files (config, trials table, plots), on the study run."""
        now = _now_ms()
        self.client.log_batch(
            self.study_run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
            tags=[_tag(k, v) for k, v in tags.items()],
        )
        for path in files:
            self.client.log_artifact(self.study_run_id, str(path))

    def close_study_run(self, status: str) -> None:
        """End the study run: FINISHED, KILLED (interrupted) or FAILED."""
        if self.study_run_id is not None:
            self.client.set_terminated(self.study_run_id, status=status)

    # --- trial (child) runs -------------------------------------------------------

    @contextmanager
    def trial_run(self, study_name: str, trial_number: int, params: dict[str, Any]) -> Iterator[TrialRun]:
        """A child run for one trial; its status follows how the block ends.

        Returns normally -> FINISHED/COMPLETE; ``optuna.TrialPruned`` -> KILLED/PRUNED;
        Ctrl-C -> KILLED/FAIL (interrupted); any other exception -> FAILED/FAIL.
        """
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"trial-{trial_number:03d}",
            tags={
                MLFLOW_PARENT_RUN_ID: self.study_run_id,
                "runner.role": "trial",
                "runner.study": study_name,
                "optuna.trial_number": str(trial_number),
                "optuna.state": "RUNNING",
            },
        )
        handle = TrialRun(self.client, run.info.run_id)
        handle.log_params(params)
        monitor = self._start_system_metrics(run.info.run_id)
        try:
            yield handle
        except optuna.TrialPruned as pruned:
            handle.end("KILLED", "PRUNED", {"runner.pruned_reason": str(pruned)})
            raise
        except KeyboardInterrupt:
            handle.end("KILLED", "FAIL", {"runner.error": "interrupted (Ctrl-C or SIGTERM)"})
            raise
        except BaseException as err:
            handle.log_text("error.txt", "".join(traceback.format_exception(err)))
            handle.end("FAILED", "FAIL", {"runner.error": f"{type(err).__name__}: {err}"[:5000]})
            raise
        else:
            handle.end("FINISHED", "COMPLETE", {})
        finally:
            if monitor is not None:
                monitor.finish()

    def _start_system_metrics(self, run_id: str):
        if not self.system_metrics:
            return None
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, sampling_interval=10, tracking_uri=self.tracking_uri)
        monitor.start()
        return monitor

    def settle_orphans(self, study_name: str, live_numbers: set[int]) -> int:
        """Mark trial runs left RUNNING by a dead process as FAILED; returns how many."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`runner.role` = 'trial' and tags.`runner.study` = '{study_name}' "
            "and attributes.status = 'RUNNING'",
        )
        settled = 0
        for run in runs:
            if int(run.data.tags.get("optuna.trial_number", -1)) in live_numbers:
                continue
            self.client.set_tag(run.info.run_id, "optuna.state", "FAIL")
            self.client.set_tag(run.info.run_id, "runner.error", "the process running this trial died")
            self.client.set_terminated(run.info.run_id, status="FAILED")
            settled += 1
        return settled


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
        now = _now_ms()
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def set_tags(self, tags: dict[str, Any]) -> None:
        """Set string tags on the run."""
        self.client.log_batch(self.run_id, tags=[_tag(k, v) for k, v in tags.items()])

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


def _tag(key: str, value: Any) -> RunTag:
    return RunTag(key, str(value)[:5000])


def _now_ms() -> int:
    return int(time.time() * 1000)

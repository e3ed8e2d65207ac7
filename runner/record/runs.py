"""The write side: a sweep's MLflow runs, a parent run for the study and a child run per trial.

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
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_PARENT_RUN_ID

from runner.config import TrackingConfig
from runner.files import private_dir, use_wal
from runner.record.store import absolute_sqlite_uri
from runner.redact import redact_text

log = logging.getLogger(__name__)


STUDY_RUN_ATTR = "mlflow_run_id"  # Optuna study user attr that remembers the parent run


MAX_PARAM_LENGTH = 6000  # MLflow's limit per param value


DEFAULT_ARTIFACTS = TrackingConfig().artifact_location


def _artifact_uri(location: str) -> str:
    return location if urlparse(location).scheme not in ("", "file") else Path(location).resolve().as_uri()


class Tracker:
    """One study's MLflow experiment: a parent run for the study, a child run per trial."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_location: str, system_metrics: bool = True):
        tracking_uri = absolute_sqlite_uri(tracking_uri)
        url = urlparse(tracking_uri)
        if url.scheme == "sqlite" and url.path.removeprefix("/") not in ("", ":memory:"):
            private_dir(Path(url.path.removeprefix("/")).parent)  # mlruns/ holds databases and models: 0700
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        self.system_metrics = system_metrics
        self.experiment_id = self._experiment(experiment, artifact_location)
        if url.scheme == "sqlite" and url.path.removeprefix("/") not in ("", ":memory:"):
            # Local workers (--workers K) write runs at once: with write-ahead logging readers never
            # wait for a writer, and MLflow's 5 s busy timeout is not reached.
            use_wal(Path(url.path.removeprefix("/")))
        self.study_run_id: str | None = None
        self._pending_tags: dict[int, dict[str, str]] = {}

    def _experiment(self, name: str, artifact_location: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location: str | None = _artifact_uri(f"{artifact_location.rstrip('/')}/{name}")
        if urlparse(self.tracking_uri).scheme in ("http", "https") and artifact_location == DEFAULT_ARTIFACTS:
            # A tracking server has its own artifact root, one that every worker machine reaches;
            # a local folder would scatter artifacts over the workers' disks.
            location = None
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except MlflowException as err:
            # Another worker created it first (a worker not sharing our Optuna lock).
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            log.debug("experiment %s created by another worker: %s", name, err)
            return found.experiment_id

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
                **self._pending_tags.pop(trial_number, {}),
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
            # An error may quote a URL with its password (a database driver's message): never record one.
            handle.log_text("error.txt", redact_text("".join(traceback.format_exception(err))))
            handle.end("FAILED", "FAIL", {"runner.error": redact_text(f"{type(err).__name__}: {err}")[:5000]})
            raise
        else:
            handle.end("FINISHED", "COMPLETE", {})
        finally:
            if monitor is not None:
                monitor.finish()

    def link_retry(self, study_name: str, trial_number: int, original: int, history: list[int]) -> None:
        """Tag the coming run of ``trial_number`` as a retry of ``original`` (and of ``history[-1]``).

        The run of the trial it repeats gets ``runner.retried_by`` in turn, so either run leads to the other.
        """
        previous = history[-1] if history else original
        previous_run = self._trial_run_id(study_name, previous)
        tags = {
            "runner.retry_of": str(original),
            "runner.retry_of_run_id": self._trial_run_id(study_name, original) or "",
            "runner.retry_history": ",".join(map(str, history)),
            "runner.retry_previous_run_id": previous_run or "",
        }
        self._pending_tags[trial_number] = tags
        if previous_run:
            self.client.set_tag(previous_run, "runner.retried_by", str(trial_number))

    def _trial_run_id(self, study_name: str, number: int) -> str | None:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`runner.role` = 'trial' and tags.`runner.study` = '{study_name}' "
            f"and tags.`optuna.trial_number` = '{number}'",
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

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

"""The write side: a sweep's MLflow runs, a parent run for the study and a child run per trial.

We drive MLflow through ``MlflowClient`` with explicit run ids instead of the
Trainer's or optuna-integration's callbacks: those lose params on later trials,
mark pruned trials FINISHED and create no parent run (the Trainer's ``MLflowCallback`` sets
itself up once, so only the first trial of a search gets params; optuna-integration's
``MLflowCallback(nested=True)`` has no parent run).
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote, urlencode, urlparse

import mlflow
import optuna
from mlflow.entities import DatasetInput, InputTag, Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_PARENT_RUN_ID
from optuna.trial import FrozenTrial

from runner.config import TrackingConfig
from runner.files import private_dir, sqlite_file, use_wal
from runner.record.history import trial_run_id
from runner.record.store import absolute_sqlite_uri
from runner.record.trial_run import TrialRun, now_ms, run_tag
from runner.redact import redact_text

log = logging.getLogger(__name__)


STUDY_RUN_ATTR = "mlflow_run_id"  # Optuna study user attr that remembers the parent run


DEFAULT_ARTIFACTS = TrackingConfig().artifact_location

STOPPED_TAG = "runner.stopped"  # on a run that was stopped by choice (the time budget), saying why


class RunStopped(Exception):  # noqa: N818 - a stop by choice, not an error
    """Raised inside ``Tracker.trial_run`` to end a run early by choice: KILLED/FAIL, tagged ``runner.stopped``.

    Unlike an error it leaves no ``runner.error``: the run was cut short (by the time budget), nothing broke.
    """


SYSTEM_METRICS_INTERVAL_S = 10  # seconds between samples of a trial run's system/* metrics

# The MLflow UI opens an experiment of this kind on its runs table. Without the tag it guesses the kind,
# stores its guess (a kind ending in "_inferred") and may open its GenAI overview instead.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"
# A view of the runs table (filter, order, columns) is stored the way the UI's Share button stores one: an
# experiment tag "mlflow.sharedViewState.<key>", opened by "?viewStateShareKey=<key>" on the runs page.
SHARED_VIEW_PREFIX = "mlflow.sharedViewState."
TRIALS_VIEW_KEY = "runner-trials"
TRIALS_FILTER = "tags.`runner.role` = 'trial'"


class TrialsView(NamedTuple):
    """The trial runs view of a study: sorted by ``best_<metric>`` in its direction, the params as columns."""

    metric: str
    direction: str  # maximize or minimize
    params: list[str]


def _artifact_uri(location: str) -> str:
    return location if urlparse(location).scheme not in ("", "file") else Path(location).resolve().as_uri()


class Tracker:
    """One study's MLflow experiment: a parent run for the study, a child run per trial."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_location: str, system_metrics: bool = True):
        tracking_uri = absolute_sqlite_uri(tracking_uri)
        db = sqlite_file(tracking_uri)
        if db is not None:
            private_dir(db.parent)  # mlruns/ holds databases and models: 0700
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        self.system_metrics = system_metrics
        self.experiment_id = self._experiment(experiment, artifact_location)
        mark_training_experiment(self.client, self.experiment_id)
        if db is not None:
            # Local workers (--workers K) write runs at once: with write-ahead logging readers never
            # wait for a writer, and MLflow's 5 s busy timeout is not reached.
            use_wal(db)
        self.study_run_id: str | None = None

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
            self.client.log_batch(run_id, tags=[run_tag(k, v) for k, v in tags.items()])
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
        now = now_ms()
        self.client.log_batch(
            self.study_run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
            tags=[run_tag(k, v) for k, v in tags.items()],
        )
        for path in files:
            self.client.log_artifact(self.study_run_id, str(path))

    def store_trials_view(self, view: TrialsView) -> None:
        """Store the study's trial runs view on its experiment, where ``trial_runs_link`` opens it."""
        tag = SHARED_VIEW_PREFIX + TRIALS_VIEW_KEY
        state = json.dumps(_trials_view(view), sort_keys=True)
        try:
            if self.client.get_experiment(self.experiment_id).tags.get(tag) != state:
                self.client.set_experiment_tag(self.experiment_id, tag, state)
        except MlflowException as err:  # workers writing it at once; the view is a convenience, not a record
            log.warning("could not store the trial runs view: %s", err)

    def clear_study_run_tag(self, key: str) -> None:
        """Remove ``key`` from the study run if it has it (a budget stop's note, once a later sweep finished)."""
        if key in self.client.get_run(self.study_run_id).data.tags:
            self.client.delete_tag(self.study_run_id, key)

    def close_study_run(self, status: str) -> None:
        """End the study run: FINISHED, KILLED (interrupted) or FAILED."""
        if self.study_run_id is not None:
            self.client.set_terminated(self.study_run_id, status=status)

    # --- trial (child) runs -------------------------------------------------------

    @contextmanager
    def trial_run(
        self,
        study_name: str,
        trial_number: int,
        params: dict[str, Any],
        tags: dict[str, str] | None = None,
        role: str = "trial",
        run_name: str | None = None,
    ) -> Iterator[TrialRun]:
        """A child run for one trial; its status follows how the block ends.

        ``tags`` go on the run besides its own (a retry's links, from ``link_retry``). ``role`` is
        ``trial`` for a search trial (``runner.phase=search``) or ``confirm`` for a confirmation
        run (``runner.phase=confirm``; its ``optuna.trial_number`` is in the confirmation study).
        Returns normally -> FINISHED/COMPLETE; ``optuna.TrialPruned`` -> KILLED/PRUNED;
        Ctrl-C -> KILLED/FAIL (interrupted); ``RunStopped`` -> KILLED/FAIL tagged ``runner.stopped``;
        any other exception -> FAILED/FAIL.
        """
        run = self.client.create_run(
            self.experiment_id,
            run_name=run_name or f"trial-{trial_number:03d}",
            tags={
                MLFLOW_PARENT_RUN_ID: self.study_run_id,
                "runner.role": role,
                "runner.phase": "confirm" if role == "confirm" else "search",
                "runner.study": study_name,
                "optuna.trial_number": str(trial_number),
                "optuna.state": "RUNNING",
                **(tags or {}),
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
        except RunStopped as stopped:
            handle.end("KILLED", "FAIL", {STOPPED_TAG: str(stopped)})
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

    def link_retry(self, study: optuna.Study, trial_number: int, original: int, history: list[int]) -> dict[str, str]:
        """Tags for the coming run of ``trial_number``, a retry of ``original`` (and of ``history[-1]``).

        Pass them to ``trial_run``. The run of the trial it repeats gets ``runner.retried_by``
        at once, so either run leads to the other.
        """
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        previous = history[-1] if history else original
        previous_run = self.trial_run_id(study.study_name, trials[previous])
        original_run = previous_run if original == previous else self.trial_run_id(study.study_name, trials[original])
        if previous_run:
            self.client.set_tag(previous_run, "runner.retried_by", str(trial_number))
        return {
            "runner.retry_of": str(original),
            "runner.retry_of_run_id": original_run or "",
            "runner.retry_history": ",".join(map(str, history)),
            "runner.retry_previous_run_id": previous_run or "",
        }

    def trial_run_id(self, study_name: str, trial: FrozenTrial) -> str | None:
        """The run id of one of this study's trials: stored on the trial, or found by tag for older records."""
        return trial_run_id(self.tracking_uri, study_name, trial)

    def _start_system_metrics(self, run_id: str):
        """A started monitor that logs system/* metrics to the run every SYSTEM_METRICS_INTERVAL_S; None when off.

        The interval is read at each call, so a test can shorten it.
        """
        if not self.system_metrics:
            return None
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(
            run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S, tracking_uri=self.tracking_uri
        )
        monitor.start()
        return monitor

    def settle_orphans(self, study_name: str, live_numbers: set[int], role: str = "trial") -> int:
        """Mark runs of ``role`` (trial or confirm) left RUNNING by a dead process as FAILED; returns how many."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`runner.role` = '{role}' and tags.`runner.study` = '{study_name}' "
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


def mark_training_experiment(client: MlflowClient, experiment_id: str) -> None:
    """Tag the experiment so that the MLflow UI opens it on its runs table, not its GenAI overview.

    A kind someone chose in the UI stays; a guess the UI stored (``*_inferred``) is replaced.
    """
    kind = client.get_experiment(experiment_id).tags.get(EXPERIMENT_KIND_TAG, "")
    if kind in ("", "no_inferred_type") or kind.endswith("_inferred"):
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)


def trial_runs_link(tracking_uri: str, experiment_id: str) -> str:
    """The MLflow UI's page of a study's trial runs, as the part of its URL after the server's address.

    It opens the view the sweep stored (``Tracker.store_trials_view``), or, for an experiment without
    one, the trial runs in the UI's default order. ``workflowType`` keeps the UI in its
    machine-learning layout, whatever it showed last. Reads only.
    """
    tags = MlflowClient(absolute_sqlite_uri(tracking_uri)).get_experiment(experiment_id).tags
    stored = SHARED_VIEW_PREFIX + TRIALS_VIEW_KEY in tags
    query = {"viewStateShareKey": TRIALS_VIEW_KEY} if stored else {"searchFilter": TRIALS_FILTER}
    query["workflowType"] = "machine_learning"
    return f"#/experiments/{experiment_id}/runs?{urlencode(query, quote_via=quote)}"


def _trials_view(view: TrialsView) -> dict[str, Any]:
    """The shared view state the UI reads: its search facets and the table's columns."""
    score = f"best_{view.metric}"
    return {
        "searchFilter": TRIALS_FILTER,
        "orderByKey": f"metrics.`{score}`",
        "orderByAsc": view.direction == "minimize",
        "selectedColumns": [*(f"params.`{name}`" for name in view.params), f"metrics.`{score}`"],
    }

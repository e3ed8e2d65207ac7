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
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_PARENT_RUN_ID

from runner.checkpoint import private_dir
from runner.config import ConfigError, TrackingConfig
from runner.redact import redact_text, redact_url
from runner.storage import use_wal

log = logging.getLogger(__name__)

STUDY_RUN_ATTR = "mlflow_run_id"  # Optuna study user attr that remembers the parent run
MAX_PARAM_LENGTH = 6000  # MLflow's limit per param value
DEFAULT_ARTIFACTS = TrackingConfig().artifact_location


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
                f"MLflow tracking server {redact_url(tracking_uri)} does not answer: {type(err).__name__}"
            ) from None
    elif url.scheme in ("", "file"):
        raise TrackingError(
            f"tracking URI {redact_url(tracking_uri)!r} is a file store, which MLflow 3 refuses: "
            "use sqlite:///PATH/mlflow.db"
        )


def absolute_sqlite_uri(uri: str) -> str:
    """``sqlite:///rel/path.db`` -> ``sqlite:////abs/rel/path.db``; other URIs unchanged.

    MLflow caches one store per URI string in a process, so a relative path would keep
    pointing at the database of whichever working directory used it first.
    """
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        db = uri.removeprefix("sqlite:///")
        if db and db != ":memory:":
            return f"sqlite:///{Path(db).resolve()}"
    return uri


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


# =====================================================================================
# Compare and ship: export, registry, predict, report, UI.
# Used by runner.export / predict / report / ui. Every function takes the tracking URI
# explicitly, and none of them changes the status or end time of an existing run.
# =====================================================================================

DEFAULT_TRACKING_URI = TrackingConfig().tracking_uri
CHAMPION_ALIAS = "champion"
MODEL_ARTIFACT_NAME = "model"
# What the exported model needs at serving time. Listed explicitly: MLflow's inference
# imports torchvision, which has no CPU build here (see STACK.md).
SERVING_PACKAGES = ("mlflow", "transformers", "torch", "tokenizers", "safetensors", "accelerate")


def resolve_tracking_uri(cli_value: str | None = None) -> str:
    """``--tracking-uri`` > ``$MLFLOW_TRACKING_URI`` > the project's store, as ``runner.sweep`` does.

    A relative SQLite path is made absolute: MLflow caches stores by URI string, so a relative
    one would keep pointing at the first working directory's database.
    """
    import os

    return absolute_sqlite_uri(cli_value or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI)


def check_store_exists(tracking_uri: str) -> None:
    """Fail in one line when the store is unusable or, for SQLite, was never created by a sweep.

    Without this, MLflow would create an empty database and report "no such experiment".
    """
    check_reachable(tracking_uri)
    url = urlparse(tracking_uri)
    if url.scheme == "sqlite":
        db = tracking_uri.removeprefix("sqlite:///")
        if db and db != ":memory:" and not Path(db).is_file():
            raise TrackingError(f"no MLflow tracking store at {db}: run a sweep first, or pass --tracking-uri")


def _client(tracking_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri, registry_uri=tracking_uri)


def study_experiment_id(tracking_uri: str, study: str) -> str:
    """The experiment id of a study; an unknown study is a TrackingError naming the known ones."""
    client = _client(tracking_uri)
    found = client.get_experiment_by_name(study)
    if found is None:
        known = sorted(e.name for e in client.search_experiments() if e.name != "Default")
        hint = f" (known: {', '.join(known)})" if known else " (the store holds no study yet)"
        raise TrackingError(f"no MLflow experiment for study {study!r}{hint}")
    return found.experiment_id


def find_trial_run(tracking_uri: str, study: str, trial_number: int) -> str | None:
    """The run id of one trial of a study, or None."""
    client = _client(tracking_uri)
    runs = client.search_runs(
        [study_experiment_id(tracking_uri, study)],
        filter_string=f"tags.`runner.role` = 'trial' and tags.`optuna.trial_number` = '{trial_number}'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def study_data_source(tracking_uri: str, study: str) -> str | None:
    """The local data folder the study's sweep trained on (from its dataset inputs), if any."""
    import json

    client = _client(tracking_uri)
    runs = client.search_runs(
        [study_experiment_id(tracking_uri, study)], filter_string="tags.`runner.role` = 'study'", max_results=1
    )
    for dataset_input in runs[0].inputs.dataset_inputs if runs else []:
        try:
            uri = json.loads(dataset_input.dataset.source).get("uri")
        except (ValueError, AttributeError):
            continue
        if uri and Path(uri).is_dir():
            return uri
    return None


def log_run_metrics(tracking_uri: str, run_id: str, metrics: dict[str, float]) -> None:
    """Add metrics (step 0) to a finished run without reopening it."""
    now = _now_ms()
    _client(tracking_uri).log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])


def serving_requirements() -> list[str]:
    """Pinned pip requirements of the exported model (local version suffixes such as +cpu dropped)."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in SERVING_PACKAGES:
        try:
            pins.append(f"{package}=={version(package).split('+')[0]}")
        except PackageNotFoundError:
            continue
    return pins


def text_pair_signature():
    """Inputs ``text`` and ``text_pair``: with MLflow's default signature the second sentence is dropped."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "text"), ColSpec("string", "text_pair")]),
        outputs=Schema([ColSpec("string", "label"), ColSpec("double", "score")]),
    )


def find_model_version(tracking_uri: str, name: str, run_id: str) -> str | None:
    """The newest version of registered model ``name`` that came from ``run_id``, or None."""
    client = _client(tracking_uri)
    if not client.search_registered_models(filter_string=f"name = '{_quote(name)}'"):
        return None
    versions = client.search_model_versions(f"name = '{_quote(name)}' and run_id = '{run_id}'")
    return str(max(int(v.version) for v in versions)) if versions else None


def log_and_register(tracking_uri: str, run_id: str, folder: Path, name: str, tags: dict[str, Any]) -> str:
    """Log ``folder`` as an MLflow transformers model under ``run_id`` and register it; returns the version."""
    import mlflow.transformers
    import transformers
    from huggingface_hub import ModelCard

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    # The logged model belongs to the active experiment, not to run_id's: make them the same.
    mlflow.set_experiment(experiment_id=_client(tracking_uri).get_run(run_id).info.experiment_id)
    # A pipeline object: MLflow 3.17 cannot build a flavor config from a folder path with transformers 5.
    classifier = transformers.pipeline("text-classification", model=str(folder))
    card = folder / "README.md"
    info = mlflow.transformers.log_model(
        transformers_model=classifier,
        name=MODEL_ARTIFACT_NAME,
        task="text-classification",
        # Our card; without one MLflow tries to fetch the base model's card from the Hub.
        model_card=ModelCard(card.read_text(encoding="utf-8")) if card.is_file() else None,
        signature=text_pair_signature(),
        pip_requirements=serving_requirements(),
        run_id=run_id,  # passed on to Model.log: logs under the trial's run without reopening it
        tags={k: str(v) for k, v in tags.items()},
    )
    version = mlflow.register_model(info.model_uri, name, tags={k: str(v) for k, v in tags.items()})
    return str(version.version)


def set_champion(tracking_uri: str, name: str, version: str) -> str | None:
    """Point the ``champion`` alias at ``version``; returns the version it pointed at before."""
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    try:
        previous: str | None = str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version)
    except MlflowException:
        previous = None
    client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
    return previous


def load_pipeline(model_uri: str, tracking_uri: str):
    """A transformers pipeline from a ``models:/`` or ``runs:/`` URI; unknown models are a TrackingError.

    Not through ``mlflow.transformers.load_model``: for a class transformers lacks, it loads the
    model with ``trust_remote_code=True``, running whatever code the publisher shipped. The
    artifacts are downloaded into a private folder, checked (``MLmodel`` here, the folders by
    ``runner.predict.load_folder``), and loaded from that same copy with ``trust_remote_code``
    off; a model that carries code is refused (``runner.predict.RefusedModel``, exit 2).
    """
    import os
    import tempfile
    from unittest import mock

    from mlflow.artifacts import download_artifacts

    from runner.predict import load_folder
    from runner.redact import printable

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    # MLflow's download progress bar would break predict's one-line errors; a user's own setting wins.
    bar = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    quiet = {} if bar in os.environ else {bar: "false"}
    with tempfile.TemporaryDirectory(prefix="runner-model-") as scratch, mock.patch.dict(os.environ, quiet):
        try:
            root = Path(download_artifacts(artifact_uri=model_uri, dst_path=scratch, tracking_uri=tracking_uri))
        except MlflowException as err:
            first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise TrackingError(f"cannot load {printable(model_uri)}: {printable(first_line)}") from None
        model_dir, tokenizer_dir = _checked_transformers_folders(root, model_uri)
        # Weights and tokenizer are in memory once loaded: the copy can go.
        return load_folder(model_dir, tokenizer_dir, name=model_uri, safetensors_only=True, code_root=root)


def _checked_transformers_folders(root: Path, model_uri: str) -> tuple[Path, Path | None]:
    """The model and tokenizer folders of a downloaded MLflow transformers model, after checking its MLmodel.

    Every class the ``transformers`` flavor names must be one transformers defines (MLflow
    would load any other as remote code).
    """
    import yaml

    from runner.predict import check_class_name
    from runner.redact import printable

    name = printable(model_uri)
    try:
        flavor = (yaml.safe_load((root / "MLmodel").read_text(encoding="utf-8")) or {}).get("flavors", {})
        flavor = flavor.get("transformers")
    except (OSError, ValueError, AttributeError, yaml.YAMLError):
        raise TrackingError(f"cannot load {name}: no readable MLmodel file in it") from None
    if not isinstance(flavor, dict):
        raise TrackingError(f"cannot load {name}: not an MLflow transformers model")
    if flavor.get("task") != "text-classification":
        raise TrackingError(f"cannot load {name}: a {printable(flavor.get('task'))} model, not text-classification")
    components = flavor.get("components") or []
    if not isinstance(components, list) or not all(isinstance(c, str) for c in components):
        raise TrackingError(f"cannot load {name}: MLmodel components is not a list of names")
    check_class_name(flavor.get("pipeline_model_type"), "MLmodel pipeline_model_type", model_uri)
    check_class_name(flavor.get("instance_type"), "MLmodel instance_type", model_uri)
    for key in ["processor_type", *(f"{c}_type" for c in components)]:
        if key in flavor:
            check_class_name(flavor[key], f"MLmodel {key}", model_uri)
    binary = flavor.get("model_binary")
    # A plain folder name inside the download; anything else could point the loader elsewhere on this machine.
    if not (isinstance(binary, str) and binary and Path(binary).name == binary and (root / binary).is_dir()):
        raise TrackingError(f"cannot load {name}: its weights are not in the artifacts (model_binary)")
    tokenizer_dir = root / "components" / "tokenizer"
    return root / binary, tokenizer_dir if "tokenizer" in components and tokenizer_dir.is_dir() else None


def search_trial_runs(tracking_uri: str, study: str):
    """All trial runs of a study as a pandas DataFrame (``mlflow.search_runs``), one row per run."""
    experiment_id = study_experiment_id(tracking_uri, study)
    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.search_runs(
        experiment_ids=[experiment_id], filter_string="tags.`runner.role` = 'trial'", output_format="pandas"
    )


def searched_param_names(tracking_uri: str, study: str) -> list[str] | None:
    """The searched hyperparameters, as the study run records them (tags ``best_trial.params.*``), or None."""
    runs = _client(tracking_uri).search_runs(
        [study_experiment_id(tracking_uri, study)], filter_string="tags.`runner.role` = 'study'", max_results=1
    )
    if not runs:
        return None
    prefix = "best_trial.params."
    names = [k.removeprefix(prefix) for k in runs[0].data.tags if k.startswith(prefix)]
    return sorted(names) or None


def _quote(value: str) -> str:
    return value.replace("'", "\\'")

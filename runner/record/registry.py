"""Ship and load models: log a model under its trial's run, register it, move ``champion``, load one back.

A registry is writable by whoever may publish, so a model is loaded back only after
its files are checked (runner.training.trusted).
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from runner.errors import first_line
from runner.record.store import TrackingError, mlflow_client

log = logging.getLogger("runner")

CHAMPION_ALIAS = "champion"


MODEL_ARTIFACT_NAME = "model"


# What the exported model needs at serving time. Listed explicitly: MLflow's inference of
# a pipeline's requirements imports torchvision, which this project does not install, and
# log_model then fails with ModuleNotFoundError.
SERVING_PACKAGES = ("mlflow", "transformers", "torch", "tokenizers", "safetensors", "accelerate")


def log_run_metrics(tracking_uri: str, run_id: str, metrics: dict[str, float]) -> None:
    """Add metrics (step 0) to a finished run without reopening it."""
    now = int(time.time() * 1000)
    mlflow_client(tracking_uri).log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])


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
    client = mlflow_client(tracking_uri)
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
    mlflow.set_experiment(experiment_id=mlflow_client(tracking_uri).get_run(run_id).info.experiment_id)
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
    # MLflow prints "Successfully registered model ..." and "Created version ..." on stderr; export
    # says what it registered in one line of its own, so MLflow's lines are shown with --debug only.
    with contextlib.redirect_stderr(io.StringIO()) as said:
        version = mlflow.register_model(info.model_uri, name, tags={k: str(v) for k, v in tags.items()})
    for line in said.getvalue().splitlines():
        log.debug("mlflow: %s", line)
    return str(version.version)


def set_champion(tracking_uri: str, name: str, version: str) -> str | None:
    """Point the ``champion`` alias at ``version``; returns the version it pointed at before."""
    from mlflow.exceptions import MlflowException

    client = mlflow_client(tracking_uri)
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
    ``runner.training.trusted.load_folder``), and loaded from that same copy with ``trust_remote_code``
    off; a model that carries code is refused (``runner.training.trusted.RefusedModel``, exit 2).
    """
    import tempfile

    from mlflow.artifacts import download_artifacts

    from runner.redact import printable
    from runner.training.trusted import load_folder

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="runner-model-") as scratch:
        try:
            root = Path(download_artifacts(artifact_uri=model_uri, dst_path=scratch, tracking_uri=tracking_uri))
        except MlflowException as err:
            raise TrackingError(f"cannot load {printable(model_uri)}: {printable(first_line(err))}") from None
        model_dir, tokenizer_dir = _checked_transformers_folders(root, model_uri)
        # Weights and tokenizer are in memory once loaded: the copy can go.
        return load_folder(model_dir, tokenizer_dir, name=model_uri, safetensors_only=True, code_root=root)


def _checked_transformers_folders(root: Path, model_uri: str) -> tuple[Path, Path | None]:
    """The model and tokenizer folders of a downloaded MLflow transformers model, after checking its MLmodel.

    Every class the ``transformers`` flavor names must be one transformers defines (MLflow
    would load any other as remote code).
    """
    import yaml

    from runner.redact import printable
    from runner.training.trusted import check_class_name

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


def _quote(value: str) -> str:
    return value.replace("'", "\\'")

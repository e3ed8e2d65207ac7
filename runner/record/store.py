"""Where MLflow keeps a sweep's records: which store, is it there, can it be reached.

A tracking server that does not answer makes MLflow retry for minutes, and a missing
SQLite file makes it create an empty one: both are one-line errors here instead.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlparse

import requests
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from runner.config import TrackingConfig
from runner.errors import ConfigError
from runner.redact import redact_url

log = logging.getLogger(__name__)


# What MLflow raises when a store or registry refuses an operation: the commands report it in one line.
RecordError = MlflowException


class TrackingError(ConfigError):
    """The tracking store cannot be used."""


DEFAULT_TRACKING_URI = TrackingConfig().tracking_uri


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


def mlflow_client(tracking_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri, registry_uri=tracking_uri)

"""Where MLflow keeps a sweep's records: which store, is it there, can it be reached.

A tracking server that does not answer makes MLflow retry for minutes, and a missing
SQLite file makes it create an empty one: both are one-line errors here instead.
"""

from __future__ import annotations

from urllib.parse import urlparse

import requests
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.rest_utils import http_request

from runner.config import TrackingConfig, tracking_uri_override
from runner.errors import ConfigError
from runner.files import sqlite_file
from runner.redact import redact_url

# What MLflow raises when a store or registry refuses an operation: the commands report it in one line.
RecordError = MlflowException


class TrackingError(ConfigError):
    """The tracking store cannot be used."""


DEFAULT_TRACKING_URI = TrackingConfig().tracking_uri


def check_reachable(tracking_uri: str, timeout: float = 3.0) -> None:
    """Fail within seconds when a tracking server does not answer (MLflow itself retries for minutes).

    The request goes through MLflow's own HTTP path, once, so it uses what the runs will use: the
    server's CA (``MLFLOW_TRACKING_SERVER_CERT_PATH``), ``MLFLOW_TRACKING_INSECURE_TLS``, a client
    certificate, and the credentials (``MLFLOW_TRACKING_USERNAME``/``PASSWORD``, ``TOKEN``).
    """
    url = urlparse(tracking_uri)
    if url.scheme in ("http", "https"):
        creds = get_default_host_creds(tracking_uri)
        try:
            http_request(creds, "/health", "GET", max_retries=0, timeout=timeout).raise_for_status()
        except (MlflowException, requests.RequestException) as err:
            cause = err.__cause__ or err.__context__ or err  # MLflow wraps the requests error: its type says more
            raise TrackingError(
                f"MLflow tracking server {redact_url(tracking_uri)} does not answer: {type(cause).__name__}"
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
    db = sqlite_file(uri)
    if db is None or db.is_absolute():
        return uri
    # The path as written, not re-rendered: SQLAlchemy would percent-encode an "@" or "%" in it.
    return uri.replace(f"///{db}", f"///{db.resolve()}", 1)


def resolve_tracking_uri(cli_value: str | None = None) -> str:
    """``--tracking-uri`` > ``$MLFLOW_TRACKING_URI`` > the project's store (the sweep's rule: tracking_uri_override).

    A relative SQLite path is made absolute: MLflow caches stores by URI string, so a relative
    one would keep pointing at the first working directory's database.
    """
    return absolute_sqlite_uri(tracking_uri_override(cli_value) or DEFAULT_TRACKING_URI)


def check_store_exists(tracking_uri: str) -> None:
    """Fail in one line when the store is unusable or, for SQLite, was never created by a sweep.

    Without this, MLflow would create an empty database and report "no such experiment".
    """
    check_reachable(tracking_uri)
    db = sqlite_file(tracking_uri)
    if db is not None and not db.is_file():
        raise TrackingError(f"no MLflow tracking store at {db}: run a sweep first, or pass --tracking-uri")


def mlflow_client(tracking_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri, registry_uri=tracking_uri)

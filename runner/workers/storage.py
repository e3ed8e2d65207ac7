"""The Optuna storage several workers share, and the lock that lets them take turns.

Workers on one machine share a SQLite file; workers on several machines share a
PostgreSQL (or MySQL) database. Two steps must not interleave between workers:
setting up the study (tables, study, MLflow study run) and asking for the next
trial (so that together they start exactly the requested total). ``StudyLock``
serialises those steps: a PostgreSQL advisory lock, or an exclusive ``flock``
next to a SQLite file. Both vanish with the process that holds them, so a
killed worker never blocks the others.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from types import TracebackType

import optuna

from runner.errors import ConfigError
from runner.files import SQLITE_TIMEOUT_S, private_dir, use_wal
from runner.redact import redact_text, redact_url

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5  # an unreachable database server fails fast, not after the OS's TCP timeout


def check_storage_url(url: str) -> None:
    """Reject a malformed storage URL or a missing database driver without connecting."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        make_url(url).get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as err:
        raise ConfigError(f"invalid Optuna storage URL {redact_url(url)!r}: {redact_text(str(err))}") from None
    except ImportError as err:
        raise ConfigError(f"Optuna storage {redact_url(url)!r} needs a database driver: {err}") from None


def check_storage_reachable(url: str) -> None:
    """Connect once to a database server (not SQLite) so a wrong host or password fails before any work."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    if _backend(url) == "sqlite":
        return
    try:
        engine = sqlalchemy.create_engine(url, poolclass=NullPool, connect_args=_connect_args(url))
        with engine.connect():
            pass
        engine.dispose()
    except Exception as err:  # noqa: BLE001 - each driver raises its own types
        raise ConfigError(f"cannot connect to Optuna storage {redact_url(url)}: {_first_line(err)}") from None


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage with a heartbeat; a bad URL or server is a ConfigError, not a traceback.

    SQLite gets a long busy timeout and write-ahead logging, so local workers writing at once
    wait for each other instead of failing with "database is locked".
    """
    engine_kwargs: dict = {}
    if _backend(url) == "sqlite":
        db = _sqlite_path(url)
        if db is not None:
            private_dir(db.parent)  # mlruns/ holds databases and models: 0700
            use_wal(db)
        engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    elif _backend(url) == "postgresql":
        engine_kwargs = {"connect_args": _connect_args(url), "pool_pre_ping": True}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=60, grace_period=180)
    except Exception as err:  # noqa: BLE001 - SQLAlchemy raises many types for a bad URL or server
        raise ConfigError(f"cannot open Optuna storage {redact_url(url)}: {_first_line(err)}") from None


class StudyLock:
    """A lock shared by every worker of one study on one storage; hold it with ``with lock:``.

    PostgreSQL: a session advisory lock on a connection of its own. SQLite: ``flock`` on the
    folder that holds the database (no extra file to clean up). Other back ends: no lock
    (concurrent workers may then start a few trials more than the total).
    ``release`` is idempotent, so the lock can be handed back early from inside the block.
    """

    def __init__(self, url: str, study_name: str):
        self._key = int.from_bytes(hashlib.sha256(f"runner:{study_name}".encode()).digest()[:8], "big", signed=True)
        self._conn = None
        self._fd: int | None = None
        self._held = False
        backend = _backend(url)
        if backend == "postgresql":
            import sqlalchemy
            from sqlalchemy.pool import NullPool

            engine = sqlalchemy.create_engine(url, poolclass=NullPool, connect_args=_connect_args(url))
            # Autocommit: the lock belongs to the session, and no transaction is left open while it is held.
            self._conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        elif backend == "sqlite" and _sqlite_path(url) is not None:
            folder = private_dir(_sqlite_path(url).parent)
            self._fd = os.open(folder, os.O_RDONLY)
        else:
            log.debug("no lock for storage %s: workers are not serialised", redact_url(url))

    def acquire(self) -> None:
        """Block until this process holds the lock."""
        if self._held:
            return
        if self._conn is not None:
            from sqlalchemy import text

            self._conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": self._key})
        elif self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_EX)
        self._held = True

    def release(self) -> None:
        """Let the next worker in (no-op when not held)."""
        if not self._held:
            return
        self._held = False
        if self._conn is not None:
            from sqlalchemy import text

            self._conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self._key})
        elif self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Release and drop the connection or file descriptor."""
        self.release()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StudyLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def is_shared_storage(url: str) -> bool:
    """False for storages one process alone can see (an in-memory SQLite database)."""
    return not (_backend(url) == "sqlite" and _sqlite_path(url) is None)


def _backend(url: str) -> str:
    return url.split(":", 1)[0].split("+", 1)[0].lower()


def _sqlite_path(url: str) -> Path | None:
    db = url.split("///", 1)[1] if "///" in url else ""
    db = db.split("?", 1)[0]
    return None if db in ("", ":memory:") else Path(db)


def _connect_args(url: str) -> dict:
    return {"connect_timeout": CONNECT_TIMEOUT_S} if _backend(url) in ("postgresql", "mysql") else {}


def _first_line(err: BaseException) -> str:
    # A driver's message may quote the URL it was given (psycopg does on a bad port).
    lines = redact_text(str(err)).strip().splitlines()
    return lines[0] if lines else type(err).__name__

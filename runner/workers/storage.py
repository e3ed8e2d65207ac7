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
import warnings
from types import TracebackType

import optuna

from runner.errors import ConfigError, first_line
from runner.files import SQLITE_TIMEOUT_S, private_dir, sqlite_file, use_wal
from runner.redact import redact_text, redact_url

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5  # an unreachable database server fails fast, not after the OS's TCP timeout


class UnknownStudy(ConfigError):
    """The storage does not hold the study (or, for SQLite, does not exist yet)."""


def check_storage_url(url: str) -> None:
    """Reject a malformed storage URL or a missing database driver without connecting."""
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    parsed = _parse(url)
    try:
        parsed.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as err:
        raise _invalid(url, err) from None
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
        # A driver's message may quote the URL it was given (psycopg does on a bad port).
        why = redact_text(first_line(err))
        raise ConfigError(f"cannot connect to Optuna storage {redact_url(url)}: {why}") from None


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage with a heartbeat; a bad URL or server is a ConfigError, not a traceback.

    SQLite gets a long busy timeout and write-ahead logging, so local workers writing at once
    wait for each other instead of failing with "database is locked".
    """
    engine_kwargs: dict = {}
    if _backend(url) == "sqlite":
        db = sqlite_file(url)
        if db is not None:
            private_dir(db.parent)  # mlruns/ holds databases and models: 0700
            use_wal(db)
        engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    elif _backend(url) == "postgresql":
        engine_kwargs = {"connect_args": _connect_args(url), "pool_pre_ping": True}
    try:
        with warnings.catch_warnings():  # the heartbeat is experimental in Optuna 5; we rely on it knowingly
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=60, grace_period=180)
    except Exception as err:  # noqa: BLE001 - SQLAlchemy raises many types for a bad URL or server
        why = redact_text(first_line(err))  # the message may quote the URL, password included
        raise ConfigError(f"cannot open Optuna storage {redact_url(url)}: {why}") from None


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
        elif backend == "sqlite" and sqlite_file(url) is not None:
            folder = private_dir(sqlite_file(url).parent)
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

    def try_acquire(self) -> bool:
        """Take the lock only if no one else holds it, without waiting; True when this process holds it."""
        if self._held:
            return True
        if self._conn is not None:
            from sqlalchemy import text

            query = text("SELECT pg_try_advisory_lock(:key)")
            self._held = bool(self._conn.execute(query, {"key": self._key}).scalar())
            return self._held
        if self._fd is not None:
            import fcntl

            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
        self._held = True
        return True

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


def load_existing_study(url: str, name: str) -> optuna.Study:
    """The study ``name`` in the storage at ``url``; creates nothing (``optuna.load_study`` would create
    a missing SQLite file).

    A missing SQLite file or an unknown name is an ``UnknownStudy`` error that lists the studies
    the storage holds; a bad URL or server is a ConfigError.
    """
    check_storage_url(url)
    db = sqlite_file(url)
    if db is not None and not db.is_file():
        raise UnknownStudy(f"no Optuna storage at {db}: run a sweep first, or pass --storage")
    storage = open_storage(url)
    names = optuna.study.get_all_study_names(storage)
    if name not in names:
        known = f" (known: {', '.join(sorted(names))})" if names else ""
        raise UnknownStudy(f"unknown study {name!r} in {redact_url(url)}{known}")
    return optuna.load_study(study_name=name, storage=storage)


def is_shared_storage(url: str) -> bool:
    """False for storages one process alone can see (an in-memory SQLite database)."""
    return not (_backend(url) == "sqlite" and sqlite_file(url) is None)


def _parse(url: str):
    """``url`` as SQLAlchemy reads it (a ``sqlalchemy.engine.URL``); a malformed one is a ConfigError."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url)
    except (ArgumentError, ValueError) as err:
        raise _invalid(url, err) from None


def _invalid(url: str, err: Exception) -> ConfigError:
    return ConfigError(f"invalid Optuna storage URL {redact_url(url)!r}: {redact_text(str(err))}")


def _backend(url: str) -> str:
    """``sqlite``, ``postgresql``, ``mysql``...: the database kind, whatever the driver (``+psycopg``)."""
    return _parse(url).get_backend_name().lower()


def _connect_args(url: str) -> dict:
    return {"connect_timeout": CONNECT_TIMEOUT_S} if _backend(url) in ("postgresql", "mysql") else {}

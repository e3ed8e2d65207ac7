"""The local folders and files runner creates: private folders, SQLite files in write-ahead mode.

Shared by the Optuna storage (runner.workers), the MLflow store and the best models (runner.record).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

SQLITE_TIMEOUT_S = 60  # concurrent local workers wait for each other's writes instead of failing at once


def private_dir(path: str | Path) -> Path:
    """Create ``path`` and its missing parents with mode 0700; folders that exist keep their mode.

    ``mlruns/`` holds the databases, artifacts and models: other users of the machine have no
    business reading them (``mkdir(parents=True)`` would give the parents the default mode).
    """
    path = Path(path)
    if path.parent != path and not path.parent.is_dir():
        private_dir(path.parent)
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def sqlite_file(url: str) -> Path | None:
    """The file a SQLite URL names (``sqlite:///rel.db``, ``sqlite:////abs.db``), else None.

    None for an in-memory database, another back end, or text that is no URL. Parsed with
    SQLAlchemy's ``make_url``, as Optuna's storage and MLflow's store parse it themselves.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return None
    if parsed.get_backend_name().lower() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def use_wal(db: Path) -> None:
    """Switch a SQLite file to write-ahead logging (stored in the file: once is enough)."""
    with sqlite3.connect(db, timeout=SQLITE_TIMEOUT_S) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
    conn.close()

"""The one way every store opens ``state_dir/releasegate.db``: WAL, autocommit, a generous busy wait, and
IMMEDIATE transactions so check-then-write is atomic across processes.

Read-only commands (``status``, ``history``, ``approvals`` ...) run inside ``reading_only()``: there, a state dir
that holds no database yet is read as an empty one, in memory, so looking around in a directory where releasegate
never ran does not leave a ``.releasegate`` behind.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from releasegate.errors import UserError

_READING: ContextVar[bool] = ContextVar("releasegate_reading_only", default=False)


@contextmanager
def reading_only() -> Iterator[None]:
    """Open missing databases as empty in-memory ones (nothing is created on disk) while this block runs."""
    token = _READING.set(True)
    try:
        yield
    finally:
        _READING.reset(token)


def open_db(state_dir: Path) -> sqlite3.Connection:
    if _READING.get() and not (state_dir / "releasegate.db").exists():
        empty = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        empty.row_factory = sqlite3.Row
        return empty
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--state-dir {state_dir}: cannot create it ({exc.strerror}); choose a writable "
                        "directory or set RELEASEGATE_HOME") from None
    db = sqlite3.connect(state_dir / "releasegate.db", timeout=30, isolation_level=None, check_same_thread=False)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA busy_timeout=30000")
    _wal(db)
    db.execute("PRAGMA synchronous=NORMAL")
    return db


def _wal(db: sqlite3.Connection) -> None:
    """Switching a new database to WAL takes an exclusive lock without waiting on the busy handler, so two
    processes opening a fresh state dir at once can be told "locked" at once: retry for a while."""
    deadline = time.monotonic() + 30
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


@contextmanager
def immediate(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """An IMMEDIATE transaction: the write lock is taken before anything is read."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def create_schema(db: sqlite3.Connection, schema: str) -> None:
    with immediate(db):
        for statement in schema.split(";"):
            if statement.strip():
                db.execute(statement)

"""The one way every store opens ``state_dir/releasegate.db``: WAL, autocommit, a generous busy wait, and
IMMEDIATE transactions so check-then-write is atomic across processes.

Read-only commands (``status``, ``history``, ``approvals`` ...) run inside ``reading_only()``: there, a state dir
that holds no database yet is read as an empty one, in memory, so looking around in a directory where releasegate
never ran does not leave a ``.releasegate`` behind.

The state dir holds specs (with whatever secrets they carry), tokens' hashes and the audit log, so it is private:
created 0700, the database made 0600 as soon as SQLite creates it (its ``-wal`` and ``-shm`` take its mode). A
state dir or database found wider (an older releasegate, a umask of 022) is tightened the first time a command
writes there; nothing is changed by commands that only read.

``immediate`` runs the callbacks registered on ``Connection.on_end`` when the transaction ends (committed or not):
the audit log writes its head file there, after the entry is durable in the database.

The store may instead be a PostgreSQL database (``--store postgresql://...`` or ``RELEASEGATE_STORE``, chosen once
per process by ``use_store``): ``open_db`` then returns ``releasegate.store.pg.Connection``, which the store
classes use as they use a sqlite3 one (``DB``). The state dir still holds the local files (router configs, logs,
the audit head file). ``immediate`` takes one advisory lock there, so writers queue as they do on SQLite's lock.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from releasegate.errors import UserError
from releasegate.fileio import PRIVATE_FILE, private_dir, tighten
from releasegate.store import pg

_READING: ContextVar[bool] = ContextVar("releasegate_reading_only", default=False)
STORE_ENV = "RELEASEGATE_STORE"
DB = Any
"""A store connection: ``sqlite3.Connection`` or ``pg.Connection`` (execute, executemany, close, ``on_end``)."""


class _Chosen:
    made: bool = False
    url: str | None = None


def use_store(url: str | None) -> None:
    """Make every store this process opens use the PostgreSQL database at ``url`` (None: the state dir's SQLite),
    whatever ``RELEASEGATE_STORE`` says (``--store`` wins over it)."""
    _Chosen.made, _Chosen.url = True, url


def forget_store() -> None:
    """Back to the default: ``RELEASEGATE_STORE`` if set, else SQLite (for tests that ran ``use_store``)."""
    _Chosen.made, _Chosen.url = False, None


def store_url() -> str | None:
    """The PostgreSQL URL in use: the one ``use_store`` chose, else ``RELEASEGATE_STORE`` when it names one."""
    if _Chosen.made:
        return _Chosen.url
    env = os.environ.get(STORE_ENV, "")
    return env if pg.is_url(env) else None


def is_pg(db: DB) -> bool:
    return getattr(db, "dialect", "sqlite") == "postgresql"


def has_store(state_dir: Path) -> bool:
    """Is there a store to read (a PostgreSQL one always is; a SQLite one once its file exists)?"""
    return store_url() is not None or (state_dir / "releasegate.db").is_file()


def tables(db: DB) -> set[str]:
    """The names of the database's tables."""
    if is_pg(db):
        return {row[0] for row in db.execute("SELECT table_name FROM information_schema.tables WHERE "
                                             "table_schema = current_schema()")}
    return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def tiebreak(db: DB) -> str:
    """The column that orders rollouts created in the same instant: SQLite's insertion order (``rowid``), the id
    on PostgreSQL (which keeps no insertion order of its own)."""
    return "id" if is_pg(db) else "rowid"


@contextmanager
def reading_only() -> Iterator[None]:
    """Open missing databases as empty in-memory ones (nothing is created on disk) while this block runs."""
    token = _READING.set(True)
    try:
        yield
    finally:
        _READING.reset(token)


class Connection(sqlite3.Connection):
    """A connection that knows its state dir and what to do when the current transaction ends."""

    state_dir: Path | None = None
    on_end: list[Callable[[bool], None]]

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.on_end = []


def open_db(state_dir: Path) -> DB:
    url = store_url()
    if url is not None:
        if _READING.get() and not state_dir.is_dir():
            return pg.connect(url, None)  # looking creates nothing; no head file to read or write here
        _private_dir(state_dir)  # the audit head file lives there
        return pg.connect(url, state_dir)
    if _READING.get() and not (state_dir / "releasegate.db").exists():
        empty = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False, factory=Connection)
        empty.row_factory = sqlite3.Row
        return empty
    path = state_dir / "releasegate.db"
    _private_dir(state_dir)
    db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False, factory=Connection)
    # Tightened by path, right after SQLite created the (still empty) file and before WAL mode creates the -wal and
    # -shm (which take the database's mode). Never open and close the database file here: closing any descriptor
    # of it drops every POSIX lock this process holds on it, the locks other connections' SQLite relies on.
    for name in ("releasegate.db", "releasegate.db-wal", "releasegate.db-shm"):
        tighten(state_dir / name, PRIVATE_FILE)
    db.state_dir = state_dir
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA busy_timeout=30000")
    _wal(db)
    db.execute("PRAGMA synchronous=NORMAL")
    return db


def _private_dir(state_dir: Path) -> None:
    try:
        private_dir(state_dir)
    except OSError as exc:
        raise UserError(f"--state-dir {state_dir}: cannot create it ({exc.strerror}); choose a writable "
                        "directory or set RELEASEGATE_HOME") from None


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
def immediate(db: DB) -> Iterator[DB]:
    """An IMMEDIATE transaction: the write lock is taken before anything is read. On PostgreSQL: READ COMMITTED
    (each statement sees what committed before it, so what the lock's previous holder wrote) after one advisory
    lock that every writer takes, so check-then-write is as atomic as under SQLite's single writer."""
    if is_pg(db):
        db.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
        try:
            db.execute("SELECT pg_advisory_xact_lock(?)", (pg.WRITE_LOCK,))
        except BaseException:
            db.execute("ROLLBACK")
            raise
    else:
        db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        try:
            db.execute("ROLLBACK")
        finally:
            _ended(db, False)
        raise
    try:
        db.execute("COMMIT")
    except BaseException:
        _ended(db, False)
        raise
    _ended(db, True)


def _ended(db: DB, committed: bool) -> None:
    """Run (once) what was registered for the end of this transaction."""
    hooks = getattr(db, "on_end", None)
    while hooks:
        hooks.pop(0)(committed)


def create_schema(db: DB, schema: str) -> None:
    """SQLite: create what is missing. PostgreSQL: nothing (its schema is the migrations', applied at open)."""
    if is_pg(db):
        return
    with immediate(db):
        for statement in schema.split(";"):
            if statement.strip():
                db.execute(statement)

"""The PostgreSQL side of the store: a psycopg 3 connection that looks, to the store classes, like the sqlite3
connection they were written against.

Why an adaptor and not a second implementation of every store: the stores' SQL is kept portable (``ON CONFLICT``,
``RETURNING``, subqueries with aliases), so the only differences left are the placeholder (``?`` here, ``%s`` for
psycopg, done by ``_placeholders``), how a row is read (by name and by index, ``Row``) and how a write transaction
takes the lock (``releasegate.store.db.immediate``: one ``pg_advisory_xact_lock``, PostgreSQL's stand-in for
SQLite's single writer). The connection runs in autocommit, as the sqlite3 ones do (``isolation_level=None``), so
``BEGIN``/``COMMIT`` mean the same on both; a plain ``BEGIN`` (a read snapshot: ``audit verify``, the metrics
collector) is made REPEATABLE READ, which is what a deferred SQLite transaction gives.

Passwords: the URL's password is never put in a message (``redact``); psycopg's own messages do not carry it.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from releasegate.errors import UserError

WRITE_LOCK = 0x72656c67  # "relg": the advisory lock every write transaction takes (immediate)
MIGRATION_LOCK = 0x72656c6d  # "relm": held while the schema is upgraded, so servers starting at once queue
SCHEMES = ("postgresql://", "postgres://")
FIX = ("give --store (or RELEASEGATE_STORE) as postgresql://USER[:PASSWORD]@HOST:PORT/DATABASE, or "
       "sqlite:///PATH/releasegate.db")


def is_url(store: str) -> bool:
    return store.startswith(SCHEMES)


def redact(url: str) -> str:
    """The URL with its password (in the authority or as libpq's ``?password=``) replaced by ``***``: what every
    message shows."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url.rsplit("@", 1)[-1] if "@" in url else url
    if password is not None:
        host = parts.netloc.rsplit("@", 1)[1]
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{host}")
    query = re.sub(r"(^|&)password=[^&]*", r"\1password=***", parts.query)
    return urlunsplit(parts._replace(query=query))


class Row(tuple[Any, ...]):
    """A result row addressable by column name and by index, with ``keys()`` (so ``dict(row)`` works)."""

    _names: dict[str, int]

    def __new__(cls, values: Sequence[Any], names: dict[str, int]) -> Row:
        row = super().__new__(cls, values)
        row._names = names
        return row

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return super().__getitem__(self._names[key])
        return super().__getitem__(key)

    def keys(self) -> list[str]:
        return list(self._names)


class Cursor:
    """The part of ``sqlite3.Cursor`` the stores use, over the rows psycopg returned."""

    def __init__(self, description: Sequence[Any] | None, rows: list[tuple[Any, ...]], rowcount: int) -> None:
        names = {column.name: i for i, column in enumerate(description or ())}
        self._rows = iter([Row(values, names) for values in rows])
        self.rowcount = rowcount
        self.lastrowid: int | None = None  # PostgreSQL has none: the stores use RETURNING

    def fetchone(self) -> Row | None:
        return next(self._rows, None)

    def fetchall(self) -> list[Row]:
        return list(self._rows)

    def __iter__(self) -> Iterator[Row]:
        return self._rows


def _placeholders(sql: str) -> str:
    """``?`` to ``%s`` and ``%`` to ``%%`` outside quoted text (the stores' SQL has no other dialect in it)."""
    out, quote = [], ""
    for char in sql:
        if quote:
            if char == quote:
                quote = ""
            out.append("%%" if char == "%" else char)
        elif char in "'\"":
            quote = char
            out.append(char)
        else:
            out.append("%s" if char == "?" else "%%" if char == "%" else char)
    return "".join(out)


class Connection:
    """A psycopg connection in autocommit behind the sqlite3 interface the store classes use."""

    dialect = "postgresql"

    def __init__(self, raw: Any, state_dir: Path | None, url: str = "") -> None:
        self._raw, self._url = raw, url
        self.state_dir = state_dir
        self.on_end: list[Callable[[bool], None]] = []

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = (), /) -> Cursor:
        if sql.strip().upper() == "BEGIN":
            sql = "BEGIN ISOLATION LEVEL REPEATABLE READ"
        with self._raw.cursor() as cur:
            if params:
                cur.execute(_placeholders(sql), params)
            else:
                cur.execute(sql)
            rows = cur.fetchall() if cur.description is not None else []
            return Cursor(cur.description, rows, cur.rowcount)

    def executemany(self, sql: str, seq: Sequence[Sequence[Any]], /) -> Cursor:
        with self._raw.cursor() as cur:
            cur.executemany(_placeholders(sql), seq)
            return Cursor(None, [], cur.rowcount)

    def close(self) -> None:
        """Back to the idle pool (``_IDLE``) when it is healthy and outside a transaction, else closed."""
        raw, self._raw = self._raw, None
        if raw is not None:
            _give_back(self._url, raw)


def connect_raw(url: str) -> Any:
    """A psycopg connection (autocommit), or one line saying what is wrong and how to fix it."""
    import psycopg

    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=10)
    except psycopg.ProgrammingError as exc:  # libpq could not parse the URL
        raise UserError(f"--store {redact(url)}: not a PostgreSQL URL ({_first_line(exc, url)}); {FIX}") from None
    except psycopg.OperationalError as exc:
        raise UserError(f"--store {redact(url)}: {_why(exc, url)}") from None


def _first_line(exc: Exception, url: str) -> str:
    """The first line of psycopg's message (which does not quote the password; replaced anyway, should it)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    for password in _passwords(url):
        text = text.replace(password, "***")
    return text


def _passwords(url: str) -> list[str]:
    try:
        parts = urlsplit(url)
        found = [parts.password] if parts.password else []
    except ValueError:
        return []
    return found + [m[1] for m in re.finditer(r"(?:^|&)password=([^&]+)", parts.query)]


def _why(exc: Exception, url: str) -> str:
    text = _first_line(exc, url)
    low = str(exc).lower()
    if "password authentication failed" in low or "no password supplied" in low or "authentication" in low:
        return (f"authentication failed ({text}); check the user and password in --store or RELEASEGATE_STORE "
                "(or PGPASSWORD / ~/.pgpass)")
    if re.search(r"database \".*\" does not exist", low):
        return f"no such database ({text}); create it (createdb) or name another one in --store / RELEASEGATE_STORE"
    if "role" in low and "does not exist" in low:
        return f"no such user ({text}); name an existing role in --store / RELEASEGATE_STORE"
    return (f"cannot reach the PostgreSQL server ({text}); is it running and is HOST:PORT in --store / "
            "RELEASEGATE_STORE right?")


_IDLE: dict[str, list[tuple[float, Any]]] = {}
"""Open connections no store object holds, per URL, newest last. Why: the server opens a store per request, and a
new PostgreSQL connection costs milliseconds (authentication, a backend process) where SQLite's costs microseconds."""
_IDLE_MAX, _IDLE_SECONDS = 8, 30.0
_IDLE_LOCK = threading.Lock()


def _give_back(url: str, raw: Any) -> None:
    import psycopg

    healthy = url and not raw.closed and raw.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    if healthy:
        with _IDLE_LOCK:
            idle = _IDLE.setdefault(url, [])
            if len(idle) < _IDLE_MAX:
                idle.append((time.monotonic(), raw))
                return
    raw.close()


def _take(url: str) -> Any | None:
    """A pooled connection used within the last ``_IDLE_SECONDS`` (older ones are closed: the server may have
    dropped them), or None."""
    while True:
        with _IDLE_LOCK:
            idle = _IDLE.get(url)
            if not idle:
                return None
            since, raw = idle.pop()
        if time.monotonic() - since < _IDLE_SECONDS and not raw.closed:
            return raw
        raw.close()


_MIGRATED: set[str] = set()
_MIGRATING = threading.Lock()  # Alembic's context is module-global: one upgrade at a time in a process


def connect(url: str, state_dir: Path | None) -> Connection:
    """Open the store's database, bringing its schema to the newest version first (once per process)."""
    raw = _take(url)
    if raw is not None:
        return Connection(raw, state_dir, url)
    raw = connect_raw(url)
    if url not in _MIGRATED:
        from releasegate.store.pg_migrations import upgrade

        try:
            with _MIGRATING:
                if url not in _MIGRATED:
                    upgrade(url)
                    _MIGRATED.add(url)
        except Exception as exc:
            raw.close()
            cause = getattr(exc, "orig", None) or exc  # SQLAlchemy wraps psycopg's error
            raise UserError(f"--store {redact(url)}: cannot bring the store's schema up to date "
                            f"({_first_line(cause, url)}); the user needs CREATE on the database's schema (make it "
                            "the database's owner) the first time, and every time releasegate adds a schema "
                            "version") from None
        except BaseException:
            raw.close()
            raise
    return Connection(raw, state_dir, url)


__all__ = ["MIGRATION_LOCK", "SCHEMES", "WRITE_LOCK", "Connection", "Cursor", "Row", "connect", "connect_raw",
           "is_url", "redact"]

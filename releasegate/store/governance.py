"""Releases, sign-offs (approvals and rejections), identity tokens, environment successes and the stored policy and
calendar (every version kept), in SQLite.

The tables live in the main store's file (``state_dir/releasegate.db``, WAL) next to the audit log, so a sign-off
and its audit entry commit in one transaction: there is never an approval the log does not show, nor a logged
approval that did not happen. Every write runs under ``BEGIN IMMEDIATE``: the rules ("a user counts once per
release") are checked and the row written while holding the write lock, so two racing ``approve`` commands cannot
both pass a check that only one of them may pass.

Nothing is deleted: a sign-off that no longer counts (the artifact changed, a rejection was withdrawn) gets
``void_at`` and ``void_reason``, so ``approvals`` and the audit trail can still show it. A policy or calendar
applied again is a new version; the old ones stay for ``policy history`` and the diffs in the audit log.

``GovernanceStore(state_dir, readonly=True)`` is for commands that only look (``plan --env``, ``approvals``,
``calendar show``): it never creates the state dir nor writes to the database; tables an older state dir lacks
read as empty.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from releasegate.store import audit
from releasegate.store.db import DB, is_pg, store_url, tables

SCHEMA = """
CREATE TABLE IF NOT EXISTS gov_releases (
    service TEXT NOT NULL,
    version TEXT NOT NULL,
    author TEXT NOT NULL,
    digest TEXT,
    commit_sha TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    breaking_migration INTEGER NOT NULL DEFAULT 0,
    commit_at REAL,
    PRIMARY KEY (service, version)
);
CREATE TABLE IF NOT EXISTS gov_signoffs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    service TEXT NOT NULL,
    version TEXT NOT NULL,
    env TEXT NOT NULL,
    stage TEXT NOT NULL,
    user_name TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('approval', 'rejection')),
    checks TEXT NOT NULL DEFAULT '[]',
    reason TEXT,
    digest TEXT,
    commit_sha TEXT,
    at REAL NOT NULL,
    void_at REAL,
    void_reason TEXT
);
CREATE INDEX IF NOT EXISTS gov_signoffs_by_release ON gov_signoffs(service, version, kind);
CREATE TABLE IF NOT EXISTS gov_tokens (
    user_name TEXT PRIMARY KEY,
    hash TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS gov_env_successes (
    service TEXT NOT NULL,
    version TEXT NOT NULL,
    env TEXT NOT NULL,
    succeeded_at REAL NOT NULL,
    PRIMARY KEY (service, version, env)
);
CREATE TABLE IF NOT EXISTS gov_documents (
    kind TEXT NOT NULL CHECK (kind IN ('policy', 'calendar')),
    version INTEGER NOT NULL,
    content TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    actor TEXT NOT NULL,
    os_user TEXT NOT NULL,
    source TEXT,
    at REAL NOT NULL,
    PRIMARY KEY (kind, version)
);
"""


@dataclass(frozen=True)
class Release:
    """``SERVICE@VERSION`` with who registered it and the artifact its approvals are tied to."""

    service: str
    version: str
    author: str
    digest: str | None
    commit: str | None
    created_at: float
    updated_at: float
    breaking_migration: bool = False
    """Registered with ``--allow-breaking-migration``: its approvals cover a backward-incompatible migration."""
    commit_at: float | None = None
    """When ``commit`` was committed (Unix time), where known: the start of the DORA lead time (docs/dora.md)."""

    @property
    def name(self) -> str:
        return f"{self.service}@{self.version}"


@dataclass(frozen=True)
class Signoff:
    """An approval or a rejection of one stage of one environment, given for one artifact digest."""

    id: int
    service: str
    version: str
    env: str
    stage: str
    user: str
    kind: str
    checks: tuple[str, ...]
    reason: str | None
    digest: str | None
    commit: str | None
    at: float
    void_at: float | None
    void_reason: str | None

    @property
    def active(self) -> bool:
        return self.void_at is None


@dataclass(frozen=True)
class StoredDocument:
    """One version of the stored policy or calendar: the exact text that was validated, and who applied it."""

    kind: str
    version: int
    content: str
    sha256: str
    actor: str
    os_user: str
    source: str | None
    at: float

    @property
    def label(self) -> str:
        """``stored policy v3``: how messages name it."""
        return f"stored {self.kind} v{self.version}"


class GovernanceStore:
    """Open per use case and close (or use ``with``); reads outside ``tx`` see the last committed state."""

    def __init__(self, state_dir: Path, *, readonly: bool = False) -> None:
        self._db: DB
        if readonly and store_url() is None:
            self._db = _open_readonly(Path(state_dir))
            return
        self._db = audit.open_db(Path(state_dir))
        if is_pg(self._db):
            return  # the schema is the migrations' (releasegate.store.pg_migrations), brought up to date at open
        self._db.execute("PRAGMA synchronous=FULL")  # audit entries are durable before their head-file lines
        audit.create_schema(self._db, audit.SCHEMA + SCHEMA)
        self._upgrade()

    def _upgrade(self) -> None:
        """State dirs written before a column existed get it (with its default) on first open."""
        added = {"breaking_migration": "INTEGER NOT NULL DEFAULT 0", "commit_at": "REAL"}
        columns = {row["name"] for row in self._db.execute("PRAGMA table_info(gov_releases)")}
        if set(added) <= columns:
            return
        with audit.immediate(self._db) as db:
            columns = {row["name"] for row in db.execute("PRAGMA table_info(gov_releases)")}
            for name, kind in added.items():
                if name not in columns:
                    db.execute(f"ALTER TABLE gov_releases ADD COLUMN {name} {kind}")

    def close(self) -> None:
        self._db.close()

    def has_table(self, name: str) -> bool:
        """Whether the database file itself has ``name`` (not a read-only connection's empty TEMP stand-in)."""
        if is_pg(self._db):
            return name in tables(self._db)
        return self._db.execute("SELECT 1 FROM main.sqlite_master WHERE type='table' AND name=?",
                                (name,)).fetchone() is not None

    def __enter__(self) -> GovernanceStore:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @contextmanager
    def tx(self) -> Iterator[DB]:
        """BEGIN IMMEDIATE ... COMMIT; pass the connection to ``audit.append_entry`` to log in the same commit."""
        with audit.immediate(self._db) as db:
            yield db

    # --- releases ------------------------------------------------------------------------------------------------

    def release(self, service: str, version: str) -> Release | None:
        row = self._db.execute("SELECT * FROM gov_releases WHERE service=? AND version=?",
                               (service, version)).fetchone()
        return None if row is None else _release(row)

    def releases(self, limit: int = 200) -> list[Release]:
        """The ``limit`` most recently registered releases, newest first (the dashboard's list of releases)."""
        rows = self._db.execute("SELECT * FROM gov_releases ORDER BY created_at DESC, service, version LIMIT ?",
                                (limit,))
        return [_release(row) for row in rows]

    def put_release(self, release: Release) -> None:
        self._db.execute(
            "INSERT INTO gov_releases (service, version, author, digest, commit_sha, created_at, updated_at, "
            "breaking_migration, commit_at) VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(service, version) DO UPDATE SET "
            "digest=excluded.digest, commit_sha=excluded.commit_sha, updated_at=excluded.updated_at, "
            "breaking_migration=excluded.breaking_migration, commit_at=excluded.commit_at",
            (release.service, release.version, release.author, release.digest, release.commit, release.created_at,
             release.updated_at, int(release.breaking_migration), release.commit_at))

    # --- sign-offs -----------------------------------------------------------------------------------------------

    def signoffs(self, service: str, version: str, kind: str | None = None, *,
                 active_only: bool = True) -> list[Signoff]:
        sql = "SELECT * FROM gov_signoffs WHERE service=? AND version=?"
        args: list[object] = [service, version]
        if kind is not None:
            sql += " AND kind=?"
            args.append(kind)
        if active_only:
            sql += " AND void_at IS NULL"
        return [_signoff(row) for row in self._db.execute(sql + " ORDER BY id", args)]

    def add_signoff(self, release: Release, env: str, stage: str, user: str, kind: str, at: float,
                    checks: tuple[str, ...] = (), reason: str | None = None) -> Signoff:
        row = self._db.execute(
            "INSERT INTO gov_signoffs (service, version, env, stage, user_name, kind, checks, reason, digest, "
            "commit_sha, at) VALUES (?,?,?,?,?,?,?,?,?,?,?) RETURNING id",
            (release.service, release.version, env, stage, user, kind, json.dumps(list(checks)), reason,
             release.digest, release.commit, at)).fetchone()
        return Signoff(int(row[0]), release.service, release.version, env, stage, user, kind, checks,
                       reason, release.digest, release.commit, at, None, None)

    def void(self, ids: list[int], at: float, reason: str) -> None:
        self._db.executemany("UPDATE gov_signoffs SET void_at=?, void_reason=? WHERE id=? AND void_at IS NULL",
                             [(at, reason, i) for i in ids])

    # --- tokens --------------------------------------------------------------------------------------------------

    def token_hash(self, user: str) -> str | None:
        row = self._db.execute("SELECT hash FROM gov_tokens WHERE user_name=?", (user,)).fetchone()
        return str(row["hash"]) if row else None

    def set_token_hash(self, user: str, token_hash: str, at: float) -> bool:
        """Store the hash, replacing the user's previous one; True when there was one."""
        replaced = self.token_hash(user) is not None
        self._db.execute("INSERT INTO gov_tokens (user_name, hash, created_at) VALUES (?,?,?) ON CONFLICT(user_name) "
                         "DO UPDATE SET hash=excluded.hash, created_at=excluded.created_at", (user, token_hash, at))
        return replaced

    # --- environment pipeline ------------------------------------------------------------------------------------

    def set_env_success(self, service: str, version: str, env: str, at: float) -> None:
        self._db.execute("INSERT INTO gov_env_successes (service, version, env, succeeded_at) VALUES (?,?,?,?) "
                         "ON CONFLICT(service, version, env) DO UPDATE SET succeeded_at=excluded.succeeded_at",
                         (service, version, env, at))

    def env_success(self, service: str, version: str, env: str) -> float | None:
        row = self._db.execute("SELECT succeeded_at FROM gov_env_successes WHERE service=? AND version=? AND env=?",
                               (service, version, env)).fetchone()
        return float(row["succeeded_at"]) if row else None


    # --- the stored policy and calendar --------------------------------------------------------------------------

    def document(self, kind: str, version: int | None = None) -> StoredDocument | None:
        """The latest version of ``kind`` (``policy`` or ``calendar``), or the given one; None when none."""
        sql = "SELECT * FROM gov_documents WHERE kind=?" + (" AND version=?" if version is not None else "")
        args: tuple[object, ...] = (kind, version) if version is not None else (kind,)
        row = self._db.execute(sql + " ORDER BY version DESC LIMIT 1", args).fetchone()
        return _document(row) if row else None

    def documents(self, kind: str) -> list[StoredDocument]:
        return [_document(row) for row in self._db.execute("SELECT * FROM gov_documents WHERE kind=? ORDER BY "
                                                          "version", (kind,))]

    def add_document(self, kind: str, content: str, sha256: str, actor: str, os_user: str, source: str | None,
                     at: float) -> StoredDocument:
        """The next version of ``kind``; call inside ``tx`` so the version number and the audit entry agree."""
        row = self._db.execute("SELECT MAX(version) FROM gov_documents WHERE kind=?", (kind,)).fetchone()
        version = int(row[0] or 0) + 1
        self._db.execute("INSERT INTO gov_documents (kind, version, content, sha256, actor, os_user, source, at) "
                         "VALUES (?,?,?,?,?,?,?,?)", (kind, version, content, sha256, actor, os_user, source, at))
        return StoredDocument(kind, version, content, sha256, actor, os_user, source, at)


_TABLE = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+)")


def _open_readonly(state_dir: Path) -> sqlite3.Connection:
    """The state's database opened read-only (an empty one in memory when there is none): looking changes nothing.

    Tables the file lacks (a state dir from an older releasegate, or one with rollouts only) are created as TEMP
    tables of this connection, in memory, so every query reads them as empty.
    """
    path = state_dir / "releasegate.db"
    if path.is_file():
        db = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=30, check_same_thread=False)
        db.execute("PRAGMA busy_timeout=30000")
        existing = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    else:
        db = sqlite3.connect(":memory:", check_same_thread=False)
        existing = set()
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA temp_store=MEMORY")
    for statement in (audit.SCHEMA + SCHEMA).split(";"):
        match = _TABLE.search(statement)
        if match is not None and match[1] not in existing:
            db.execute(statement.replace("CREATE TABLE", "CREATE TEMP TABLE", 1))
    return db


def _release(row: Any) -> Release:
    columns = row.keys()  # a read-only look at an old state dir may lack the column; `in row` checks values
    breaking = bool(row["breaking_migration"]) if "breaking_migration" in columns else False
    commit_at = row["commit_at"] if "commit_at" in columns else None
    return Release(row["service"], row["version"], row["author"], row["digest"], row["commit_sha"],
                   row["created_at"], row["updated_at"], breaking, commit_at)


def _document(row: Any) -> StoredDocument:
    return StoredDocument(row["kind"], int(row["version"]), row["content"], row["sha256"], row["actor"],
                          row["os_user"], row["source"], float(row["at"]))


def _signoff(row: Any) -> Signoff:
    return Signoff(int(row["id"]), row["service"], row["version"], row["env"], row["stage"], row["user_name"],
                   row["kind"], tuple(json.loads(row["checks"])), row["reason"], row["digest"], row["commit_sha"],
                   float(row["at"]), row["void_at"], row["void_reason"])


__all__ = ["SCHEMA", "GovernanceStore", "Release", "Signoff", "StoredDocument"]

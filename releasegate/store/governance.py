"""Releases, sign-offs (approvals and rejections), identity tokens and environment successes, in SQLite.

The tables live in the main store's file (``state_dir/releasegate.db``, WAL) next to the audit log, so a sign-off
and its audit entry commit in one transaction: there is never an approval the log does not show, nor a logged
approval that did not happen. Every write runs under ``BEGIN IMMEDIATE``: the rules ("a user counts once per
release") are checked and the row written while holding the write lock, so two racing ``approve`` commands cannot
both pass a check that only one of them may pass.

Nothing is deleted: a sign-off that no longer counts (the artifact changed, a rejection was withdrawn) gets
``void_at`` and ``void_reason``, so ``approvals`` and the audit trail can still show it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from releasegate.store import audit

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


class GovernanceStore:
    """Open per use case and close (or use ``with``); reads outside ``tx`` see the last committed state."""

    def __init__(self, state_dir: Path) -> None:
        self._db = audit.open_db(Path(state_dir))
        audit.create_schema(self._db, audit.SCHEMA + SCHEMA)
        self._upgrade()

    def _upgrade(self) -> None:
        """State dirs written before a column existed get it (with its default) on first open."""
        columns = {row["name"] for row in self._db.execute("PRAGMA table_info(gov_releases)")}
        if "breaking_migration" in columns:
            return
        with audit.immediate(self._db) as db:
            if "breaking_migration" not in {row["name"] for row in db.execute("PRAGMA table_info(gov_releases)")}:
                db.execute("ALTER TABLE gov_releases ADD COLUMN breaking_migration INTEGER NOT NULL DEFAULT 0")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> GovernanceStore:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT; pass the connection to ``audit.append_entry`` to log in the same commit."""
        with audit.immediate(self._db) as db:
            yield db

    # --- releases ------------------------------------------------------------------------------------------------

    def release(self, service: str, version: str) -> Release | None:
        row = self._db.execute("SELECT * FROM gov_releases WHERE service=? AND version=?",
                               (service, version)).fetchone()
        if row is None:
            return None
        return Release(row["service"], row["version"], row["author"], row["digest"], row["commit_sha"],
                       row["created_at"], row["updated_at"], bool(row["breaking_migration"]))

    def put_release(self, release: Release) -> None:
        self._db.execute(
            "INSERT INTO gov_releases (service, version, author, digest, commit_sha, created_at, updated_at, "
            "breaking_migration) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(service, version) DO UPDATE SET "
            "digest=excluded.digest, commit_sha=excluded.commit_sha, updated_at=excluded.updated_at, "
            "breaking_migration=excluded.breaking_migration",
            (release.service, release.version, release.author, release.digest, release.commit, release.created_at,
             release.updated_at, int(release.breaking_migration)))

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
        cur = self._db.execute(
            "INSERT INTO gov_signoffs (service, version, env, stage, user_name, kind, checks, reason, digest, "
            "commit_sha, at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (release.service, release.version, env, stage, user, kind, json.dumps(list(checks)), reason,
             release.digest, release.commit, at))
        return Signoff(int(cur.lastrowid or 0), release.service, release.version, env, stage, user, kind, checks,
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


def _signoff(row: sqlite3.Row) -> Signoff:
    return Signoff(int(row["id"]), row["service"], row["version"], row["env"], row["stage"], row["user_name"],
                   row["kind"], tuple(json.loads(row["checks"])), row["reason"], row["digest"], row["commit_sha"],
                   float(row["at"]), row["void_at"], row["void_reason"])


__all__ = ["SCHEMA", "GovernanceStore", "Release", "Signoff"]

"""What only the server keeps: its bearer tokens (role and service pattern, stored as hashes) and the
``Idempotency-Key`` answers of ``POST /api/v1/rollouts``.

Why a table of its own and not the identity tokens of ``--as``: a server token carries a role over a service
pattern (``deployer`` of ``shop-*``), an identity token only names a user of the stored policy. The hash is the same
(``releasegate.governance.identity.hash_token``: SHA-256 of a 256-bit random secret, compared in constant time),
and a token's name is the user the audit log records and the policy's stage roles judge. The tables live in the
state's database beside the rest, behind this class, on SQLite or PostgreSQL alike (``releasegate.store.db``).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from releasegate.store.audit import SCHEMA as AUDIT_SCHEMA
from releasegate.store.audit import append_entry
from releasegate.store.db import create_schema, immediate, open_db, tables

SCHEMA = """
CREATE TABLE IF NOT EXISTS server_tokens (
    name TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    pattern TEXT NOT NULL,
    created_at REAL NOT NULL,
    created_by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS server_sessions (
    id_hash TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL,
    csrf TEXT NOT NULL,
    expires REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS server_idempotency (
    key TEXT PRIMARY KEY,
    body_sha TEXT NOT NULL,
    rollout_id TEXT NOT NULL,
    actor TEXT NOT NULL,
    at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class Grant:
    """Who a token is: its name (the user), its role, and the services (fnmatch pattern) the role covers."""

    name: str
    role: str
    pattern: str
    created_at: float = 0.0
    created_by: str = ""


class ServerStore:
    """Open per use and close (or ``with``)."""

    def __init__(self, state_dir: Path, *, create: bool = False) -> None:
        """``create``: make the tables (the server does once at start; ``token new`` does). Without it, per
        request, no write transaction is taken just to open the store."""
        self._db = open_db(state_dir)
        if create or not self._has_tables():
            create_schema(self._db, AUDIT_SCHEMA + SCHEMA)

    def _has_tables(self) -> bool:
        return "server_idempotency" in tables(self._db)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ServerStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def put_token(self, grant: Grant, token_hash: str, by: str, evidence: dict[str, str]) -> bool:
        """Store (or replace) ``grant.name``'s token and audit it in the same commit; True when one was replaced."""
        with immediate(self._db) as db:
            replaced = db.execute("SELECT 1 FROM server_tokens WHERE name=?", (grant.name,)).fetchone() is not None
            db.execute("INSERT INTO server_tokens (name, hash, role, pattern, created_at, created_by) "
                       "VALUES (?,?,?,?,?,?) ON CONFLICT(name) DO UPDATE SET hash=excluded.hash, role=excluded.role,"
                       " pattern=excluded.pattern, created_at=excluded.created_at, created_by=excluded.created_by",
                       (grant.name, token_hash, grant.role, grant.pattern, grant.created_at, by))
            append_entry(db, by, "server_token.new",
                         decision=f"server token for {grant.name}: {grant.role} of {grant.pattern}"
                                  + (", replacing the previous one" if replaced else ""),
                         evidence=evidence, at=grant.created_at)
        return replaced

    def grant_for(self, token_hash: str) -> Grant | None:
        """The grant whose hash is ``token_hash`` (compared in constant time after the indexed lookup)."""
        row = self._db.execute("SELECT * FROM server_tokens WHERE hash=?", (token_hash,)).fetchone()
        if row is None or not hmac.compare_digest(row["hash"], token_hash):
            return None
        return _grant(row)

    def grants(self) -> list[Grant]:
        return [_grant(r) for r in self._db.execute("SELECT * FROM server_tokens ORDER BY name")]

    def idempotent(self, key: str) -> tuple[str, str] | None:
        """(body sha, rollout id) answered for ``key`` before, if any."""
        row = self._db.execute("SELECT body_sha, rollout_id FROM server_idempotency WHERE key=?", (key,)).fetchone()
        return (row["body_sha"], row["rollout_id"]) if row else None

    def remember(self, key: str, body_sha: str, rollout_id: str, actor: str, at: float) -> None:
        with immediate(self._db) as db:
            db.execute("INSERT INTO server_idempotency (key, body_sha, rollout_id, actor, at) "
                       "VALUES (?,?,?,?,?) ON CONFLICT DO NOTHING", (key, body_sha, rollout_id, actor, at))


    def open_session(self, id_hash: str, token_hash: str, csrf: str, expires: float, now: float) -> None:
        """Keep a dashboard session (its id only as a hash, like the tokens), forgetting the expired ones."""
        with immediate(self._db) as db:
            db.execute("DELETE FROM server_sessions WHERE expires <= ?", (now,))
            db.execute("INSERT INTO server_sessions (id_hash, token_hash, csrf, expires) VALUES (?,?,?,?)",
                       (id_hash, token_hash, csrf, expires))

    def session(self, id_hash: str) -> tuple[str, str, float] | None:
        """(token hash, CSRF token, expiry) of the session whose id hashes to ``id_hash``."""
        row = self._db.execute("SELECT token_hash, csrf, expires FROM server_sessions WHERE id_hash=?",
                               (id_hash,)).fetchone()
        return None if row is None else (str(row["token_hash"]), str(row["csrf"]), float(row["expires"]))

    def close_session(self, id_hash: str) -> None:
        with immediate(self._db) as db:
            db.execute("DELETE FROM server_sessions WHERE id_hash=?", (id_hash,))


def _grant(row: Any) -> Grant:
    return Grant(row["name"], row["role"], row["pattern"], row["created_at"], row["created_by"])


__all__ = ["Grant", "ServerStore"]

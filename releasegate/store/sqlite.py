"""Rollout state, events, operator commands and what each service runs, in one SQLite file (WAL).

Why SQLite: a single file in the state dir, crash-safe transactions, and many readers (``status`` from another
shell) alongside one writer. The partial unique index ``one_active_rollout`` makes "one active rollout per
service" a database fact rather than a check that two racing ``deploy`` commands could both pass.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from releasegate.engine.state import RolloutState
from releasegate.errors import UserError
from releasegate.store import leases
from releasegate.store.db import DB, create_schema, immediate, open_db, tiebreak
from releasegate.store.leases import Lease

SCHEMA = """
CREATE TABLE IF NOT EXISTS rollouts (
    id TEXT PRIMARY KEY,
    service TEXT NOT NULL,
    version TEXT NOT NULL,
    previous TEXT,
    strategy TEXT NOT NULL,
    status TEXT NOT NULL,
    phase TEXT NOT NULL,
    active INTEGER NOT NULL,
    spec_path TEXT NOT NULL,
    spec_json TEXT NOT NULL,
    state_json TEXT NOT NULL,
    owner TEXT,
    lease_holder TEXT,
    lease_token INTEGER NOT NULL DEFAULT 0,
    lease_until REAL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS one_active_rollout ON rollouts(service) WHERE active = 1;
CREATE INDEX IF NOT EXISTS rollouts_by_service ON rollouts(service, created_at);
CREATE INDEX IF NOT EXISTS rollouts_by_created ON rollouts(created_at);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    rollout_id TEXT,
    service TEXT NOT NULL,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    data TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_by_service ON events(service, seq);
CREATE INDEX IF NOT EXISTS events_by_rollout ON events(rollout_id, seq);
CREATE TABLE IF NOT EXISTS commands (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    service TEXT NOT NULL,
    rollout_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    note TEXT
);
CREATE INDEX IF NOT EXISTS commands_by_rollout ON commands(rollout_id, state);
CREATE TABLE IF NOT EXISTS services (
    service TEXT PRIMARY KEY,
    current TEXT,
    previous TEXT,
    previous_until REAL,
    spec_path TEXT,
    spec_json TEXT,
    updated_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class ServiceRecord:
    service: str
    current: str | None
    previous: str | None
    previous_until: float | None
    spec_path: str | None
    spec_json: str | None
    updated_at: float


@dataclass(frozen=True)
class RolloutRecord:
    state: RolloutState
    spec_path: str
    spec_json: str
    owner: dict[str, Any] | None


@dataclass(frozen=True)
class Command:
    id: int
    kind: str
    actor: str
    at: float


def this_owner() -> dict[str, Any]:
    """Who drives a rollout: enough to tell, on this host, whether that process still lives."""
    import psutil

    return {"host": socket.gethostname(), "pid": os.getpid(),
            "started": psutil.Process().create_time(), "lease_until": time.time() + 60}


def owner_alive(owner: dict[str, Any] | None) -> bool:
    """Whether a live process drives the rollout: a lease (``holder``) must not have expired and, on this host,
    its process must run; an owner without a lease (a release group's, an older releasegate's) is judged by its
    pid here and by its ``lease_until`` elsewhere."""
    if not owner:
        return False
    if "holder" in owner and float(owner.get("lease_until") or 0) <= time.time():
        return False
    if owner.get("host") != socket.gethostname():
        return float(owner.get("lease_until") or 0) > time.time()
    import psutil

    try:
        proc = psutil.Process(int(owner["pid"]))
        return abs(proc.create_time() - float(owner["started"])) < 1 and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, KeyError, ValueError):
        return False


class Store:
    def __init__(self, state_dir: Path, db: DB | None = None) -> None:
        """``db``: a connection another store opened and keeps (releasegate/store/shared.py); ``close`` then
        leaves it open."""
        self.state_dir = state_dir
        self.path = state_dir / "releasegate.db"
        self._owned = db is None
        if db is None:
            db = open_db(state_dir)
            create_schema(db, SCHEMA)
            leases.upgrade(db)
        self._db = db
        self.lease: Lease | None = None  # set while a controller drives a rollout with this store: writes are fenced

    def connection(self) -> DB:
        return self._db

    def close(self) -> None:
        if self._owned:
            self._db.close()

    def tx(self) -> AbstractContextManager[DB]:
        """An IMMEDIATE transaction: takes the write lock up front, so check-then-write cannot interleave."""
        return immediate(self._db)

    # --- rollouts ------------------------------------------------------------------------------------------------

    def _refuse_if_active(self, db: DB, service: str) -> None:
        row = db.execute("SELECT id, version, phase, owner FROM rollouts WHERE service=? AND active=1",
                         (service,)).fetchone()
        if row is None:
            return
        who = json.loads(row["owner"]) if row["owner"] else None
        driver = (f"driven by pid {who['pid']}" if who and owner_alive(who) else
                  f"no controller is running it: `releasegate resume {service}` continues it")
        raise UserError(f"{service}: rollout {row['id']} of {row['version']} is in progress (phase {row['phase']}, "
                        f"{driver}); wait for it, or `releasegate abort {service}`")

    def ensure_no_active(self, service: str) -> None:
        """Refuse early, before any provider is touched, when ``service`` already has a rollout in progress."""
        self._refuse_if_active(self._db, service)

    def create_rollout(self, st: RolloutState, spec_path: str, spec_json: str, owner: dict[str, Any],
                       holder: str | None = None, ttl: float = leases.DEFAULT_TTL) -> Lease | None:
        """Record a new active rollout; with ``holder``, that process holds its lease (token 1) from the start."""
        mono, until = time.monotonic(), time.time() + ttl
        with self.tx() as db:
            self._refuse_if_active(db, st.service)
            db.execute("INSERT INTO rollouts (id, service, version, previous, strategy, status, phase, active, "
                       "spec_path, spec_json, state_json, owner, lease_holder, lease_token, lease_until, created_at, "
                       "updated_at) VALUES (?,?,?,?,?,?,?,1,?,?,?,?,?,?,?,?,?)",
                       (st.id, st.service, st.version, st.previous, st.strategy, st.status, st.phase, spec_path,
                        spec_json, st.model_dump_json(), json.dumps(owner), holder, 1 if holder else 0,
                        until if holder else None, st.created_at, st.updated_at))
        return Lease(st.id, holder, 1, ttl, mono + ttl) if holder else None

    @contextmanager
    def _write(self) -> Iterator[DB]:
        """A write transaction, fenced by this store's lease when a controller drives a rollout with it: once
        another process has taken the rollout over, the write fails (LeaseLost) and nothing of it lands."""
        with self.tx() as db:
            if self.lease is not None:
                leases.fence(db, self.lease)
            yield db

    def save(self, st: RolloutState, events: Sequence[tuple[str, str, dict[str, Any]]] = (),
             owner: dict[str, Any] | None = None) -> None:
        """Persist the state and its events in one transaction: a decision is never half-recorded."""
        with self._write() as db:
            db.execute("UPDATE rollouts SET status=?, phase=?, active=?, state_json=?, updated_at=?, "
                       "finished_at=?, owner=COALESCE(?, owner) WHERE id=?",
                       (st.status, st.phase, 1 if st.active else 0, st.model_dump_json(), st.updated_at,
                        st.finished_at, json.dumps(owner) if owner else None, st.id))
            for kind, message, data in events:
                db.execute("INSERT INTO events (rollout_id, service, at, kind, message, data) VALUES (?,?,?,?,?,?)",
                           (st.id, st.service, st.updated_at, kind, message, json.dumps(data, default=str)))

    def claim(self, rollout_id: str, owner: dict[str, Any], holder: str,
              ttl: float = leases.DEFAULT_TTL) -> Lease:
        """Take over driving a rollout whose controller is gone (its lease free or expired); refuse while a live
        process holds it."""
        taken: dict[str, Any] = {}
        with self.tx() as db:
            lease = leases.acquire(db, rollout_id, holder, json.dumps(owner), ttl, taken)
        if lease is not None:
            return lease
        row = self._db.execute("SELECT service FROM rollouts WHERE id=?", (rollout_id,)).fetchone()
        service = row["service"] if row else rollout_id
        who = f"pid {taken['pid']} on {taken['host']}" if taken.get("pid") else "another process"
        raise UserError(f"{service}: rollout {rollout_id} is being driven by {who}; use `releasegate status "
                        f"{service}` to follow it")

    def release(self, rollout_id: str) -> None:
        """Give up driving ``rollout_id``: with this store's lease only while that is still current."""
        with self.tx() as db:
            if self.lease is not None and self.lease.rollout_id == rollout_id:
                leases.release(db, self.lease)
            else:
                db.execute("UPDATE rollouts SET owner=NULL, lease_holder=NULL, lease_until=NULL WHERE id=?",
                           (rollout_id,))

    def hold_lease(self) -> None:
        """Before touching the data plane: renew this store's lease (only with its current token), so what follows
        runs with a full TTL ahead; LeaseLost when another process took the rollout over."""
        if self.lease is not None:
            with self.tx() as db:
                leases.renew_one(db, self.lease)

    def renew_leases(self, holder: str, ttl: float) -> dict[str, int]:
        """Extend every lease ``holder`` holds (one statement); rollout id -> the token still held."""
        with self.tx() as db:
            return leases.renew_all(db, holder, ttl)

    def release_leases(self, holder: str, rollout_id: str | None = None) -> None:
        """Give up every lease ``holder`` holds (or only the one on ``rollout_id``), in one statement."""
        with self.tx() as db:
            leases.release_all(db, holder, rollout_id)

    def adoptable(self) -> list[tuple[str, str]]:
        """(id, service) of the active rollouts no live process holds."""
        return leases.adoptable(self._db, time.time())

    def _record(self, row: Any) -> RolloutRecord | None:
        if row is None:
            return None
        owner = json.loads(row["owner"]) if row["owner"] else None
        if owner is not None and row["lease_holder"] is not None:  # owner_alive judges the lease
            owner = {**owner, "holder": row["lease_holder"], "token": row["lease_token"],
                     "lease_until": row["lease_until"]}
        return RolloutRecord(RolloutState.model_validate_json(row["state_json"]), row["spec_path"],
                             row["spec_json"], owner)

    def active_rollout(self, service: str) -> RolloutRecord | None:
        return self._record(self._db.execute("SELECT * FROM rollouts WHERE service=? AND active=1",
                                             (service,)).fetchone())

    def rollout(self, rollout_id: str) -> RolloutRecord | None:
        return self._record(self._db.execute("SELECT * FROM rollouts WHERE id=?", (rollout_id,)).fetchone())

    def latest_rollout(self, service: str) -> RolloutRecord | None:
        return self._record(self._db.execute(
            f"SELECT * FROM rollouts WHERE service=? ORDER BY created_at DESC, {tiebreak(self._db)} DESC LIMIT 1",
            (service,)).fetchone())

    def rollouts(self, service: str, limit: int = 50) -> list[RolloutRecord]:
        rows = self._db.execute(f"SELECT * FROM rollouts WHERE service=? ORDER BY created_at DESC, "
                                f"{tiebreak(self._db)} DESC LIMIT ?", (service, limit)).fetchall()
        return [r for r in (self._record(row) for row in rows) if r is not None]

    def recent_rollouts(self, visible: Callable[[str], bool], limit: int = 50) -> list[RolloutRecord]:
        """The newest ``limit`` rollouts of the services ``visible`` accepts, newest first. Why not ``rollouts``
        per service: with 1,000 services that parsed every stored rollout to answer one page (the server's list,
        bench/bench_server_scale.py); here the index on ``created_at`` is walked only until the page is full, and
        only the rows returned are read and parsed, in one query."""
        ids: list[str] = []
        cursor = self._db.execute(f"SELECT id, service FROM rollouts ORDER BY created_at DESC, "
                                  f"{tiebreak(self._db)} DESC")
        try:
            for row in cursor:
                if len(ids) == limit:
                    break
                if visible(row["service"]):
                    ids.append(row["id"])
        finally:
            cursor.close()  # ends the read at once (a statement left open would hold its snapshot)
        if not ids:
            return []
        rows = self._db.execute(f"SELECT * FROM rollouts WHERE id IN ({','.join('?' * len(ids))})", ids).fetchall()
        found = {r.state.id: r for r in (self._record(row) for row in rows) if r is not None}
        return [found[i] for i in ids if i in found]

    def events(self, service: str, rollout_id: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        if rollout_id:
            rows = self._db.execute("SELECT * FROM events WHERE rollout_id=? ORDER BY seq LIMIT ?",
                                    (rollout_id, limit)).fetchall()
        else:
            rows = self._db.execute("SELECT * FROM (SELECT * FROM events WHERE service=? ORDER BY seq DESC "
                                    "LIMIT ?) AS recent ORDER BY seq", (service, limit)).fetchall()
        return [{"seq": r["seq"], "rollout": r["rollout_id"], "at": r["at"], "kind": r["kind"],
                 "message": r["message"], "data": json.loads(r["data"])} for r in rows]

    def last_event(self, service: str, kinds: Sequence[str]) -> dict[str, Any] | None:
        """The service's most recent event of one of ``kinds`` (e.g. was it taken down since its last deploy?)."""
        marks = ",".join("?" * len(kinds))
        row = self._db.execute(f"SELECT * FROM events WHERE service=? AND kind IN ({marks}) ORDER BY seq DESC LIMIT 1",
                               (service, *kinds)).fetchone()
        return None if row is None else {"seq": row["seq"], "rollout": row["rollout_id"], "at": row["at"],
                                         "kind": row["kind"], "message": row["message"],
                                         "data": json.loads(row["data"])}

    def add_event(self, service: str, rollout_id: str | None, at: float, kind: str, message: str,
                  data: dict[str, Any] | None = None) -> None:
        with self._write() as db:
            db.execute("INSERT INTO events (rollout_id, service, at, kind, message, data) VALUES (?,?,?,?,?,?)",
                       (rollout_id, service, at, kind, message, json.dumps(data or {}, default=str)))

    # --- commands ------------------------------------------------------------------------------------------------

    def add_command(self, service: str, rollout_id: str, kind: str, actor: str, at: float) -> int:
        with self.tx() as db:
            row = db.execute("INSERT INTO commands (service, rollout_id, kind, actor, at) VALUES (?,?,?,?,?) "
                             "RETURNING id", (service, rollout_id, kind, actor, at)).fetchone()
            return int(row[0])

    def pending_commands(self, rollout_id: str) -> list[Command]:
        rows = self._db.execute("SELECT id, kind, actor, at FROM commands WHERE rollout_id=? AND state='pending' "
                                "ORDER BY id", (rollout_id,)).fetchall()
        return [Command(r["id"], r["kind"], r["actor"], r["at"]) for r in rows]

    def has_pending_commands(self, rollout_id: str) -> bool:
        return self._db.execute("SELECT 1 FROM commands WHERE rollout_id=? AND state='pending' LIMIT 1",
                                (rollout_id,)).fetchone() is not None

    def pending_rollouts(self) -> set[str]:
        """The rollouts with a command pending, in one query: what the server's bell watcher rings
        (releasegate/wakeups.py) instead of every controller asking for its own."""
        return {row["rollout_id"] for row in self._db.execute("SELECT DISTINCT rollout_id FROM commands "
                                                              "WHERE state='pending'")}

    def command_state(self, command_id: int) -> tuple[str, str | None]:
        row = self._db.execute("SELECT state, note FROM commands WHERE id=?", (command_id,)).fetchone()
        return (row["state"], row["note"]) if row else ("missing", None)

    def apply_command(self, st: RolloutState, command: Command, error: str | None) -> None:
        """Mark the command and save the state it produced, atomically."""
        with self._write() as db:
            db.execute("UPDATE commands SET state=?, note=? WHERE id=?",
                       ("rejected" if error else "applied", error, command.id))
            db.execute("UPDATE rollouts SET status=?, phase=?, state_json=?, updated_at=? WHERE id=?",
                       (st.status, st.phase, st.model_dump_json(), st.updated_at, st.id))
            db.execute("INSERT INTO events (rollout_id, service, at, kind, message, data) VALUES (?,?,?,?,?,?)",
                       (st.id, st.service, st.updated_at, "command",
                        f"{command.kind} by {command.actor}" + (f" refused: {error}" if error else ""),
                        json.dumps({"command": command.kind, "actor": command.actor})))

    # --- services ------------------------------------------------------------------------------------------------

    def service(self, service: str) -> ServiceRecord | None:
        row = self._db.execute("SELECT * FROM services WHERE service=?", (service,)).fetchone()
        return ServiceRecord(**dict(row)) if row else None

    def services(self) -> list[ServiceRecord]:
        return [ServiceRecord(**dict(r)) for r in self._db.execute("SELECT * FROM services ORDER BY service")]

    def set_service(self, service: str, current: str | None, previous: str | None, previous_until: float | None,
                    spec_path: str | None, spec_json: str | None, at: float) -> None:
        with self._write() as db:
            db.execute("INSERT INTO services (service, current, previous, previous_until, spec_path, spec_json, "
                       "updated_at) VALUES (?,?,?,?,?,?,?) ON CONFLICT(service) DO UPDATE SET current=excluded."
                       "current, previous=excluded.previous, previous_until=excluded.previous_until, "
                       "spec_path=COALESCE(excluded.spec_path, services.spec_path), spec_json=COALESCE(excluded."
                       "spec_json, services.spec_json), updated_at=excluded.updated_at",
                       (service, current, previous, previous_until, spec_path, spec_json, at))

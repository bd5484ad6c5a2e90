"""Leases on rollouts: which process drives one, until when, and the fencing token that makes a late writer harmless.

Why: several servers (and standalone ``deploy``/``resume`` processes) share one store. Each active rollout is driven
by the one process that holds its lease (``lease_holder``, until ``lease_until``, wall-clock seconds). The holder
renews it; a process that dies stops renewing and, once the lease has expired, another takes the rollout over. A
holder on this host whose process is gone (a SIGKILLed ``deploy``) frees its lease at once: that process cannot
write any more, so nobody has to wait for the expiry.

Fencing: every acquisition increments ``lease_token`` (it only ever grows). Every write a controller makes for its
rollout runs, in the same transaction, ``UPDATE rollouts SET lease_token=lease_token WHERE id=? AND lease_token=?``
with the token it acquired; zero rows changed means another process took the rollout over since, and the write
fails with ``LeaseLost`` (rolled back: nothing of it lands). A process that was paused (SIGSTOP, a long GC, a VM
stall) past its lease and wakes up therefore writes nothing; before it moves traffic or starts and stops instances
it renews its lease with the same condition (``Store.hold_lease``), so it does not touch the data plane either.

The SQL here is plain ``UPDATE ... WHERE`` with ``?`` parameters, portable to PostgreSQL; only ``upgrade`` (adding
the columns to an older SQLite state dir) reads SQLite's catalogue.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from releasegate.errors import UserError
from releasegate.store.db import DB, is_pg

DEFAULT_TTL = 10.0
"""Seconds a lease lasts without renewal: the longest a rollout pauses when its driver dies."""

COLUMNS = (("lease_holder", "TEXT"), ("lease_token", "INTEGER NOT NULL DEFAULT 0"), ("lease_until", "REAL"))
"""The columns on ``rollouts`` (in the schema, and added by ``upgrade`` to state dirs made before them)."""


LEASED_INDEX = "CREATE INDEX IF NOT EXISTS rollouts_leased ON rollouts(lease_holder) WHERE active = 1"
"""What a keeper's renewal and a server's scan look up every few seconds (not a scan of every rollout ever made)."""


class LeaseLost(UserError):
    """This process no longer holds the rollout's lease: another one took it over and drives it now."""


def new_holder() -> str:
    """A name for one process incarnation (a restarted server is a new holder: its old tokens are void)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class Lease:
    """A lease this process holds; ``valid_until`` is on ``time.monotonic()``, measured from before the write that
    set it, so it never overstates what the store granted."""

    rollout_id: str
    holder: str
    token: int
    ttl: float
    valid_until: float
    lost: bool = False  # another process took the rollout over
    ended: bool = False  # given up by its holder (the rollout ended, or the process stops)

    def left(self) -> float:
        return self.valid_until - time.monotonic()


def upgrade(db: DB) -> None:
    """Add the lease columns to an SQLite ``rollouts`` table made by an older releasegate (a PostgreSQL store's
    schema is its migrations')."""
    if is_pg(db):
        return
    have = {row["name"] for row in db.execute("PRAGMA table_info(rollouts)")}
    missing = [(name, kind) for name, kind in COLUMNS if name not in have]
    if not have:
        return
    if not missing:
        if db.execute("SELECT 1 FROM sqlite_master WHERE type='index' AND name='rollouts_leased'").fetchone() is None:
            db.execute(LEASED_INDEX)
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        have = {row["name"] for row in db.execute("PRAGMA table_info(rollouts)")}
        for name, kind in missing:
            if name not in have:
                db.execute(f"ALTER TABLE rollouts ADD COLUMN {name} {kind}")
        db.execute(LEASED_INDEX)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def process_gone(owner: dict[str, Any] | None) -> bool:
    """Whether ``owner`` names a process on this host that no longer runs (so its lease can be taken at once)."""
    if not owner or owner.get("host") != socket.gethostname():
        return False
    import psutil

    try:
        proc = psutil.Process(int(owner["pid"]))
        return abs(proc.create_time() - float(owner["started"])) >= 1 or proc.status() == psutil.STATUS_ZOMBIE
    except (psutil.Error, KeyError, ValueError, TypeError):
        return True


def is_free(holder: str | None, until: float | None, owner: dict[str, Any] | None, now: float,
            gone: Callable[[dict[str, Any] | None], bool] = process_gone) -> bool:
    """No live holder: none, an expired lease, or a holder on this host whose process is ``gone``."""
    return holder is None or (until or 0.0) <= now or gone(owner)


def acquire(db: DB, rollout_id: str, holder: str, owner_json: str, ttl: float,
            taken: dict[str, Any]) -> Lease | None:
    """Take the lease of an active rollout when it is free (inside the caller's write transaction): the token is
    incremented with a compare-and-set on the token read, so of two racing takers one wins. None when it is held
    by a live process (``taken`` then says by whom: its owner record), over, or unknown."""
    import json

    row = db.execute("SELECT active, owner, lease_holder, lease_token, lease_until FROM rollouts WHERE id=?",
                     (rollout_id,)).fetchone()
    if row is None or not row["active"]:
        return None
    owner = json.loads(row["owner"]) if row["owner"] else None
    now, mono = time.time(), time.monotonic()
    legacy = row["lease_holder"] is None and owner is not None and "holder" not in owner  # an older releasegate's
    if legacy and _legacy_alive(owner, now):
        taken.update(owner or {})
        return None
    if row["lease_holder"] != holder and not is_free(row["lease_holder"], row["lease_until"], owner, now):
        taken.update(owner or {})
        return None
    token = int(row["lease_token"] or 0)
    cur = db.execute("UPDATE rollouts SET lease_holder=?, lease_token=?, lease_until=?, owner=? "
                     "WHERE id=? AND lease_token=?", (holder, token + 1, now + ttl, owner_json, rollout_id, token))
    if cur.rowcount != 1:
        return None
    return Lease(rollout_id, holder, token + 1, ttl, mono + ttl)


def _legacy_alive(owner: dict[str, Any] | None, now: float) -> bool:
    """An owner written by a releasegate before leases (or a release group's): its pid on this host, else its
    ``lease_until``."""
    if not owner:
        return False
    if owner.get("host") != socket.gethostname():
        return float(owner.get("lease_until", 0)) > now
    return not process_gone(owner)


def fence(db: DB, lease: Lease) -> None:
    """Inside a write transaction: fail it (LeaseLost) unless ``lease`` still holds the rollout. The no-op UPDATE
    also locks the row on PostgreSQL, so a taker's UPDATE waits for this transaction to end."""
    cur = db.execute("UPDATE rollouts SET lease_token=lease_token WHERE id=? AND lease_token=?",
                     (lease.rollout_id, lease.token))
    if cur.rowcount != 1:
        lease.lost = True
        raise LeaseLost(f"rollout {lease.rollout_id}: another process took it over (lease token {lease.token} is "
                        "no longer current); follow it with `releasegate status`")


def renew_one(db: DB, lease: Lease) -> None:
    """Extend one lease (only with its current token); LeaseLost when it is gone."""
    mono = time.monotonic()
    cur = db.execute("UPDATE rollouts SET lease_until=? WHERE id=? AND lease_token=? AND lease_holder=?",
                     (time.time() + lease.ttl, lease.rollout_id, lease.token, lease.holder))
    if cur.rowcount != 1:
        lease.lost = True
        raise LeaseLost(f"rollout {lease.rollout_id}: another process took it over (its lease expired); follow "
                        "it with `releasegate status`")
    lease.valid_until = mono + lease.ttl


def renew_all(db: DB, holder: str, ttl: float) -> dict[str, int]:
    """Extend every lease ``holder`` holds in one statement; rollout id -> the token it still holds."""
    db.execute("UPDATE rollouts SET lease_until=? WHERE lease_holder=? AND active=1", (time.time() + ttl, holder))
    return {str(r["id"]): int(r["lease_token"]) for r in
            db.execute("SELECT id, lease_token FROM rollouts WHERE lease_holder=? AND active=1", (holder,))}


def release(db: DB, lease: Lease) -> None:
    """Give the lease up (only with its current token), so the next driver need not wait for its expiry."""
    lease.ended = True
    db.execute("UPDATE rollouts SET lease_holder=NULL, lease_until=NULL, owner=NULL WHERE id=? AND lease_token=?",
               (lease.rollout_id, lease.token))


def release_all(db: DB, holder: str, rollout_id: str | None = None) -> None:
    """Give up every lease ``holder`` holds (a server shutting down), in one statement; or only ``rollout_id``'s
    (its task failed), if ``holder`` still holds it."""
    if rollout_id is None:
        db.execute("UPDATE rollouts SET lease_holder=NULL, lease_until=NULL, owner=NULL WHERE lease_holder=?",
                   (holder,))
    else:
        db.execute("UPDATE rollouts SET lease_holder=NULL, lease_until=NULL, owner=NULL WHERE id=? AND "
                   "lease_holder=?", (rollout_id, holder))


def adoptable(db: DB, now: float) -> list[tuple[str, str]]:
    """(rollout id, service) of the active rollouts no live process holds a lease on. Whether a holder's process
    is gone is asked once per holder, not per rollout: a server holds hundreds, and a scan runs every TTL/2."""
    import json

    out = []
    asked: dict[str, bool] = {}  # lease holder -> whether its process is gone (one holder, one process)
    for row in db.execute("SELECT id, service, owner, lease_holder, lease_until FROM rollouts WHERE active=1"):
        owner = json.loads(row["owner"]) if row["owner"] else None
        holder = row["lease_holder"]
        if holder is None and owner is not None and _legacy_alive(owner, now):
            continue  # driven by a process of an older releasegate, or a release group's member

        def gone(owner: dict[str, Any] | None, holder: str = holder) -> bool:
            if holder not in asked:
                asked[holder] = process_gone(owner)
            return asked[holder]
        if is_free(holder, row["lease_until"], owner, now, gone):
            out.append((str(row["id"]), str(row["service"])))
    return out


__all__ = ["COLUMNS", "DEFAULT_TTL", "Lease", "LeaseLost", "acquire", "adoptable", "fence", "is_free",
           "new_holder", "process_gone", "release", "release_all", "renew_all", "renew_one", "upgrade"]

"""Release groups (multi-service releases) in the same SQLite file as the rollouts they drive.

One row per group run with its whole state (engine/group.py's ``GroupState``) as JSON; the partial unique index
makes "one active group per release" a database fact. The group's events and operator commands use the
``events`` and ``commands`` tables under the release's name and the group's id, so `history` and the command
queue work as for a service.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from releasegate.engine.group import GroupState
from releasegate.errors import UserError
from releasegate.store.db import create_schema, immediate, open_db
from releasegate.store.sqlite import SCHEMA as ROLLOUT_SCHEMA
from releasegate.store.sqlite import Command, owner_alive

SCHEMA = """
CREATE TABLE IF NOT EXISTS release_groups (
    id TEXT PRIMARY KEY,
    release TEXT NOT NULL,
    active INTEGER NOT NULL,
    status TEXT NOT NULL,
    state_json TEXT NOT NULL,
    owner TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS one_active_group ON release_groups(release) WHERE active = 1;
CREATE INDEX IF NOT EXISTS groups_by_release ON release_groups(release, created_at);
"""


class GroupStore:
    def __init__(self, state_dir: Path) -> None:
        self._db = open_db(state_dir)
        create_schema(self._db, ROLLOUT_SCHEMA + SCHEMA)

    def close(self) -> None:
        self._db.close()

    def known(self, release: str) -> bool:
        return self._db.execute("SELECT 1 FROM release_groups WHERE release=? LIMIT 1",
                                (release,)).fetchone() is not None

    def ensure_no_active(self, release: str) -> None:
        row = self._db.execute("SELECT id, owner FROM release_groups WHERE release=? AND active=1",
                               (release,)).fetchone()
        if row is None:
            return
        who = json.loads(row["owner"]) if row["owner"] else None
        driver = (f"driven by pid {who['pid']}" if who and owner_alive(who) else
                  f"no process drives it: `releasegate resume {release}` continues it")
        raise UserError(f"{release}: release group {row['id']} is in progress ({driver}); wait for it, or "
                        f"`releasegate abort {release}`")

    def create(self, gs: GroupState, owner: dict[str, Any]) -> None:
        with immediate(self._db) as db:
            self.ensure_no_active(gs.release)
            db.execute("INSERT INTO release_groups (id, release, active, status, state_json, owner, created_at, "
                       "updated_at) VALUES (?,?,1,?,?,?,?,?)",
                       (gs.id, gs.release, gs.status, gs.model_dump_json(), json.dumps(owner), gs.created_at,
                        gs.updated_at))

    def save(self, gs: GroupState, events: Sequence[tuple[str, str, dict[str, Any]]] = (),
             owner: dict[str, Any] | None = None, answer: tuple[Command, str | None] | None = None) -> None:
        """The state, its events and the operator command it answers, in one transaction."""
        with immediate(self._db) as db:
            if answer is not None:
                db.execute("UPDATE commands SET state=?, note=? WHERE id=?",
                           ("rejected" if answer[1] else "applied", answer[1], answer[0].id))
            db.execute("UPDATE release_groups SET active=?, status=?, state_json=?, updated_at=?, "
                       "owner=COALESCE(?, owner) WHERE id=?",
                       (1 if gs.active else 0, gs.status, gs.model_dump_json(), gs.updated_at,
                        json.dumps(owner) if owner else None, gs.id))
            for kind, message, data in events:
                db.execute("INSERT INTO events (rollout_id, service, at, kind, message, data) VALUES (?,?,?,?,?,?)",
                           (gs.id, gs.release, gs.updated_at, kind, message, json.dumps(data, default=str)))

    def claim(self, gs: GroupState, owner: dict[str, Any]) -> None:
        with immediate(self._db) as db:
            row = db.execute("SELECT owner FROM release_groups WHERE id=?", (gs.id,)).fetchone()
            current = json.loads(row["owner"]) if row and row["owner"] else None
            if current and current.get("pid") != owner["pid"] and owner_alive(current):
                raise UserError(f"{gs.release}: release group {gs.id} is being driven by pid {current['pid']}; "
                                f"follow it with `releasegate status {gs.release}`")
            db.execute("UPDATE release_groups SET owner=? WHERE id=?", (json.dumps(owner), gs.id))

    def _rows(self, where: str, args: tuple[Any, ...]) -> list[tuple[GroupState, dict[str, Any] | None]]:
        rows = self._db.execute(f"SELECT state_json, owner FROM release_groups WHERE {where}", args).fetchall()
        return [(GroupState.model_validate_json(r["state_json"]), json.loads(r["owner"]) if r["owner"] else None)
                for r in rows]

    def active(self, release: str) -> tuple[GroupState, dict[str, Any] | None] | None:
        found = self._rows("release=? AND active=1", (release,))
        return found[0] if found else None

    def latest(self, release: str) -> GroupState | None:
        found = self._rows("release=? ORDER BY created_at DESC LIMIT 1", (release,))
        return found[0][0] if found else None

    def releases(self) -> list[str]:
        return [r["release"] for r in self._db.execute("SELECT DISTINCT release FROM release_groups ORDER BY release")]

    def runs(self, release: str, limit: int) -> list[GroupState]:
        return [g for g, _ in self._rows("release=? ORDER BY created_at DESC LIMIT ?", (release, limit))]

    def events(self, group_id: str) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT at, kind, message FROM events WHERE rollout_id=? ORDER BY seq",
                                (group_id,)).fetchall()
        return [dict(r) for r in rows]

    # --- operator commands (the rollouts' queue, under the group's id) ------------------------------------------

    def add_command(self, release: str, group_id: str, kind: str, actor: str, at: float) -> int:
        with immediate(self._db) as db:
            row = db.execute("INSERT INTO commands (service, rollout_id, kind, actor, at) VALUES (?,?,?,?,?) "
                             "RETURNING id", (release, group_id, kind, actor, at)).fetchone()
            return int(row[0])

    def pending_commands(self, group_id: str) -> list[Command]:
        rows = self._db.execute("SELECT id, kind, actor, at FROM commands WHERE rollout_id=? AND state='pending' "
                                "ORDER BY id", (group_id,)).fetchall()
        return [Command(r["id"], r["kind"], r["actor"], r["at"]) for r in rows]

    def command_state(self, command_id: int) -> tuple[str, str | None]:
        row = self._db.execute("SELECT state, note FROM commands WHERE id=?", (command_id,)).fetchone()
        return (row["state"], row["note"]) if row else ("missing", None)

"""The audit log: every approval, refusal, override and rollout step, hash-chained so tampering shows.

Each entry's ``hash`` is the SHA-256 of a canonical JSON of its fields and the previous entry's hash, so editing,
deleting or reordering any entry breaks the chain at that entry, and ``verify`` names it. A bare chain cannot tell a
truncated log from a short one, so the head (the last entry's number and hash) is kept twice: in a one-row table, and
outside the database in ``audit-head.log`` (``releasegate.store.anchor``), one line appended per entry. An append
continues from the higher of the two, so cutting the tail and the head record and then writing a new entry leaves
the gap in the chain; ``verify`` cross-checks the file against the rows both ways, and calls an empty log beside
releases, sign-offs, tokens, stored documents or rollouts an error. What this cannot catch: someone who can write
the state dir and rewrites the chain, the head record and the head file consistently (docs/security.md, section 6);
for that, keep the head somewhere they cannot write (``audit head``, ``audit export --signed``).

The log lives in the same SQLite file as the rest of the state (``state_dir/releasegate.db``), or in the PostgreSQL
store. An append reads the head and writes the entry inside one ``BEGIN IMMEDIATE`` transaction (on PostgreSQL:
after the store's advisory write lock), so processes appending at the same time queue on that lock instead of
forking the chain. ``append_entry`` takes an open transaction so that a
state change and its audit entry commit together (``releasegate.store.governance`` uses it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

from releasegate.store import anchor
from releasegate.store.db import DB, create_schema, immediate, is_pg, open_db, tables

GENESIS = "0" * 64
"""The ``prev_hash`` of the first entry."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_log (
    seq INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    release TEXT,
    commit_sha TEXT,
    decision TEXT,
    evidence TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL
);
""" + anchor.SCHEMA

_REORDER_SEARCH = 10_000
"""How far from its position ``verify`` looks for the place an entry was written at, to say "reordered"."""


@dataclass(frozen=True)
class Entry:
    """One audit entry; ``to_json`` is what ``audit export`` writes, one per line."""

    seq: int
    at: float
    actor: str
    action: str
    release: str | None
    commit: str | None
    decision: str | None
    evidence: dict[str, Any] = field(default_factory=dict)
    prev_hash: str = GENESIS
    hash: str = ""

    def to_json(self) -> str:
        import datetime as dt

        record = asdict(self)
        record["time"] = dt.datetime.fromtimestamp(self.at, tz=dt.UTC).isoformat().replace("+00:00", "Z")
        return json.dumps(record, ensure_ascii=False, sort_keys=True)


class Verification(NamedTuple):
    """``ok``; the first entry that is bad (None when ok); the reason, or ``N entries`` when ok."""

    ok: bool
    first_bad_seq: int | None
    reason: str


# --- hashing -------------------------------------------------------------------------------------------------


def _canonical_evidence(evidence: Mapping[str, Any] | None) -> dict[str, Any]:
    """The evidence as it reads back from JSON (tuples become lists, paths text), so hashing is stable."""
    loaded: dict[str, Any] = json.loads(json.dumps(dict(evidence or {}), default=str, sort_keys=True))
    return loaded


def entry_hash(seq: int, at: float, actor: str, action: str, release: str | None, commit: str | None,
               decision: str | None, evidence: Mapping[str, Any], prev_hash: str) -> str:
    """SHA-256 over a canonical JSON (sorted keys, no spaces, UTF-8) of the fields and the previous hash."""
    body = {"seq": seq, "at": at, "actor": actor, "action": action, "release": release, "commit": commit,
            "decision": decision, "evidence": evidence, "prev_hash": prev_hash}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def append_entry(db: DB, actor: str, action: str, release: str | None = None,
                 commit: str | None = None, decision: str | None = None,
                 evidence: Mapping[str, Any] | None = None, *, at: float | None = None) -> Entry:
    """Append inside the caller's open transaction (which must hold the write lock: BEGIN IMMEDIATE)."""
    pending = _pending(db)
    head = db.execute("SELECT seq, hash FROM audit_head WHERE id=1").fetchone()
    last = db.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
    known = [anchor.Line(int(r["seq"]), str(r["hash"])) for r in (head, last) if r is not None]
    if pending is not None:
        _catch_up(db, pending, max(known) if known else None)
        known += pending.lines[-1:] or [line for line in (pending.on_file,) if line is not None]
    top = max(known, key=lambda line: line.seq) if known else None  # the gap after a cut tail stays visible
    seq, prev = (top.seq + 1, top.hash) if top else (1, GENESIS)
    when = time.time() if at is None else float(at)
    data = _canonical_evidence(evidence)
    digest = entry_hash(seq, when, actor, action, release, commit, decision, data, prev)
    db.execute("INSERT INTO audit_log (seq, at, actor, action, release, commit_sha, decision, evidence, prev_hash, "
               "hash) VALUES (?,?,?,?,?,?,?,?,?,?)",
               (seq, when, actor, action, release, commit, decision, json.dumps(data, sort_keys=True,
                                                                                ensure_ascii=False), prev, digest))
    db.execute("INSERT INTO audit_head (id, seq, hash) VALUES (1, ?, ?) ON CONFLICT(id) DO UPDATE SET "
               "seq=excluded.seq, hash=excluded.hash", (seq, digest))
    if pending is not None:
        db.execute("INSERT INTO audit_anchor (id, since_seq) VALUES (1, ?) ON CONFLICT DO NOTHING", (seq,))
        pending.lines.append(anchor.Line(seq, digest))
    return Entry(seq, when, actor, action, release, commit, decision, data, prev, digest)


def _pending(db: DB) -> anchor.Pending | None:
    """This transaction's head-file lines (taking the head file's lock on the first entry); None in memory."""
    state_dir: Path | None = getattr(db, "state_dir", None)
    hooks = getattr(db, "on_end", None)
    if state_dir is None or hooks is None:
        return None
    for hook in hooks:
        owner = getattr(hook, "__self__", None)
        if isinstance(owner, anchor.Pending):
            return owner
    pending = anchor.Pending(state_dir)
    hooks.append(pending.end)
    return pending


def _catch_up(db: DB, pending: anchor.Pending, top: anchor.Line | None) -> None:
    """Lines for entries the database has beyond the file (a writer killed between its commit and its line)."""
    on_file = pending.on_file
    if pending.lines or on_file is None or top is None or top.seq <= on_file.seq:
        return
    rows = db.execute("SELECT seq, hash FROM audit_log WHERE seq > ? ORDER BY seq", (on_file.seq,)).fetchall()
    pending.lines.extend(anchor.Line(int(r["seq"]), str(r["hash"])) for r in rows)


# --- the log -------------------------------------------------------------------------------------------------


class AuditLog:
    """The audit log of one state dir. Cheap to open; safe to use from several processes at once."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self._db = open_db(self.state_dir)
        if not is_pg(self._db):
            self._db.execute("PRAGMA synchronous=FULL")  # an entry is durable before its head-file line is written
        create_schema(self._db, SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def append(self, actor: str, action: str, release: str | None = None, commit: str | None = None,
               decision: str | None = None, evidence: Mapping[str, Any] | None = None, *,
               at: float | None = None) -> Entry:
        """Append one entry in its own transaction; ``at`` defaults to now (pass it when you hold a clock)."""
        with immediate(self._db) as db:
            return append_entry(db, actor, action, release, commit, decision, evidence, at=at)

    def entries(self, since: float | None = None) -> Iterator[Entry]:
        """Entries in chain order; with ``since``, only those at or after that time."""
        sql = "SELECT * FROM audit_log" + (" WHERE at >= ?" if since is not None else "") + " ORDER BY seq"
        for row in self._db.execute(sql, (since,) if since is not None else ()):
            yield _entry(row, json.loads(row["evidence"]))

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM audit_log").fetchone()[0])

    def head(self) -> tuple[int, str] | None:
        """The last entry's number and hash (what to keep outside the state dir); None for an empty log."""
        row = self._db.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
        return (int(row["seq"]), str(row["hash"])) if row else None

    def hash_of(self, seq: int) -> str | None:
        row = self._db.execute("SELECT hash FROM audit_log WHERE seq=?", (seq,)).fetchone()
        return str(row["hash"]) if row else None

    def verify(self) -> Verification:
        """Walk the chain in ``seq`` order and name the first entry that was edited, deleted or moved; then check
        the head file against the rows (entries gone from the end, a rewritten chain) and the rest of the state
        against an empty log."""
        on_disk = getattr(self._db, "state_dir", None) is not None
        with anchor.locked(self.state_dir, exclusive=False) if on_disk else contextlib.nullcontext():
            self._db.execute("BEGIN")  # one read snapshot: no append lands between reading the rows and the head
            try:
                rows = self._db.execute("SELECT * FROM audit_log ORDER BY seq").fetchall()
                head = self._db.execute("SELECT seq, hash FROM audit_head WHERE id=1").fetchone()
                since = self._db.execute("SELECT since_seq FROM audit_anchor WHERE id=1").fetchone()
                state = _state_rows(self._db)
            finally:
                self._db.execute("COMMIT")
            try:
                lines = anchor.read(self.state_dir) if on_disk else None
            except anchor.Damaged as exc:
                return Verification(False, None, str(exc))
        chain = _walk(self._db, rows, head)
        if not chain.ok:
            return chain
        found = _against_file(rows, lines, int(since[0]) if since else None, shared=is_pg(self._db))
        if found is not None:
            return found
        if not rows and state:
            return Verification(False, 1, "the log is empty (its entries were deleted or its tables dropped) but "
                                          f"the state dir holds {state}")
        if rows and lines is None:
            return Verification(True, None, f"{len(rows)} entries (not anchored yet: the next audited command "
                                            f"starts {anchor.FILE})")
        return Verification(True, None, f"{len(rows)} entries")


def _walk(db: DB, rows: list[Any], head: Any) -> Verification:
    """The chain itself, and its last entry against the head record."""
    expected, prev = 1, GENESIS
    for row in rows:
        seq = int(row["seq"])
        if seq != expected:
            gone = f"entry {expected}" if seq == expected + 1 else f"entries {expected} to {seq - 1}"
            verb = "was" if seq == expected + 1 else "were"
            after = f"entry {seq} follows entry {expected - 1}" if expected > 1 else f"the log starts at {seq}"
            return Verification(False, expected, f"{gone} {verb} deleted ({after})")
        problem = _check_row(db, row, len(rows))
        if problem:
            return Verification(False, seq, problem)
        if row["prev_hash"] != prev:
            return Verification(False, seq, f"entry {seq} does not follow entry {seq - 1} (prev_hash mismatch: "
                                            "an entry before it was deleted, replaced or reordered)")
        prev, expected = str(row["hash"]), seq + 1
    last = expected - 1
    if head is None:
        if rows:
            return Verification(False, last, f"the log's head record is missing (last entry {last})")
    elif int(head["seq"]) > last:
        return Verification(False, last + 1, f"entry {last + 1} was deleted (the log was written up to entry "
                                             f"{head['seq']}, it ends at entry {last})")
    elif int(head["seq"]) < last:
        first = int(head["seq"]) + 1
        return Verification(False, first, f"entry {first} was not written by releasegate (the log's head "
                                          f"says it ends at entry {head['seq']})")
    elif head["hash"] != prev:
        return Verification(False, last, f"entry {last} was replaced (its hash is not the one recorded "
                                         "when it was written)")
    return Verification(True, None, f"{len(rows)} entries")


def _against_file(rows: list[Any], lines: list[anchor.Line] | None, since: int | None, *,
                  shared: bool = False) -> Verification | None:
    """The head file against an intact chain: None when they agree, else what is missing or rewritten.

    ``shared``: a PostgreSQL store, which servers with state dirs of their own append to; each state dir's file
    starts when its first entry was written there and lags the entries others wrote since, so only what it does
    record is checked: every line's hash, and no line beyond the chain's end (a cut tail)."""
    name = anchor.FILE
    if shared and lines is None:
        return None
    if lines is None:
        if since is not None:
            return Verification(False, since, f"{name} is missing (the log has been anchored in it since entry "
                                              f"{since}): it was deleted")
        return None
    if not lines:
        return Verification(False, since, f"{name} is empty (it was cut)") if since is not None else None
    if since is None:
        return Verification(False, None, f"the database's record of {name} (audit_anchor) is missing: the "
                                         "database was edited")
    first = min(line.seq for line in lines)
    if first > since and not shared:
        return Verification(False, since, f"{name} starts at entry {first} but was started at entry {since}: it "
                                          "was deleted or cut at its start")
    hashes = {int(row["seq"]): str(row["hash"]) for row in rows}
    for line in lines:
        if line.seq in hashes and hashes[line.seq] != line.hash:
            return Verification(False, line.seq, f"entry {line.seq} was replaced: its hash is not the one {name} "
                                                 "recorded when it was written (the chain was rewritten up to it)")
    top = max(line.seq for line in lines)
    last = int(rows[-1]["seq"]) if rows else 0
    if top > last:
        gone = f"entry {top}" if top == last + 1 else f"entries {last + 1} to {top}"
        ends = f"the log ends at entry {last}" if last else "the log is empty"
        return Verification(False, last + 1, f"{gone} {'was' if top == last + 1 else 'were'} deleted ({name} "
                                             f"records entry {top}, {ends})")
    if top < last and not shared:
        extra = f"entry {last} is" if last == top + 1 else f"entries {top + 1} to {last} are"
        return Verification(False, top + 1, f"{extra} not in {name} (it ends at entry {top}): added to the "
                                            "database directly, or the file was cut")
    return None


_STATE = (("gov_releases", "release"), ("gov_signoffs", "sign-off"), ("gov_tokens", "token"),
          ("gov_documents", "stored policy or calendar version"), ("rollouts", "rollout"))


def _state_rows(db: DB) -> str:
    """What the state dir holds that an audit entry was written for ("2 releases, 1 rollout"); "" when nothing."""
    present = tables(db)
    held = []
    for table, noun in _STATE:
        if table in present:
            count = int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
            if count:
                held.append(f"{count} {noun}{'' if count == 1 else 's'}")
    return ", ".join(held)


def _entry(row: Any, evidence: dict[str, Any]) -> Entry:
    return Entry(int(row["seq"]), float(row["at"]), row["actor"], row["action"], row["release"], row["commit_sha"],
                 row["decision"], evidence, row["prev_hash"], row["hash"])


def _check_row(db: DB, row: Any, total: int) -> str | None:
    """None when the row's hash is right; else whether it was altered or moved from another position."""
    seq = int(row["seq"])
    try:
        evidence = json.loads(row["evidence"])
        fields = (float(row["at"]), str(row["actor"]), str(row["action"]), row["release"], row["commit_sha"],
                  row["decision"], evidence)
    except (TypeError, ValueError):
        return f"entry {seq} was altered (its fields no longer read back)"
    if not isinstance(evidence, dict):
        return f"entry {seq} was altered (its evidence is not a JSON object)"
    if entry_hash(seq, *fields, row["prev_hash"]) == row["hash"]:
        return None
    for distance in range(1, min(total, _REORDER_SEARCH) + 1):
        for other in (seq - distance, seq + distance):
            if other >= 1 and entry_hash(other, *fields, row["prev_hash"]) == row["hash"]:
                return f"entry {seq} is out of order: it was written as entry {other} (entries were reordered)"
    return f"entry {seq} was altered (hash mismatch)"


__all__ = ["GENESIS", "SCHEMA", "AuditLog", "Entry", "Verification", "append_entry", "create_schema", "entry_hash",
           "immediate", "open_db"]  # the last three re-exported from releasegate.store.db

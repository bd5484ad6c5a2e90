"""Controller metrics for Prometheus: a collector that reads the state dir's store on every scrape.

Why a collector over the store and not counters in the controller: the controller is one foreground process per
rollout (``deploy``/``resume``) and the data plane must not depend on it, so nothing that lives in its memory can
be scraped reliably. Everything worth graphing is persisted anyway (rollout states, the decisions as events), so
``releasegate metrics``, the ``receive-alerts`` server and a future long-lived server expose the same numbers by
reading the same SQLite file, whichever process happens to drive a rollout.

How it reads: a read-only connection (``mode=ro``: it never creates, migrates or locks anything for writing) and
one deferred transaction per scrape, so every number comes from one consistent snapshot. The store is in WAL
mode, so that read never blocks a controller writing meanwhile. On a PostgreSQL store (``RELEASEGATE_STORE``) the
same queries run in one REPEATABLE READ transaction per scrape. Events are append-only (``AUTOINCREMENT`` seq),
so they are folded into the counters once: a scrape reads only the events written since the previous one.

What it yields (the metric names and labels are documented in docs/integrations.md):

- per service, from its latest rollout: ``releasegate_rollout_phase``, ``releasegate_rollout_active``,
  ``releasegate_route_weight``, ``releasegate_rollout_step``, ``releasegate_rollout_started_timestamp_seconds``;
- counters over the whole history: ``releasegate_decisions_total``, ``releasegate_rollbacks_total``,
  ``releasegate_rollouts_total``; their label values are a fixed set, all present from a service's first rollout
  (0 until it happens), so ``increase()`` works from the start;
- ``releasegate_store_up``: 1 when the store could be read, 0 when not (no database yet, a wrong ``--state-dir``).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from releasegate.alert_receiver import ACTOR as ALERT_ACTOR
from releasegate.engine.state import RolloutState
from releasegate.errors import UserError
from releasegate.store.db import open_db, store_url, tables, tiebreak

DECISIONS = ("step", "analysis_passed", "held", "waiting", "paused", "switched", "watch_passed", "rollback",
             "rollback_step", "errors_persist", "incident", "abort", "promoted", "rolled_back", "aborted", "failed")
"""The event kinds counted as decisions (what ``releasegate history`` shows under the same names): a step taken or
passed, traffic held by a change freeze, waiting for evidence or paused for an operator, the switch to 100 %, a
rollback decided, each of its steps, errors persisting at a stair, the incident at 0 %, and how rollouts ended.
Progress chatter (intents, analyses, retries) is left out."""
OUTCOMES = ("promoted", "rolled_back", "aborted", "failed")
TRIGGERS = ("automatic", "manual", "alert")
_FOLDED = (*DECISIONS, "command")


@dataclass
class _Tally:
    """The events folded in so far; ``file`` identifies the database, so a replaced one is read afresh."""

    file: tuple[int, int] = (0, 0)
    seq: int = 0
    decisions: Counter[tuple[str, str]] = field(default_factory=Counter)
    rollbacks: Counter[tuple[str, str]] = field(default_factory=Counter)
    counted: set[str] = field(default_factory=set)  # rollout ids whose rollback is already counted

    def fold(self, rows: list[Any]) -> None:
        """Events are append-only, so every counter here only grows (a rollback is counted once, at its first
        sign, and stays counted even when an operator aborts it half-way)."""
        for row in rows:
            kind, rollout, service = row["kind"], row["rollout_id"], row["service"]
            if kind in DECISIONS:
                self.decisions[service, kind] += 1
            if rollout is None or rollout in self.counted:
                continue
            trigger = None
            if kind == "rollback":  # the engine decided it: a breach, a dead instance, a failed step
                trigger = "automatic"
            elif kind == "rolled_back":  # without an earlier sign: `rollback` after the promotion
                trigger = "manual"
            elif kind == "command" and " refused: " not in row["message"]:
                data = json.loads(row["data"] or "{}")
                if isinstance(data, dict) and data.get("command") == "rollback":
                    trigger = "alert" if data.get("actor") == ALERT_ACTOR else "manual"
            if trigger is not None:
                self.counted.add(rollout)
                self.rollbacks[service, trigger] += 1


@dataclass(frozen=True)
class _Latest:
    state: RolloutState
    current: str | None  # what the services table says runs (it changes after a rollback of a promotion)

    def weights(self) -> dict[str, int]:
        """Percent per version: the persisted weight of the new version while the rollout runs (the last weight
        the router confirmed), else 100 for the version the service runs now; both versions always listed."""
        st = self.state
        out = {st.version: st.weight}
        if st.previous is not None:
            out[st.previous] = 100 - st.weight
        if not st.active and self.current is not None:
            out = {name: 0 for name in out} | {self.current: 100}
        return out


@dataclass
class _Snapshot:
    latest: dict[str, _Latest] = field(default_factory=dict)
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    rollbacks: Counter[tuple[str, str]] = field(default_factory=Counter)
    decisions: Counter[tuple[str, str]] = field(default_factory=Counter)


class StoreCollector:
    """A ``prometheus_client`` collector over ``state_dir/releasegate.db``; safe for concurrent scrapes."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / "releasegate.db"
        self.last_error: str | None = None
        self._tally = _Tally()
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        try:
            with self._lock:
                snap = self._read()
            self.last_error = None
        except (sqlite3.Error, OSError, ValueError, UserError) as exc:
            self.last_error = f"{self.path}: {type(exc).__name__}: {exc}"
            snap = None
        up = GaugeMetricFamily("releasegate_store_up", "1 when the releasegate store could be read at this scrape.")
        up.add_metric([], 0 if snap is None else 1)
        yield up
        if snap is not None:
            yield from _families(snap)

    def _read(self) -> _Snapshot:
        if store_url() is not None:
            return self._read_pg()
        stat = os.stat(self.path)  # before connecting: mode=ro fails on a missing file, but say it plainly
        uri = self.path.resolve().as_uri() + "?mode=ro"
        db = sqlite3.connect(uri, uri=True, timeout=5, isolation_level=None, check_same_thread=False)
        try:
            db.row_factory = sqlite3.Row
            db.execute("BEGIN")  # deferred: a read snapshot, no lock a writer would wait on (WAL)
            try:
                return self._query(db, (stat.st_dev, stat.st_ino))
            finally:
                db.execute("COMMIT")
        finally:
            db.close()

    def _read_pg(self) -> _Snapshot:
        """The PostgreSQL store: the same queries in one REPEATABLE READ snapshot (``BEGIN`` there)."""
        import psycopg

        try:
            db = open_db(self.state_dir)
        except psycopg.Error as exc:
            raise OSError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
        try:
            db.execute("BEGIN")
            try:
                return self._query(db, (0, 0))
            finally:
                db.execute("COMMIT")
        finally:
            db.close()

    def _query(self, db: Any, file: tuple[int, int]) -> _Snapshot:
        if not {"rollouts", "events", "services"} <= tables(db):
            return _Snapshot()  # a state dir whose database has no rollout yet (e.g. only the audit log)
        top = int(db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])
        tally = self._tally
        if file != tally.file or top < tally.seq:
            tally = self._tally = _Tally(file=file)
        marks = ",".join("?" * len(_FOLDED))
        tally.fold(db.execute(f"SELECT service, rollout_id, kind, message, data FROM events WHERE seq > ? AND "
                              f"seq <= ? AND kind IN ({marks}) ORDER BY seq", (tally.seq, top, *_FOLDED)).fetchall())
        tally.seq = top
        snap = _Snapshot(decisions=Counter(tally.decisions), rollbacks=Counter(tally.rollbacks))
        current = {r["service"]: r["current"] for r in db.execute("SELECT service, current FROM services")}
        order = tiebreak(db)
        for row in db.execute(f"SELECT service, state_json FROM rollouts AS r WHERE {order} = (SELECT {order} FROM "
                              f"rollouts WHERE service = r.service ORDER BY created_at DESC, {order} DESC LIMIT 1)"):
            st = RolloutState.model_validate_json(row["state_json"])
            snap.latest[row["service"]] = _Latest(st, current.get(row["service"]))
        for row in db.execute("SELECT service, status FROM rollouts"):
            if row["status"] in OUTCOMES:
                snap.outcomes[row["service"], row["status"]] += 1
        return snap


def _families(snap: _Snapshot) -> Iterator[Metric]:
    services = sorted(snap.latest)
    phase = GaugeMetricFamily("releasegate_rollout_phase", "1 for the phase of each service's latest rollout.",
                              labels=["service", "rollout", "version", "phase"])
    active = GaugeMetricFamily("releasegate_rollout_active", "1 while the service's latest rollout runs.",
                               labels=["service"])
    weight = GaugeMetricFamily("releasegate_route_weight", "Percent of the service's traffic per version, as "
                               "persisted by its latest rollout.", labels=["service", "version"])
    step = GaugeMetricFamily("releasegate_rollout_step", "Index (from 0) of the canary step of the latest rollout.",
                             labels=["service"])
    started = GaugeMetricFamily("releasegate_rollout_started_timestamp_seconds", "When the latest rollout was "
                                "created (Unix time).", labels=["service"])
    for service in services:
        st = snap.latest[service].state
        phase.add_metric([service, st.id, st.version, st.phase], 1)
        active.add_metric([service], 1 if st.active else 0)
        for version, percent in sorted(snap.latest[service].weights().items()):
            weight.add_metric([service, version], percent)
        step.add_metric([service], st.step)
        started.add_metric([service], st.created_at)
    yield from (phase, active, weight, step, started)
    counted = sorted({s for s, _ in snap.outcomes} | {s for s, _ in snap.decisions} | set(services))
    for name, doc, label, values, counts in (
            ("releasegate_decisions", "Decisions recorded by controllers, by kind.", "decision", DECISIONS,
             snap.decisions),
            ("releasegate_rollbacks", "Rollouts rolled back, by what started the rollback.", "trigger", TRIGGERS,
             snap.rollbacks),
            ("releasegate_rollouts", "Finished rollouts, by outcome.", "outcome", OUTCOMES, snap.outcomes)):
        family = CounterMetricFamily(name, doc, labels=["service", label])
        for service in counted:
            for value in values:
                family.add_metric([service, value], counts[service, value])
        yield family


def registry_for(state_dir: Path) -> CollectorRegistry:
    """A registry holding only the store collector (no process metrics: the numbers are the store's)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(state_dir))
    return registry


__all__ = ["DECISIONS", "OUTCOMES", "TRIGGERS", "StoreCollector", "registry_for"]

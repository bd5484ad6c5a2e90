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

What is kept between scrapes, so a scrape stays cheap with 1,000 rollouts in one server (bench/bench_server_scale.py
measures it): the folded events, and each service's latest rollout state parsed, with the stored text it was parsed
from; a scrape compares that text with the stored one and parses only the states that changed (the comparison,
not a timestamp, decides: two saves within one clock tick still differ). Finished rollouts are counted by the
database (``GROUP BY``), not row by row.

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
        self._states: dict[str, tuple[str, RolloutState]] = {}  # service -> (stored text, its latest state)
        self._rendered = _Rendered()
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

    def render(self) -> bytes:
        """What ``generate_latest`` writes for this collector, written by ``_Rendered``: at 1,000 services
        prometheus_client's writer took about half a second a scrape; here only changed services are written."""
        try:
            with self._lock:
                snap = self._read()
                text = self._rendered.text(snap)
            self.last_error = None
        except (sqlite3.Error, OSError, ValueError) as exc:
            self.last_error = f"{self.path}: {type(exc).__name__}: {exc}"
            snap, text = None, ""
        up = _header("releasegate_store_up", "1 when the releasegate store could be read at this scrape.", "gauge")
        return (up + f"releasegate_store_up {0.0 if snap is None else 1.0}\n" + text).encode()

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
            self._states = {}
        marks = ",".join("?" * len(_FOLDED))
        tally.fold(db.execute(f"SELECT service, rollout_id, kind, message, data FROM events WHERE seq > ? AND "
                              f"seq <= ? AND kind IN ({marks}) ORDER BY seq", (tally.seq, top, *_FOLDED)).fetchall())
        tally.seq = top
        snap = _Snapshot(decisions=Counter(tally.decisions), rollbacks=Counter(tally.rollbacks))
        current = {r["service"]: r["current"] for r in db.execute("SELECT service, current FROM services")}
        states: dict[str, tuple[str, RolloutState]] = {}
        order = tiebreak(db)
        for row in db.execute(f"SELECT service, state_json FROM rollouts AS r WHERE {order} = (SELECT {order} FROM "
                              f"rollouts WHERE service = r.service ORDER BY created_at DESC, {order} DESC LIMIT 1)"):
            kept = self._states.get(row["service"])
            if kept is None or kept[0] != row["state_json"]:  # parsed again only when it changed
                kept = (row["state_json"], RolloutState.model_validate_json(row["state_json"]))
            states[row["service"]] = kept
            snap.latest[row["service"]] = _Latest(kept[1], current.get(row["service"]))
        self._states = states
        marks = ",".join("?" * len(OUTCOMES))
        for row in db.execute(f"SELECT service, status, COUNT(*) AS n FROM rollouts WHERE status IN ({marks}) "
                              "GROUP BY service, status", OUTCOMES):
            snap.outcomes[row["service"], row["status"]] += int(row["n"])
        return snap


Labels = tuple[str, ...]
Samples = list[tuple[Labels, float]]

GAUGES = (
    ("releasegate_rollout_phase", "1 for the phase of each service's latest rollout.",
     ("service", "rollout", "version", "phase")),
    ("releasegate_rollout_active", "1 while the service's latest rollout runs.", ("service",)),
    ("releasegate_route_weight", "Percent of the service's traffic per version, as persisted by its latest rollout.",
     ("service", "version")),
    ("releasegate_rollout_step", "Index (from 0) of the canary step of the latest rollout.", ("service",)),
    ("releasegate_rollout_started_timestamp_seconds", "When the latest rollout was created (Unix time).",
     ("service",)))
COUNTERS = (
    ("releasegate_decisions", "Decisions recorded by controllers, by kind.", ("service", "decision"), DECISIONS),
    ("releasegate_rollbacks", "Rollouts rolled back, by what started the rollback.", ("service", "trigger"),
     TRIGGERS),
    ("releasegate_rollouts", "Finished rollouts, by outcome.", ("service", "outcome"), OUTCOMES))


def _gauge_samples(service: str, latest: _Latest) -> list[Samples]:
    """One list of samples per family of ``GAUGES``, for one service."""
    st = latest.state
    return [[((service, st.id, st.version, st.phase), 1.0)], [((service,), 1.0 if st.active else 0.0)],
            [((service, version), float(percent)) for version, percent in sorted(latest.weights().items())],
            [((service,), float(st.step))], [((service,), st.created_at)]]


def _counter_samples(service: str, snap: _Snapshot) -> list[Samples]:
    """One list of samples per family of ``COUNTERS``, for one service (every label value, 0 until it happens)."""
    tallies = (snap.decisions, snap.rollbacks, snap.outcomes)
    return [[((service, value), float(counts[service, value])) for value in values]
            for counts, (_, _, _, values) in zip(tallies, COUNTERS, strict=True)]


def _counted(snap: _Snapshot) -> list[str]:
    return sorted({s for s, _ in snap.outcomes} | {s for s, _ in snap.decisions} | set(snap.latest))


def _families(snap: _Snapshot) -> Iterator[Metric]:
    services = sorted(snap.latest)
    gauges = [GaugeMetricFamily(name, doc, labels=list(labels)) for name, doc, labels in GAUGES]
    for service in services:
        for gauge, samples in zip(gauges, _gauge_samples(service, snap.latest[service]), strict=True):
            for labels, value in samples:
                gauge.add_metric(list(labels), value)
    yield from gauges
    counters = [CounterMetricFamily(name, doc, labels=list(labels)) for name, doc, labels, _ in COUNTERS]
    for service in _counted(snap):
        for counter, samples in zip(counters, _counter_samples(service, snap), strict=True):
            for labels, value in samples:
                counter.add_metric(list(labels), value)
    yield from counters


class _Rendered:
    """Each service's exposition lines, kept with what they were written from: a scrape writes again only the
    services whose shown values changed (an analysis every second changes a state, not its phase or weight)."""

    def __init__(self) -> None:
        self.gauges: dict[str, tuple[tuple[object, ...], list[str]]] = {}
        self.counters: dict[str, tuple[tuple[object, ...], list[str]]] = {}

    def text(self, snap: _Snapshot) -> str:
        services = sorted(snap.latest)
        gauges: dict[str, tuple[tuple[object, ...], list[str]]] = {}
        for service in services:
            samples = _gauge_samples(service, snap.latest[service])
            key = tuple(tuple(s) for s in samples)
            kept = self.gauges.get(service)
            gauges[service] = kept if kept is not None and kept[0] == key else (key, [
                _lines(name, labels, rows) for (name, _, labels), rows in zip(GAUGES, samples, strict=True)])
        counters: dict[str, tuple[tuple[object, ...], list[str]]] = {}
        for service in _counted(snap):
            samples = _counter_samples(service, snap)
            key = tuple(tuple(s) for s in samples)
            kept = self.counters.get(service)
            counters[service] = kept if kept is not None and kept[0] == key else (key, [
                _lines(name + "_total", labels, rows)
                for (name, _, labels, _), rows in zip(COUNTERS, samples, strict=True)])
        self.gauges, self.counters = gauges, counters
        out: list[str] = []
        for i, (name, doc, _) in enumerate(GAUGES):
            out.append(_header(name, doc, "gauge"))
            out.extend(chunks[i] for _, chunks in gauges.values())
        for i, (name, doc, _, _) in enumerate(COUNTERS):
            out.append(_header(name + "_total", doc, "counter"))
            out.extend(chunks[i] for _, chunks in counters.values())
        return "".join(out)


def _header(name: str, doc: str, kind: str) -> str:
    escaped = doc.replace("\\", "\\\\").replace("\n", "\\n")
    return f"# HELP {name} {escaped}\n# TYPE {name} {kind}\n"


def _lines(name: str, labels: tuple[str, ...], rows: Samples) -> str:
    """Prometheus text format 0.0.4 lines, as prometheus_client writes them (its writer costs far more)."""
    return "".join(f"{name}{{{','.join(f'{k}={_quoted(v)}' for k, v in zip(labels, values, strict=True))}}} "
                   f"{_number(value)}\n" for values, value in rows)


def _number(value: float) -> str:
    if value != value:
        return "NaN"
    return {float("inf"): "+Inf", float("-inf"): "-Inf"}.get(value, repr(float(value)))


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"') + '"'


def registry_for(state_dir: Path) -> CollectorRegistry:
    """A registry holding only the store collector (no process metrics: the numbers are the store's)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(state_dir))
    return registry


__all__ = ["DECISIONS", "OUTCOMES", "TRIGGERS", "StoreCollector", "registry_for"]

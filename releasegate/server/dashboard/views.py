"""What the dashboard's pages and live streams show, built from the store alone (no HTML here).

Why one module of plain dicts: the page templates and the server-sent events show the same data, so the first
render and every live update agree; the JavaScript only swaps values in. The charts are built from the analysis
decisions the controller records (each carries ``data.values``: rule key -> the new version's value), with each
rule's bounds read from the rollout's stored spec; ``data.traffic`` (requests and errors per version, recorded by
the report work) adds a request-count chart when present.
"""

from __future__ import annotations

import copy
import itertools
import threading
import time
from pathlib import Path
from typing import Any

from releasegate import reading, service
from releasegate.engine.analysis import rule_key
from releasegate.reports.traffic import ROUTER_HISTORY
from releasegate.server.auth import allowed
from releasegate.server.dashboard.data_plane import data_plane  # moved there; still importable here
from releasegate.spec.models import Spec
from releasegate.store.server import Grant
from releasegate.store.sqlite import RolloutRecord, Store, owner_alive

WINDOW = 30 * 60.0
"""Seconds of analysis the charts show (the issue's 30 minutes)."""
SHOWN_EVENTS = 200
"""Decisions listed on a rollout page (newest first); the analysis ticks among them are charted, not listed."""
_TICKS = {"analysis", "waiting", "held"}
"""Decision kinds recorded at every analysis interval: charted, and listed only when their reason changes."""


class Overview:
    """Every service's row, computed at most once per ``every`` seconds for all the server's sessions: a row asks
    the platform's records which instances run (an SSH fleet's hosts), which open tabs must not multiply."""

    def __init__(self, state_dir: Path, every: float) -> None:
        self.state_dir, self.every = state_dir, every
        self._rows: list[dict[str, Any]] = []
        self._at = -every
        self._lock = threading.Lock()

    def rows(self, grant: Grant) -> list[dict[str, Any]]:
        """The rows ``grant`` may see, the ones needing attention first (then by name)."""
        with self._lock:  # one computation at a time; the others wait for it and share it
            if time.monotonic() - self._at >= self.every:
                self._rows = overview(self.state_dir)
                self._at = time.monotonic()
            return [copy.deepcopy(r) for r in self._rows if allowed(grant, "viewer", r["service"])]


def overview(state_dir: Path) -> list[dict[str, Any]]:
    """One row per service, the ones needing attention first (then by name)."""
    ctx = service.new_context(state_dir)
    rows = reading.status(ctx)
    store = Store(state_dir)
    try:
        for row in rows:
            last = next((r.state for r in store.rollouts(row["service"], 5) if not r.state.active), None)
            row["last"] = None if last is None else {"id": last.id, "version": last.version, "status": last.status,
                                                     "finished_at": last.finished_at, "reason": last.reason}
            row["attention"] = _attention(row)
            row["running"] = ", ".join(f"{v} ({n})" for v, n in sorted(row["instances"].items())) or "none"
    finally:
        store.close()
    return sorted(rows, key=lambda r: (r["attention"] is None, r["service"]))


def _attention(row: dict[str, Any]) -> str | None:
    """Why a person should look at this service now, or None."""
    ro = row.get("rollout")
    if ro is not None:
        if not ro["controller_alive"]:
            return "no controller drives the rollout: resume it"
        if ro.get("paused"):
            return f"paused: {ro['paused']['reason']}"
        if ro["phase"] == "rollback":
            return "rolling back"
        return None
    last = row.get("last")
    if last is not None and last["status"] in ("rolled_back", "failed"):
        return f"last rollout {last['status'].replace('_', ' ')}: {last['reason'] or 'no reason recorded'}"
    if row["state"] == "not_running" and row.get("last_version"):
        return "not running"
    return None


def rollout(rec: RolloutRecord, events: list[dict[str, Any]]) -> dict[str, Any]:
    """The rollout page's data: state, timeline, decisions, charts (``events`` oldest first)."""
    st = rec.state
    spec = Spec.model_validate_json(rec.spec_json)
    weights = [s.weight for s in spec.strategy.steps]
    timeline = [{"n": i + 1, "weight": w, "state": _step_state(st.step, i, st.active, st.status)}
                for i, w in enumerate(weights)]
    return {
        "state": {"id": st.id, "service": st.service, "version": st.version, "previous": st.previous,
                  "strategy": st.strategy, "status": st.status, "phase": st.phase, "step": st.step,
                  "weight": st.weight, "active": st.active, "waiting": st.waiting, "reason": st.reason,
                  "paused": st.paused.reason if st.paused else None, "updated_at": st.updated_at,
                  "created_at": st.created_at, "finished_at": st.finished_at, "actor": st.actor,
                  "controller_alive": owner_alive(rec.owner) if st.active else None},
        "timeline": timeline,
        "decisions": decisions(events),
        "charts": charts(spec, events),
        "last_seq": events[-1]["seq"] if events else 0,
    }


def _step_state(current: int, index: int, active: bool, status: str) -> str:
    if not active:
        return "done" if status == "promoted" else ("reached" if index < current else "skipped")
    return "done" if index < current else ("current" if index == current else "next")


def decisions(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The decisions worth reading, newest first: every one but repeated analysis ticks of the same reason."""
    shown: list[dict[str, Any]] = []
    last_tick: tuple[str, str] | None = None
    for e in events:
        if e["kind"] in _TICKS:
            if last_tick == (e["kind"], e["message"]):
                continue
            last_tick = (e["kind"], e["message"])
        else:
            last_tick = None
        values = e["data"].get("values") if isinstance(e["data"], dict) else None
        shown.append({"seq": e["seq"], "at": e["at"], "kind": e["kind"], "message": e["message"],
                      "values": {k.split(":", 1)[-1]: v for k, v in (values or {}).items()}})
    return shown[::-1][:SHOWN_EVENTS]


def charts(spec: Spec, events: list[dict[str, Any]], now: float | None = None) -> list[dict[str, Any]]:
    """One chart per analysis rule (the new version's value at each analysis, the rule's bounds as lines) over
    the last ``WINDOW`` seconds, and one of requests per version when analyses carry ``traffic``."""
    newest = events[-1]["at"] if events else (now or time.time())
    since = max(newest, now or 0.0) - WINDOW
    ticks = [e for e in events if e["at"] >= since and isinstance(e["data"], dict) and "values" in e["data"]]
    out: list[dict[str, Any]] = []
    for i, rule in enumerate(spec.analysis.rules):
        key = rule_key(i, rule)
        points = [(e["at"], e["data"]["values"].get(key)) for e in ticks if key in e["data"]["values"]]
        out.append({"key": key, "title": f"rolls back when {rule.describe()}", "metric": rule.metric,
                    "max": rule.max, "min": rule.min,
                    "x": [p[0] for p in points], "y": [p[1] for p in points]})
    traffic = [e for e in ticks if isinstance(e["data"].get("traffic"), dict)]
    if len(traffic) > 1:
        out += _per_version(traffic, spec)
    return out


def _per_version(traffic: list[dict[str, Any]], spec: Spec) -> list[dict[str, Any]]:
    """Request rate and error rate of every version between consecutive analyses, from the cumulative counts the
    controller records (``data.traffic``, docs/reports.md): the previous version's beside the new one's. The counts
    cover the rollout since its start only for its first hour (the router keeps an hour); later points have none."""
    def since_start(e: dict[str, Any]) -> bool:
        return float(e["data"].get("traffic_window") or 0.0) < ROUTER_HISTORY

    versions = sorted({v for e in traffic for v in e["data"]["traffic"]})
    x, rates, errors, p95 = [], {v: list[float | None]() for v in versions}, \
        {v: list[float | None]() for v in versions}, {v: list[float | None]() for v in versions}
    for before, after in itertools.pairwise(traffic):
        x.append(after["at"])
        for v in versions:
            a, b = before["data"]["traffic"].get(v) or {}, after["data"]["traffic"].get(v) or {}
            p95[v].append(b.get("p95"))  # measured over the last analysis interval: no difference to take
            ok = since_start(before) and since_start(after) and "requests" in a and "requests" in b
            sent = b["requests"] - a["requests"] if ok else None
            took = after["at"] - before["at"]
            rates[v].append(sent / took if sent is not None and took > 0 else None)
            errors[v].append((b.get("errors", 0) - a.get("errors", 0)) / sent if sent else None)
    def bound(metric: str) -> str:
        found = next((r.max for r in spec.analysis.rules if r.metric == metric and r.max is not None), None)
        return "" if found is None else f"; the rule's max is {found}"

    charted = [{"key": "rps", "title": "requests per second, by version", "metric": "rps", "max": None,
                "min": None, "x": x, "series": rates},
               {"key": "errors", "title": "error rate (5xx), by version" + bound("error_rate"),
                "metric": "error_rate", "max": None, "min": None, "x": x, "series": errors}]
    if any(value is not None for values in p95.values() for value in values):
        charted.append({"key": "p95", "title": "p95 latency (seconds), by version" + bound("latency_p95"),
                        "metric": "latency_p95", "max": None, "min": None, "x": x, "series": p95})
    return charted


__all__ = ["WINDOW", "Overview", "charts", "data_plane", "decisions", "overview", "rollout"]

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
from releasegate.engine.analysis import rule_key, span_text
from releasegate.engine.judging import figures
from releasegate.engine.state import RolloutState
from releasegate.progress import JUDGE_COLUMNS, judge_header, judge_rows
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


HISTORY = 20
"""Rollouts per service read for its environments' rows (an environment deployed to longer ago is not shown)."""


def overview(state_dir: Path) -> list[dict[str, Any]]:
    """One row per service and environment, the ones needing attention first (then by release, environment in
    the stored policy's pipeline order, service).

    Why a service can have several rows: the environment is what a deploy was admitted for (``deploy --env``), so
    one service deployed to ``stage`` and then ``prod`` has a row for each. Only the environment of its latest
    rollout has live instances, an active rollout and health; another environment's row says which version last
    went out there and how it ended, and that the instances now serve the newer one. Specs of several
    environments with their own service names (``shop-stage``, ``shop``) sharing ``governance.release`` sort
    next to each other under that release."""
    ctx = service.new_context(state_dir)
    rows = reading.status(ctx)
    order = _pipeline(state_dir)
    store = Store(state_dir)
    out: list[dict[str, Any]] = []
    try:
        for row in rows:
            recent = store.rollouts(row["service"], HISTORY)
            here = recent[0].state.env if recent else None
            release = _release_name(recent[0].spec_json, row["service"]) if recent else row["service"]
            mine = [r.state for r in recent if r.state.env == here]
            last = next((s for s in mine if not s.active), None)
            row.update(env=here or "", release=release, live=True, last=_last(last),
                       running=", ".join(f"{v} ({n})" for v, n in sorted(row["instances"].items())) or "none")
            row["attention"] = _attention(row, _breaching(recent[0]) if recent and recent[0].state.active else None)
            out.append(row)
            for env in dict.fromkeys(r.state.env for r in recent if r.state.env != here):
                out.append(_elsewhere(row["service"], release, env, here or "",
                                      [r.state for r in recent if r.state.env == env]))
    finally:
        store.close()
    return sorted(out, key=lambda r: (_urgency(r), r["release"], order.get(r["env"], len(order)), r["env"],
                                      r["service"]))


def _urgency(row: dict[str, Any]) -> int:
    """A rollout in trouble now, then a last rollout that failed, then a service that is not running, then the
    rest."""
    if row["attention"] is None:
        return 3
    return 0 if row.get("rollout") else 1 if row.get("last") and row["last"]["status"] in ("rolled_back",
                                                                                         "failed") else 2


def in_env(rows: list[dict[str, Any]], env: str) -> list[dict[str, Any]]:
    """The rows of one environment (``?env=prod``); every row for an empty choice."""
    return [r for r in rows if r["env"] == env] if env else rows


def _last(st: RolloutState | None) -> dict[str, Any] | None:
    return None if st is None else {"id": st.id, "version": st.version, "status": st.status,
                                    "finished_at": st.finished_at, "reason": st.reason}


def _elsewhere(name: str, release: str, env: str, here: str, states: list[RolloutState]) -> dict[str, Any]:
    """The row of an environment ``name`` was deployed to before its latest rollout (in ``here``)."""
    promoted = next((s for s in states if s.status == "promoted"), None)
    return {"service": name, "env": env, "release": release, "live": False, "state": "superseded",
            "current": None, "last_version": promoted.version if promoted else None,
            "running": f"none for {env}: the instances now serve the {here} rollout", "rollout": None,
            "last": _last(states[0]), "attention": None}


def _release_name(spec_json: str, name: str) -> str:
    """``governance.release`` of a stored spec, without validating the whole spec (every row, every 2 s)."""
    import json

    try:
        release = (json.loads(spec_json).get("governance") or {}).get("release")
    except (ValueError, AttributeError):
        return name
    return str(release) if release else name


def _pipeline(state_dir: Path) -> dict[str, int]:
    """Environment -> its place in the stored policy (dev, stage, prod as written); empty without a policy."""
    from releasegate.errors import ReleasegateError
    from releasegate.governance.stored import latest, parse_policy

    try:
        doc = latest(state_dir, "policy")
        return {} if doc is None else {env: i for i, env in enumerate(parse_policy(doc).environments)}
    except ReleasegateError:
        return {}


def _breaching(rec: RolloutRecord) -> str | None:
    """New instances failing their health checks under traffic, or a rule whose latest value breaks its bound,
    not yet for long enough to roll back: the rollout is about to roll back unless it recovers."""
    st = rec.state
    if st.phase == "rollback":
        return None
    spec = Spec.model_validate_json(rec.spec_json)
    if st.health_failures:
        worst = sorted(st.health_failures.items(), key=lambda kv: (-kv[1], kv[0]))
        shown = ", ".join(f"{address} ({n} in a row)" for address, n in worst[:3])
        return (f"health checks failing: {shown}; rolls back at {spec.health.failure_threshold} in a row"
                + (f"; every new instance down since {span_text(max(0.0, time.time() - st.health_down_since))} ago "
                   f"(rolls back at {span_text(spec.health.down_after)})" if st.health_down_since is not None
                   else ""))
    for i, rule in enumerate(spec.analysis.rules):
        history = st.samples.get(rule_key(i, rule))
        value = history[-1].value if history else None
        if value is not None and rule.broken_by(value):
            above = rule.max is not None and value > rule.max
            bound = f"> {rule.show(rule.max, exact=True)}" if rule.max is not None and above \
                else f"< {rule.show(rule.min or 0.0, exact=True)}"
            return (f"breaching: {rule.metric} {rule.show(value)} {bound}; rolls back if it holds for "
                    f"{span_text(rule.for_)}")
    return None


def _attention(row: dict[str, Any], breaching: str | None = None) -> str | None:
    """Why a person should look at this service now, or None."""
    ro = row.get("rollout")
    if ro is not None:
        if not ro["controller_alive"]:
            return "no controller drives the rollout: resume it"
        if ro.get("paused"):
            return f"paused: {ro['paused']['reason']}"
        if ro["phase"] == "rollback":
            return "rolling back"
        if breaching:
            return breaching
        if ro.get("waiting") and not str(ro["waiting"]).startswith("retrying"):
            return str(ro["waiting"])
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
                  "created_at": st.created_at, "finished_at": st.finished_at, "actor": st.actor, "env": st.env,
                  "controller_alive": owner_alive(rec.owner) if st.active else None},
        "timeline": timeline,
        "judge": judge(st, spec),
        "decisions": decisions(events),
        "charts": charts(spec, events),
        "last_seq": events[-1]["seq"] if events else 0,
    }


def judge(st: RolloutState, spec: Spec) -> dict[str, Any] | None:
    """The judge's figures at a judged step, as `status` shows them (progress.judge_rows); None elsewhere."""
    j = figures(st, spec) if st.active else None
    if j is None:
        return None
    return {"said": judge_header(j, st.version), "columns": list(JUDGE_COLUMNS), "rows": judge_rows(j)}


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


__all__ = ["WINDOW", "Overview", "charts", "data_plane", "decisions", "in_env", "overview", "rollout"]

"""DORA delivery metrics from the store's own history (docs/dora.md): deployment frequency, lead time for changes,
change failure rate and time to restore, per service and environment.

Why from the store and nothing else: every rollout releasegate ran is there with its outcome, its environment, whether
it was a hotfix and its decisions as events, and the release registry holds the commit each version was built from
(with its commit time since ``release cut`` records it). No ticketing or incident system is asked, so the numbers
say what the deploy tool saw, no more: an incident fixed by a config change outside releasegate is invisible here.

The computation (``compute``) is pure over ``Deploy`` records, so the definitions can be tested with exact numbers;
``read_deploys`` is the one place that reads the store (SQLite or PostgreSQL, read-only).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from releasegate.store.db import DB, is_pg, open_db, reading_only, tables

DAY = 86400.0
DEFAULT_WINDOW = DAY
"""How long after a promotion a rollback or a hotfix still marks it as a failed change: 24 h, the "24-hour
stability check" the runbooks in the reference set hold after a production deploy (docs/dora.md)."""
FAILED = ("rolled_back", "aborted", "failed")
TRAFFIC_KINDS = ("step", "switched")  # decisions that sent users to the new version (decide.py, rolling.py)


@dataclass(frozen=True)
class Deploy:
    """One finished rollout as the metrics see it."""

    id: str
    service: str
    env: str
    version: str
    previous: str | None
    status: str
    hotfix: bool
    """Started as a hotfix (``deploy --hotfix``: change kind ``hotfix``) or under ``--break-glass``."""
    created_at: float
    finished_at: float
    first_traffic: float | None = None
    """When users first reached the new version (its first ``step`` or ``switched``); None: never."""
    switched_back: float | None = None
    """When a promoted rollout was rolled back afterwards (``releasegate rollback SERVICE``), if it was."""
    commit_at: float | None = None
    """The commit time of the release (service, version), when the registry holds it."""


def band_frequency(per_day: float) -> str:
    """DORA 2019: elite on demand (several a day), high daily to weekly, medium weekly to monthly, low less."""
    return "elite" if per_day >= 1 else "high" if per_day >= 1 / 7 else "medium" if per_day >= 1 / 30 else "low"


def band_lead_time(seconds: float) -> str:
    """DORA 2019: elite under a day, high under a week, medium under a month, low longer."""
    return "elite" if seconds < DAY else "high" if seconds < 7 * DAY else "medium" if seconds < 30 * DAY else "low"


def band_restore(seconds: float) -> str:
    """DORA 2019: elite under an hour, high under a day, medium under a week (contiguous), low longer."""
    return "elite" if seconds < 3600 else "high" if seconds < DAY else "medium" if seconds < 7 * DAY else "low"


def band_failure_rate(rate: float) -> str:
    """DORA 2019/2021 made contiguous: elite up to 15 %, high up to 30 %, medium up to 45 %, low above."""
    return "elite" if rate <= 0.15 else "high" if rate <= 0.30 else "medium" if rate <= 0.45 else "low"


def p90(values: Sequence[float]) -> float:
    """The nearest-rank 90th percentile: the smallest value at least 90 % of the values are at or below."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


@dataclass
class Metrics:
    """The four metrics of one service in one environment (or of all of them: ``service``/``env`` ``*``)."""

    service: str
    env: str
    days: float
    deployments: int = 0
    stopped_before_traffic: int = 0
    change_failures: int = 0
    lead_times: list[float] = field(default_factory=list)
    lead_time_unknown: int = 0
    restores: list[float] = field(default_factory=list)
    not_restored: int = 0

    def summary(self) -> dict[str, Any]:
        """The JSON shape of ``dora --json`` and ``GET /api/v1/dora`` (seconds, ratios; None when unknown)."""
        per_day = self.deployments / self.days if self.days > 0 else 0.0
        rate = self.change_failures / self.deployments if self.deployments else None
        lead = _spread(self.lead_times, band_lead_time)
        restore = _spread(self.restores, band_restore)
        return {"service": self.service, "env": self.env, "deployments": self.deployments,
                "deployments_per_day": per_day, "deployment_frequency_band": band_frequency(per_day)
                if self.deployments else None, "stopped_before_traffic": self.stopped_before_traffic,
                "change_failures": self.change_failures, "change_failure_rate": rate,
                "change_failure_band": band_failure_rate(rate) if rate is not None else None,
                "lead_time": lead | {"unknown": self.lead_time_unknown},
                "time_to_restore": restore | {"not_restored": self.not_restored}}

    def add(self, other: Metrics) -> None:
        self.deployments += other.deployments
        self.stopped_before_traffic += other.stopped_before_traffic
        self.change_failures += other.change_failures
        self.lead_times += other.lead_times
        self.lead_time_unknown += other.lead_time_unknown
        self.restores += other.restores
        self.not_restored += other.not_restored


def _spread(values: list[float], band: Any) -> dict[str, Any]:
    if not values:
        return {"count": 0, "median_seconds": None, "p90_seconds": None, "band": None}
    median = statistics.median(values)
    return {"count": len(values), "median_seconds": median, "p90_seconds": p90(values), "band": band(median)}


def compute(deploys: Iterable[Deploy], since: float, until: float, window: float = DEFAULT_WINDOW) -> list[Metrics]:
    """One ``Metrics`` per (service, env) with a rollout that finished in [since, until], sorted; the definitions
    are docs/dora.md's. ``deploys`` may hold later or earlier rollouts: they only decide whether a promotion in
    the period was followed by a rollback or a hotfix, and when service was restored."""
    groups: dict[tuple[str, str], list[Deploy]] = {}
    for d in deploys:
        groups.setdefault((d.service, d.env), []).append(d)
    days = max(until - since, 0.0) / DAY
    out = []
    for (service, env), items in sorted(groups.items()):
        items.sort(key=lambda d: (d.finished_at, d.created_at))
        m = Metrics(service, env, days)
        for i, d in enumerate(items):
            if since <= d.finished_at <= until:
                _count(m, d, items[i + 1:], window)
        if m.deployments or m.stopped_before_traffic:
            out.append(m)
    return out


def _count(m: Metrics, d: Deploy, later: list[Deploy], window: float) -> None:
    if d.status in FAILED:
        if d.first_traffic is None:
            m.stopped_before_traffic += 1  # nobody was served the new version: neither a deploy nor a failure
            return
        m.deployments += 1
        m.change_failures += 1
        m.restores.append(d.finished_at - d.first_traffic)  # traffic is back on the old version when it ends
        return
    if d.status != "promoted":
        return
    m.deployments += 1
    if d.commit_at is None:
        m.lead_time_unknown += 1
    else:
        m.lead_times.append(max(0.0, d.finished_at - d.commit_at))
    end = d.finished_at + window
    if d.switched_back is not None and d.switched_back <= end:
        m.change_failures += 1
        m.restores.append(d.switched_back - d.finished_at)
        return
    if not any(n.created_at <= end and (n.hotfix or n.version == d.previous) for n in later):
        return
    m.change_failures += 1
    # restored by the next promotion (the hotfix, the old version again) or a switch back after the window
    fixed = min(next((n.finished_at for n in later if n.status == "promoted"), math.inf),
                d.switched_back or math.inf)
    if fixed == math.inf:
        m.not_restored += 1
    else:
        m.restores.append(fixed - d.finished_at)


def total(groups: Sequence[Metrics], days: float) -> Metrics:
    """Every group added up (``*``/``*``): medians over all the values, not a median of medians."""
    whole = Metrics("*", "*", days)
    for g in groups:
        whole.add(g)
    return whole


def report(deploys: Iterable[Deploy], since: float, until: float, window: float = DEFAULT_WINDOW) -> dict[str, Any]:
    """What ``dora --json`` prints and the API returns."""
    groups = compute(deploys, since, until, window)
    days = max(until - since, 0.0) / DAY
    return {"since": since, "until": until, "window_seconds": window,
            "groups": [g.summary() for g in groups], "total": total(groups, days).summary()}


# --- reading the store -------------------------------------------------------------------------------------------


def read_deploys(state_dir: Path, since: float, service: str | None = None, env: str | None = None) -> list[Deploy]:
    """The rollouts that finished at or after ``since`` (with what followed them), read-only: a state dir without
    a database reads as empty and none is created; a ``service`` that never had a rollout is a ``UserError``."""
    with reading_only():
        db = open_db(state_dir)
    try:
        if service is not None and ("rollouts" not in tables(db) or db.execute(
                "SELECT 1 FROM rollouts WHERE service = ? LIMIT 1", (service,)).fetchone() is None):
            from releasegate.lookup import unknown_service  # a typo must not read as "nothing to measure"

            raise unknown_service(state_dir, service, "--service names a service that has had rollouts")
        return deploys_from(db, since, service, env)
    finally:
        db.close()


def deploys_from(db: DB, since: float, service: str | None = None, env: str | None = None,
                 known: dict[str, tuple[str, bool]] | None = None) -> list[Deploy]:
    """The deploys read from ``db``; ``known`` (rollout id -> (env, hotfix)) is a cache the caller keeps: a
    finished rollout's env and kind never change, so only rollouts not in it have their stored state parsed (a
    state holds every analysis sample, so parsing is what costs at 1,000 services)."""
    have = tables(db)
    if not {"rollouts", "events"} <= have:
        return []
    sql = "SELECT id, service, version, previous, status, created_at, finished_at FROM rollouts " \
          "WHERE finished_at IS NOT NULL AND finished_at >= ?"
    args: list[object] = [since]
    if service is not None:
        sql += " AND service = ?"
        args.append(service)
    rows = db.execute(sql, args).fetchall()
    known = {} if known is None else known
    marks: dict[str, dict[str, float]] = {}
    ids = [row["id"] for row in rows]
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        places = ",".join("?" * len(chunk))
        for ev in db.execute(f"SELECT rollout_id, kind, MIN(at) AS at FROM events WHERE rollout_id IN ({places}) "
                             "AND kind IN ('step', 'switched', 'rolled_back') GROUP BY rollout_id, kind", chunk):
            marks.setdefault(ev["rollout_id"], {})[ev["kind"]] = float(ev["at"])
        new = [i for i in chunk if i not in known]
        if new:
            for st in db.execute(f"SELECT id, {_FIELDS[is_pg(db)]} FROM rollouts WHERE id IN "
                                 f"({','.join('?' * len(new))})", new):
                hotfix = st["change"] == "hotfix" or str(st["emergency"]).lower() in ("1", "true")
                known[st["id"]] = (str(st["env"] or "prod"), hotfix)
    commits = _commit_times(db, have)
    out = []
    for row in rows:
        where, hotfix = known.get(row["id"], ("prod", False))
        if env is not None and where != env:
            continue
        seen = marks.get(row["id"], {})
        first = min((seen[k] for k in TRAFFIC_KINDS if k in seen), default=None)
        back = seen.get("rolled_back") if row["status"] == "promoted" else None
        out.append(Deploy(row["id"], row["service"], where, row["version"], row["previous"], row["status"],
                          hotfix, float(row["created_at"]), float(row["finished_at"]), first, back,
                          commits.get((row["service"], row["version"]))))
    return out


_FIELDS = {False: "json_extract(state_json, '$.env') AS env, json_extract(state_json, '$.change') AS change, "
                  "json_extract(state_json, '$.emergency') AS emergency",
           True: "state_json::jsonb ->> 'env' AS env, state_json::jsonb ->> 'change' AS change, "
                 "state_json::jsonb ->> 'emergency' AS emergency"}
"""The env and the hotfix marks of a stored state, extracted by the database: parsing whole states in Python (each
holds every analysis sample) took 80 % of the time at 1,000 services (bench/bench_dora.py)."""


def _commit_times(db: DB, have: set[str]) -> dict[tuple[str, str], float]:
    """(service, version) -> commit time, from the release registry; empty before any release recorded one."""
    if "gov_releases" not in have:
        return {}
    if not is_pg(db) and "commit_at" not in {r["name"] for r in db.execute("PRAGMA table_info(gov_releases)")}:
        return {}  # a state dir from before commit times were kept
    return {(r["service"], r["version"]): float(r["commit_at"]) for r in
            db.execute("SELECT service, version, commit_at FROM gov_releases WHERE commit_at IS NOT NULL")}


__all__ = ["DEFAULT_WINDOW", "Deploy", "Metrics", "band_failure_rate", "band_frequency", "band_lead_time",
           "band_restore", "compute", "deploys_from", "p90", "read_deploys", "report", "total"]

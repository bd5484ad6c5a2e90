"""The DORA metrics as Prometheus gauges on the server's ``/metrics`` (docs/dora.md), over a fixed 30-day window.

Why gauges over a fixed window and not counters: lead time and time to restore are distributions over changes,
and the change failure rate is a ratio with a look-ahead (a promotion becomes a failure when a rollback follows
within 24 h), so they cannot be folded into ever-growing counters as metrics_exporter.py folds decisions. A dashboard
wants "the last 30 days" anyway; other periods are ``releasegate dora --since`` or ``GET /api/v1/dora``.

Why it stays cheap at 1,000 services: the figures are computed at most once per ``REFRESH`` seconds (a 30-day
figure a minute old is as true as a fresh one) and kept; a scrape in between only writes them out, and the
dashboard's panel (``panel``) reads the same kept figures. A recomputation reads only the columns it needs, lets
the database pick the env and hotfix marks out of the stored states, and does even that only for rollouts it has
not seen (a finished rollout's env never changes). bench/bench_dora.py measures it: with 8,000 rollouts of 1,000
services, on a quiet machine, about 0.2 s for the first scrape, 0.1 s for a recomputation (in a worker thread, once
a minute at most) and 4 ms for a scrape in between.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from releasegate.dora import DEFAULT_WINDOW, Metrics, compute, deploys_from, total
from releasegate.durations import format_duration
from releasegate.store.db import open_db, reading_only

PERIOD = 30 * 86400.0
REFRESH = 60.0
"""Seconds the computed figures are kept before they are computed again: what a scrape shows is at most a minute
old."""

Row = tuple[str, float]


def _families(g: Metrics) -> dict[str, list[Row]]:
    """The lines of one (service, env), keyed by family; labels written after service and env."""
    s = g.summary()
    out: dict[str, list[Row]] = {
        "releasegate_dora_deployments": [("", float(s["deployments"]))],
        "releasegate_dora_change_failures": [("", float(s["change_failures"]))],
        "releasegate_dora_change_failure_ratio": ([("", float(s["change_failure_rate"]))]
                                                  if s["change_failure_rate"] is not None else []),
        "releasegate_dora_lead_time_seconds": [],
        "releasegate_dora_time_to_restore_seconds": []}
    for family, spread in (("releasegate_dora_lead_time_seconds", s["lead_time"]),
                           ("releasegate_dora_time_to_restore_seconds", s["time_to_restore"])):
        if spread["count"]:
            out[family] = [(',quantile="0.5"', float(spread["median_seconds"])),
                           (',quantile="0.9"', float(spread["p90_seconds"]))]
    return out


HELP = {
    "releasegate_dora_deployments": "Deployments (rollouts that reached users and ended) in the last 30 days.",
    "releasegate_dora_change_failures": "Deployments of the last 30 days that failed (rolled back, aborted after "
                                        "traffic, or followed within 24h by a rollback or a hotfix).",
    "releasegate_dora_change_failure_ratio": "Change failures / deployments over the last 30 days.",
    "releasegate_dora_lead_time_seconds": "Commit to promotion, median (0.5) and p90 (0.9), last 30 days.",
    "releasegate_dora_time_to_restore_seconds": "Failure start to healthy again, median (0.5) and p90 (0.9), "
                                                "last 30 days."}


def render(groups: list[Metrics]) -> str:
    """Prometheus text format 0.0.4: every family's header, then its samples per (service, env)."""
    lines: dict[str, list[str]] = {name: [] for name in HELP}
    for g in groups:
        where = f'service="{_escaped(g.service)}",env="{_escaped(g.env)}"'
        for family, rows in _families(g).items():
            lines[family] += [f"{family}{{{where}{extra}}} {value!r}\n" for extra, value in rows]
    text = "".join(f"# HELP {name} {doc}\n# TYPE {name} gauge\n" + "".join(lines[name]) for name, doc in HELP.items())
    return text + f"# HELP releasegate_dora_period_seconds The window the DORA gauges cover.\n" \
                  f"# TYPE releasegate_dora_period_seconds gauge\nreleasegate_dora_period_seconds {PERIOD!r}\n"


def _escaped(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class DoraCollector:
    """Renders the DORA gauges of ``state_dir``'s store; safe for concurrent scrapes (one computes, one waits)."""

    def __init__(self, state_dir: Path, clock: Callable[[], float] = time.time) -> None:
        self.state_dir = state_dir
        self.clock = clock
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._known: dict[str, tuple[str, bool]] = {}
        self._kept: tuple[float, list[Metrics]] | None = None  # (when, what was computed then)

    def render(self) -> bytes:
        try:
            text = render(self.groups())
            self.last_error = None
        except Exception as exc:  # a scrape must not fail the server's other series: say it, serve nothing
            self.last_error = f"{self.state_dir}: {type(exc).__name__}: {exc}"
            text = ""
        return text.encode()

    def groups(self) -> list[Metrics]:
        """Every (service, env) of the last 30 days, computed at most once per ``REFRESH`` (the dashboard's panel
        reads the same)."""
        with self._lock:
            now = self.clock()
            kept = self._kept
            if kept is not None and now - kept[0] < REFRESH:
                return kept[1]
            since = now - PERIOD
            with reading_only():
                db = open_db(self.state_dir)
            try:
                deploys = deploys_from(db, since, known=self._known)
            finally:
                db.close()
            self._known = {d.id: (d.env, d.hotfix) for d in deploys}  # what slid out of the window is forgotten
            groups = compute(deploys, since, now, DEFAULT_WINDOW)
            self._kept = (now, groups)
            return groups


def panel(collector: DoraCollector, visible: Callable[[str], bool]) -> dict[str, Any]:
    """The dashboard's "Delivery" panel: the 30-day figures of the services ``visible`` accepts, ready to show
    (durations written out, bands named), with their total; ``error`` when the store could not be read."""
    try:
        groups = [g for g in collector.groups() if visible(g.service)]
    except Exception as exc:  # the overview must still show the services
        return {"rows": [], "error": f"{type(exc).__name__}: {exc}"}
    shown = [*groups, total(groups, PERIOD / 86400)] if len(groups) > 1 else groups
    return {"rows": [_shown(g.summary()) for g in shown], "error": None}


def _shown(s: dict[str, Any]) -> dict[str, str]:
    rate = s["change_failure_rate"]

    def spread(d: dict[str, Any]) -> str:
        return "—" if not d["count"] else f"{_duration(d['median_seconds'])} ({d['band']})"
    return {"service": "total" if s["service"] == "*" else s["service"], "env": "" if s["env"] == "*" else s["env"],
            "deployments": f"{s['deployments']}, {s['deployments_per_day']:.2f}/day "
                           f"({s['deployment_frequency_band'] or '—'})",
            "failures": "—" if rate is None else f"{s['change_failures']}, {rate:.0%} ({s['change_failure_band']})",
            "lead_time": spread(s["lead_time"]), "restore": spread(s["time_to_restore"])}


def _duration(seconds: float) -> str:
    return format_duration(round(seconds / 60) * 60 if seconds >= 3600 else round(seconds))


__all__ = ["PERIOD", "REFRESH", "DoraCollector", "panel", "render"]

"""The dashboard's governance page: the stored change calendar (may each kind of change start now?) and the audit
log (its hash chain checked; the latest entries).

Why the same rules as the API: the calendar is readable by every signed-in user (``/api/v1/calendar/check``),
the chain's check and head need a viewer of every service (``/api/v1/audit/verify``, ``/head``), and the entries
themselves an admin (``/api/v1/audit/export``), because they name every service's releases and people.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from releasegate.server.auth import allowed
from releasegate.store.server import Grant

ENTRIES = 50
"""Audit entries shown to an admin, newest first (the export has them all)."""
RECENT = 30 * 86400.0
"""Only the last 30 days' entries are read for the page (a long-lived log holds years)."""


FIELDS = ("actor", "action", "release")
"""What the audit entries can be filtered by (a case-insensitive part of it), with ``days`` back."""


def filters(query: dict[str, str]) -> tuple[dict[str, str], float, str | None]:
    """The page's filters from its query: (field -> text, days back, the one-line error of a bad ``days``)."""
    chosen = {f: query[f].strip() for f in FIELDS if query.get(f, "").strip()}
    raw = query.get("days", "").strip() or str(int(RECENT // 86400))
    try:
        days = float(raw)
    except ValueError:
        days = float("nan")
    if not 0 < days <= 3650:
        return chosen, RECENT / 86400, f"days {raw}: give a number of days between 1 and 3650 (e.g. 30)"
    return chosen, days, None


def page(state_dir: Path, grant: Grant, env: str = "prod", query: dict[str, str] | None = None) -> dict[str, Any]:
    chosen, days, error = filters(query or {})
    return {"calendar": calendar(state_dir, env), "env": env, "filters": chosen, "days": days, "error": error,
            "audit": audit(state_dir, grant, chosen, days) if allowed(grant, "viewer", None) else None}


def calendar(state_dir: Path, env: str) -> dict[str, Any] | None:
    """The stored calendar's label and, per kind of change, whether it may start now and when it next may."""
    from releasegate.governance.calendar import decide, format_local
    from releasegate.governance.calendar_models import CHANGES
    from releasegate.governance.stored import latest, parse_calendar

    doc = latest(state_dir, "calendar")
    if doc is None:
        return None
    cal = parse_calendar(doc)
    now = datetime.now(UTC).astimezone(cal.tz)
    rows = []
    for change in CHANGES:
        d = decide(cal, now, change, env)
        rows.append({"change": change, "allowed": d.allowed, "reason": d.reason,
                     "next": format_local(d.next_allowed, cal.tz) if d.next_allowed is not None else None})
    return {"label": doc.label, "actor": doc.actor, "at": doc.at, "changes": rows,
            "freezes": freezes(cal, now, env), "windows": windows(cal, now, env)}


AHEAD = 30
"""Days ahead the page lists freezes and deploy windows for (``calendar upcoming --days`` looks further)."""


def freezes(cal: Any, now: datetime, env: str) -> list[dict[str, str]]:
    """The freezes in force now and those starting within ``AHEAD`` days (as ``calendar upcoming``)."""
    from releasegate.governance.calendar import format_span
    from releasegate.governance.calendar_views import relative, upcoming

    return [{"name": o.freeze.name, "mode": o.freeze.mode, "span": format_span(o.start, o.end, cal.tz),
             "when": (f"in force, ends in {relative(o.end - now)}" if o.contains(now)
                      else f"starts in {relative(o.start - now)}")}
            for o in upcoming(cal, now, AHEAD, env)]


def windows(cal: Any, now: datetime, env: str) -> list[dict[str, str]]:
    """The next openings of the deploy windows within ``AHEAD`` days (at most five): when deploys may start."""
    from datetime import timedelta

    from releasegate.governance.calendar import format_span, window_occurrences

    found = window_occurrences(cal, now, now + timedelta(days=AHEAD), env)[:5]
    return [{"name": o.window.name or ", ".join(o.window.days), "span": format_span(o.start, o.end, cal.tz)}
            for o in found]


def audit(state_dir: Path, grant: Grant, chosen: dict[str, str] | None = None,
          days: float = RECENT / 86400) -> dict[str, Any]:
    """The chain's check and head for a viewer of every service; for an admin, the newest ``ENTRIES`` entries of
    the last ``days`` whose actor, action and release contain the ``chosen`` texts, and how many matched."""
    from releasegate.store.audit import AuditLog

    with AuditLog(state_dir) as log:
        v = log.verify()
        head = log.head()
        entries = list(log.entries(time.time() - days * 86400)) if allowed(grant, "admin", None) else None
    wanted = {f: t.lower() for f, t in (chosen or {}).items()}
    matched = None if entries is None else [
        e for e in entries if all(t in str(getattr(e, f) or "").lower() for f, t in wanted.items())]
    shown = None if matched is None else [
        {"seq": e.seq, "at": e.at, "actor": e.actor, "action": e.action, "release": e.release,
         "decision": e.decision} for e in matched[::-1][:ENTRIES]]
    return {"ok": v.ok, "reason": v.reason, "first_bad_seq": v.first_bad_seq,
            "head": None if head is None else {"seq": head[0], "hash": head[1]}, "entries": shown,
            "matched": None if matched is None else len(matched)}



def release(state_dir: Path, service: str, version: str, env: str = "prod",
            user: str | None = None) -> dict[str, Any] | str:
    """The release's stages, sign-offs and gate (the ``approvals --json`` shape) with ``user``'s roles in the policy
    (``my_roles``: the stages the page offers them), or the one line saying why not (no stored policy)."""
    from releasegate.commands.approvals import _as_json
    from releasegate.errors import UserError
    from releasegate.governance.approvals import release_status
    from releasegate.governance.stored import require_policy

    try:
        policy = require_policy(state_dir, "approvals")
        return dict(_as_json(release_status(state_dir, policy, service, version, env)), judged_by=policy.source,
                    my_roles=policy.roles_of(user) if user is not None else [])
    except UserError as exc:
        return str(exc).splitlines()[0]


__all__ = ["ENTRIES", "page", "release"]

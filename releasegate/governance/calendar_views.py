"""Views of a release calendar: the month by week, an iCalendar feed, the freezes coming up.

The month view is the seed's "release calendar (2025 Q4)" made exact: a row per week (Mon-Sun) with a mark per day,
so "can we ship the v2.5.2 hotfix in week 4?" is answered at a glance. The feed lets people subscribe to the freezes
in the calendar app they already read; every occurrence (each weekend of a cron freeze too) is its own event with
its timezone, so an engineer in another zone sees the freeze at the right instant.
"""

from __future__ import annotations

import calendar as month_grid
import hashlib
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

from releasegate.governance.calendar import (
    Calendar,
    FreezeOccurrence,
    WindowOccurrence,
    format_span,
    freeze_occurrences,
    utc,
    window_occurrences,
)

LEGEND = ("F full freeze all day    f full freeze part of the day    W deploy window\n"
          "H hotfix-only all day   h hotfix-only part of the day       . open")
RULES = "full freezes allow only config changes; hotfix-only also allows patch and hotfix changes"

if TYPE_CHECKING:  # imported by the iCalendar export only: ~30 ms every CLI command paid otherwise
    import icalendar


def _local_midnight(day: date, calendar: Calendar) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=calendar.tz).astimezone(UTC)


def _coverage(spans: Iterable[tuple[datetime, datetime]], start: datetime, end: datetime) -> str:
    """``all`` when the spans cover ``[start, end)`` without a gap, ``part`` when they touch it, else ``none``."""
    touching = sorted((max(s, start), min(e, end)) for s, e in spans if s < end and e > start)
    if not touching:
        return "none"
    reached = start
    for s, e in touching:
        if s > reached:
            return "part"
        reached = max(reached, e)
    return "all" if reached >= end else "part"


def day_marks(calendar: Calendar, year: int, month: int, env: str | None = "prod") -> dict[date, str]:
    """One mark per day of the month: F f H h W or '.', the strictest that applies (see ``LEGEND``)."""
    first, last = date(year, month, 1), date(year, month, month_grid.monthrange(year, month)[1])
    start, end = _local_midnight(first, calendar), _local_midnight(last + timedelta(days=1), calendar)
    freezes = freeze_occurrences(calendar, start, end, env)
    full = [(o.start, o.end) for o in freezes if o.freeze.mode == "full"]
    every = [(o.start, o.end) for o in freezes]
    windows = [(o.start, o.end) for o in window_occurrences(calendar, start, end, env)]
    marks: dict[date, str] = {}
    day = first
    while day <= last:
        a, b = _local_midnight(day, calendar), _local_midnight(day + timedelta(days=1), calendar)
        full_cover, any_cover = _coverage(full, a, b), _coverage(every, a, b)
        if full_cover != "none":
            marks[day] = "F" if full_cover == "all" else "f"
        elif any_cover != "none":
            marks[day] = "H" if any_cover == "all" else "h"
        else:
            marks[day] = "W" if _coverage(windows, a, b) != "none" else "."
        day += timedelta(days=1)
    return marks


def _env_note(envs: Sequence[str] | None) -> str:
    return "" if envs is None else f"  [{', '.join(envs)}]"


def month_view(calendar: Calendar, year: int, month: int, env: str | None = "prod") -> str:
    """The month as week rows Mon-Sun with a mark per day, then the legend and each freeze's local span."""
    marks = day_marks(calendar, year, month, env)
    scope = f"env {env}" if env else "all environments"
    lines = [f"{month_grid.month_name[month]} {year}  ({calendar.timezone}, {scope})",
             "       " + "".join(f"{d:>5}" for d in ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"))]
    for week in month_grid.Calendar(firstweekday=0).monthdatescalendar(year, month):
        cells = "".join(f"{d.day:>4}{marks[d]}" if d.month == month else " " * 5 for d in week)
        lines.append(f"wk {week[0].isocalendar().week:>2}  {cells}".rstrip())
    lines += ["", LEGEND, f"({RULES})"]
    first = date(year, month, 1)
    start = _local_midnight(first, calendar)
    end = _local_midnight(first + timedelta(days=month_grid.monthrange(year, month)[1]), calendar)
    freezes = freeze_occurrences(calendar, start, end, env)
    width = max((len(o.freeze.name) for o in freezes), default=0)
    lines.append("freezes this month:" if freezes else "no freezes this month")
    for o in freezes:
        mark = "F" if o.freeze.mode == "full" else "H"
        lines.append(f"  {mark}  {o.freeze.name:<{width}}  {o.freeze.mode:<11}  "
                     f"{format_span(o.start, o.end, calendar.tz)}{_env_note(o.freeze.envs)}")
    windows = [w for w in calendar.windows if env is None or env in w.envs]
    if windows:
        lines.append("deploy windows (deploys start only inside one; hotfix and config changes any time): "
                     + "; ".join(f"{w.label}{_env_note(w.envs)}" for w in windows))
    return "\n".join(lines)


# --- iCalendar --------------------------------------------------------------------------------------------


def _uid(kind: str, name: str, start: datetime) -> str:
    """Stable across exports, so a re-imported feed updates events instead of duplicating them."""
    digest = hashlib.sha256(f"{kind}\0{name}\0{start.isoformat()}".encode()).hexdigest()[:24]
    return f"{kind}-{digest}@releasegate"


def _freeze_event(o: FreezeOccurrence, calendar: Calendar, stamp: datetime) -> icalendar.Event:
    import icalendar

    event = icalendar.Event()
    event.add("uid", _uid("freeze", o.freeze.name, o.start))
    event.add("dtstamp", stamp)
    event.add("dtstart", o.start.astimezone(calendar.tz))
    event.add("dtend", o.end.astimezone(calendar.tz))
    event.add("summary", f"Change freeze ({o.freeze.mode}): {o.freeze.name}")
    allows = ("only config changes (monitoring, alerts, log levels)" if o.freeze.mode == "full"
              else "only patch, hotfix and config changes")
    envs = "all environments" if o.freeze.envs is None else ", ".join(o.freeze.envs)
    event.add("description", f"{o.freeze.mode} freeze of {envs}: {allows} may start.")
    event.add("categories", ["change-freeze", o.freeze.mode])
    event.add("transp", "OPAQUE")
    return event


def _window_event(o: WindowOccurrence, calendar: Calendar, stamp: datetime) -> icalendar.Event:
    import icalendar

    event = icalendar.Event()
    event.add("uid", _uid("window", o.window.label, o.start))
    event.add("dtstamp", stamp)
    event.add("dtstart", o.start.astimezone(calendar.tz))
    event.add("dtend", o.end.astimezone(calendar.tz))
    event.add("summary", f"Deploy window: {o.window.label}")
    event.add("description", f"Deploys to {', '.join(o.window.envs)} may start in this window.")
    event.add("categories", ["deploy-window"])
    event.add("transp", "TRANSPARENT")
    return event


def ics_feed(calendar: Calendar, start: datetime, end: datetime, env: str | None = None, *,
             windows: bool = False, stamp: datetime | None = None) -> bytes:
    """An iCalendar feed: one VEVENT per freeze occurrence overlapping ``[start, end)``, in the calendar's zone.

    ``env`` None exports every freeze; ``windows`` adds each deploy-window opening as a free-time event;
    ``stamp`` (DTSTAMP, default now) is a parameter so that tests and re-exports can be byte-identical.
    """
    import icalendar

    when = utc(stamp) if stamp is not None else datetime.now(UTC).replace(microsecond=0)
    feed = icalendar.Calendar()
    feed.add("prodid", "-//releasegate//release calendar//EN")
    feed.add("version", "2.0")
    feed.add("calscale", "GREGORIAN")
    feed.add("x-wr-calname", "Release calendar" + (f" ({env})" if env else ""))
    feed.add("x-wr-timezone", calendar.timezone)
    for o in freeze_occurrences(calendar, start, end, env):
        feed.add_component(_freeze_event(o, calendar, when))
    if windows:
        for w in window_occurrences(calendar, start, end, env):
            feed.add_component(_window_event(w, calendar, when))
    first, last = utc(start).date() - timedelta(days=366), utc(end).date() + timedelta(days=366)
    feed.add_missing_timezones(first_date=first, last_date=last)
    data: bytes = feed.to_ical()
    return data


# --- upcoming ---------------------------------------------------------------------------------------------


def upcoming(calendar: Calendar, at: datetime, days: float = 7, env: str | None = None) -> list[FreezeOccurrence]:
    """Freezes in force at ``at`` and those starting within ``days`` after it, by start."""
    now = utc(at)
    return freeze_occurrences(calendar, now, now + timedelta(days=days), env)


def relative(delta: timedelta) -> str:
    """``3d 4h``, ``5h 10m``, ``12m``: precise enough to plan a release around, short enough for one line."""
    minutes = max(0, int(delta.total_seconds() // 60))
    d, rest = divmod(minutes, 1440)
    h, m = divmod(rest, 60)
    if d:
        return f"{d}d {h}h"
    return f"{h}h {m}m" if h else f"{m}m"


def render_upcoming(calendar: Calendar, at: datetime, found: Sequence[FreezeOccurrence], days: float) -> list[str]:
    """One line per freeze: in force (and until when) or in how long it starts, mode, name and local span."""
    now = utc(at)
    if not found:
        return [f"no freezes in force or starting within {days:g} day(s) of "
                f"{now.astimezone(calendar.tz):%Y-%m-%d %H:%M %Z}"]
    width = max(len(o.freeze.name) for o in found)
    lines = []
    for o in found:
        when = (f"in force, ends in {relative(o.end - now)}" if o.contains(now)
                else f"starts in {relative(o.start - now)}")
        lines.append(f"{when:<26}  {o.freeze.mode:<11}  {o.freeze.name:<{width}}  "
                     f"{format_span(o.start, o.end, calendar.tz)}{_env_note(o.freeze.envs)}")
    return lines


__all__ = ["LEGEND", "day_marks", "ics_feed", "month_view", "relative", "render_upcoming", "upcoming"]

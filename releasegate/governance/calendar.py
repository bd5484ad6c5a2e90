"""Decisions on the release calendar: may a change start at a given moment, and when are the freezes.

The rules come from the seeds. MegaCity's release guide (section 6) freezes changes in exam seasons and holidays:
a full freeze still allows monitoring, alert and log-level changes (``config``), and a "hotfix only" week also
allows PATCH hotfixes. The Judgify runbook deploys weekly on Tuesday 02:00-06:00 KST but allows emergency deploys
"any time", so a ``hotfix`` may start outside the deploy windows (never inside a full freeze).

Everything a calendar says is local time in its ``timezone``, because that is how freezes are announced; every
comparison is made on UTC instants, because Python compares two datetimes that share a tzinfo by their wall-clock
reading and would get the repeated hour of a DST change wrong. Cron freezes are expanded on the local wall clock
(``0 18 * * fri`` stays 18:00 local across DST) and their ``duration`` is added on the wall clock too, so
``62h`` from Friday 18:00 ends on Monday 08:00 local even on the weekend the clocks change.

The models and the loader live in ``calendar_models`` and are re-exported here: import everything from this module.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from croniter import CroniterError, croniter

from releasegate.governance.calendar_models import (
    CHANGES,
    DASH,
    WEEKDAYS,
    Calendar,
    Change,
    Freeze,
    FreezeMode,
    Weekday,
    Window,
    YearlySpan,
    load_calendar,
    load_calendar_text,
)

ALLOWED_IN: dict[str, frozenset[str]] = {"full": frozenset({"config"}),
                                         "hotfix-only": frozenset({"config", "patch", "hotfix"})}
"""What each freeze mode still lets through (MegaCity guide 6.2)."""
ANY_TIME: frozenset[str] = frozenset({"hotfix", "config"})
"""Changes that may start outside the deploy windows: emergency hotfixes and monitoring/alert/log-level config."""
NEXT_ALLOWED_HORIZON = timedelta(days=60)
MAX_OCCURRENCES = 20_000
"""Cron occurrences expanded per query at most, so a ``* * * * *`` freeze cannot stall a check."""
SPAN_DASH = f" {DASH} "


# --- occurrences: freezes and windows as UTC intervals [start, end) --------------------------------------------


@dataclass(frozen=True)
class FreezeOccurrence:
    """One period of a freeze, as UTC instants, ``end`` exclusive."""

    freeze: Freeze
    start: datetime
    end: datetime

    def contains(self, at: datetime) -> bool:
        return self.start <= at < self.end


@dataclass(frozen=True)
class WindowOccurrence:
    """One opening of a deploy window, as UTC instants, ``end`` exclusive."""

    window: Window
    start: datetime
    end: datetime


def utc(at: datetime) -> datetime:
    """``at`` as UTC; a naive datetime is refused because its meaning depends on where the check runs."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"{at.isoformat()} has no UTC offset; pass an aware datetime")
    return at.astimezone(UTC)


def _wall(moment: datetime, tz: ZoneInfo) -> datetime:
    """A local wall-clock reading (naive) as UTC; a time skipped by DST counts with the offset before the jump."""
    return moment.replace(tzinfo=tz).astimezone(UTC)


def _at_minutes(day: date, minutes: int, tz: ZoneInfo) -> datetime:
    """``day`` plus ``minutes`` on the local wall clock (1440 = the next midnight), as UTC."""
    return _wall(datetime.combine(day, time()) + timedelta(minutes=minutes), tz)


def _local_naive(at: datetime, tz: ZoneInfo) -> datetime:
    return at.astimezone(tz).replace(tzinfo=None)


def _spans(freeze: Freeze, tz: ZoneInfo, start: datetime, end: datetime) -> Iterator[tuple[datetime, datetime]]:
    if freeze.from_ is not None and freeze.to is not None:
        yield _at_minutes(freeze.from_, 0, tz), _at_minutes(freeze.to, 1440, tz)
    elif freeze.yearly is not None:
        for year in range(start.astimezone(tz).year - 1, end.astimezone(tz).year + 1):
            first, last = freeze.yearly.dates(year)
            yield _at_minutes(first, 0, tz), _at_minutes(last, 1440, tz)
    elif freeze.cron is not None and freeze.duration is not None:
        length = timedelta(seconds=freeze.duration)
        margin = timedelta(hours=3)  # DST shifts wall time against UTC by at most this much
        stop = _local_naive(end, tz) + margin
        starts = croniter(freeze.cron, _local_naive(start, tz) - length - margin)
        for _ in range(MAX_OCCURRENCES):
            try:
                begin: datetime = starts.get_next(datetime)
            except CroniterError:
                return
            if begin >= stop:
                return
            yield _wall(begin, tz), _wall(begin + length, tz)


def occurrences(calendar: Calendar, freeze: Freeze, start: datetime, end: datetime) -> list[FreezeOccurrence]:
    """The periods of ``freeze`` that overlap ``[start, end)``, in order."""
    a, b = utc(start), utc(end)
    found = [FreezeOccurrence(freeze, s, e) for s, e in _spans(freeze, calendar.tz, a, b) if s < b and e > a and s < e]
    return sorted(found, key=lambda o: o.start)


def freeze_occurrences(calendar: Calendar, start: datetime, end: datetime,
                       env: str | None = "prod") -> list[FreezeOccurrence]:
    """Every freeze period for ``env`` (None: all environments) overlapping ``[start, end)``, by start."""
    found = [o for f in calendar.freezes if f.applies_to(env) for o in occurrences(calendar, f, start, end)]
    return sorted(found, key=lambda o: (o.start, o.end))


def window_occurrences(calendar: Calendar, start: datetime, end: datetime,
                       env: str | None = "prod") -> list[WindowOccurrence]:
    """Every deploy-window opening for ``env`` (None: all) overlapping ``[start, end)``, by start.

    A window whose local start does not exist (02:00 on a spring-forward night) opens when the clock jumps.
    """
    a, b = utc(start), utc(end)
    tz = calendar.tz
    windows = [w for w in calendar.windows if env is None or env in w.envs]
    found: list[WindowOccurrence] = []
    day = a.astimezone(tz).date() - timedelta(days=1)
    while windows and day <= b.astimezone(tz).date():
        for w in windows:
            if WEEKDAYS[day.weekday()] in w.days:
                s_min, e_min = w.start_minutes, w.end_minutes
                s, e = _at_minutes(day, s_min, tz), _at_minutes(day, e_min + (1440 if e_min <= s_min else 0), tz)
                if s < e and s < b and e > a:
                    found.append(WindowOccurrence(w, s, e))
        day += timedelta(days=1)
    return sorted(found, key=lambda o: o.start)


def _strictest(found: Iterable[FreezeOccurrence]) -> FreezeOccurrence | None:
    """Full before hotfix-only; then the one that lasts longest, the one that matters for when it ends."""
    return max(found, key=lambda o: (o.freeze.mode == "full", o.end), default=None)


def freezes_in_force(calendar: Calendar, at: datetime, env: str | None = "prod") -> list[FreezeOccurrence]:
    """The freeze periods that contain ``at``."""
    now = utc(at)
    return [o for o in freeze_occurrences(calendar, now, now + timedelta(seconds=1), env) if o.contains(now)]


def frozen_at(calendar: Calendar, at: datetime, env: str = "prod") -> Freeze | None:
    """The strictest freeze in force for ``env`` at ``at``; the controller asks before every traffic increase."""
    found = _strictest(freezes_in_force(calendar, at, env))
    return found.freeze if found else None


def _next_start(calendar: Calendar, freeze: Freeze, after: datetime) -> datetime | None:
    tz = calendar.tz
    if freeze.from_ is not None:
        begin = _at_minutes(freeze.from_, 0, tz)
        return begin if begin > after else None
    if freeze.yearly is not None:
        year = after.astimezone(tz).year
        return next(b for y in (year, year + 1) if (b := _at_minutes(freeze.yearly.dates(y)[0], 0, tz)) > after)
    if freeze.cron is not None:
        starts = croniter(freeze.cron, _local_naive(after, tz) - timedelta(hours=3))
        for _ in range(MAX_OCCURRENCES):
            try:
                begin = _wall(starts.get_next(datetime), tz)
            except CroniterError:
                return None
            if begin > after:
                return begin
    return None


def next_freeze(calendar: Calendar, at: datetime, env: str | None = "prod") -> tuple[Freeze, datetime] | None:
    """The freeze for ``env`` (None: any) starting next after ``at``, and when (local time): "time until freeze"."""
    now = utc(at)
    starts = [(b, f) for f in calendar.freezes if f.applies_to(env) and (b := _next_start(calendar, f, now))]
    if not starts:
        return None
    begin, freeze = min(starts, key=lambda pair: pair[0])
    return freeze, begin.astimezone(calendar.tz)


# --- decisions ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CalendarDecision:
    """Whether a change may start; ``reason`` is the one line shown to the operator.

    ``freeze`` is the strictest freeze in force at that moment (the one that refused, or the one that let this
    change through), ``window`` the deploy window the moment falls in, ``next_allowed`` when the same change could
    start (``at`` itself when allowed; None when not within 60 days), in the calendar's timezone.
    """

    allowed: bool
    reason: str
    freeze: str | None = None
    window: str | None = None
    next_allowed: datetime | None = None


def format_local(at: datetime, tz: ZoneInfo) -> str:
    """``2025-11-11 02:00 KST``."""
    local = at.astimezone(tz)
    return f"{local:%Y-%m-%d %H:%M} {local.tzname()}"


def format_span(start: datetime, end: datetime, tz: ZoneInfo) -> str:
    """``2025-11-01 00:00 - 2025-11-21 24:00 KST`` (en dash): a period ending at midnight ends at 24:00 of its last day.

    People read "until the 21st" as including the 21st; ``2025-11-22 00:00`` reads like one day too many.
    """
    s, e = start.astimezone(tz), end.astimezone(tz)
    last_day, clock = e.date(), f"{e:%H:%M}"
    if clock == "00:00" and utc(end) > utc(start):
        last_day, clock = last_day - timedelta(days=1), "24:00"
    until = clock if last_day == s.date() else f"{last_day} {clock}"
    if s.tzname() == e.tzname():
        return f"{s:%Y-%m-%d %H:%M}{SPAN_DASH}{until} {e.tzname()}"
    return f"{s:%Y-%m-%d %H:%M} {s.tzname()}{SPAN_DASH}{until} {e.tzname()}"


def _describe(found: FreezeOccurrence, tz: ZoneInfo) -> str:
    return f"{found.freeze.mode} freeze {found.freeze.name!r} ({format_span(found.start, found.end, tz)})"


def decide(calendar: Calendar, at: datetime, change: Change, env: str = "prod") -> CalendarDecision:
    """May a ``change`` to ``env`` start at ``at``? Freezes decide what may start, windows when deploys start."""
    if change not in CHANGES:
        raise ValueError(f"unknown change {change!r}; expected one of: {', '.join(CHANGES)}")
    tz = calendar.tz
    now = utc(at)
    horizon = now + NEXT_ALLOWED_HORIZON
    freezes = freeze_occurrences(calendar, now, horizon + timedelta(minutes=1), env)
    has_windows = any(env in w.envs for w in calendar.windows)
    needs_window = has_windows and change not in ANY_TIME
    windows = window_occurrences(calendar, now, horizon + timedelta(minutes=1), env) if has_windows else []

    def blocker(t: datetime) -> FreezeOccurrence | None:
        return _strictest(o for o in freezes if o.contains(t) and change not in ALLOWED_IN[o.freeze.mode])

    def window_at(t: datetime) -> WindowOccurrence | None:
        return next((w for w in windows if w.start <= t < w.end), None)

    def allowed_at(t: datetime) -> bool:
        return blocker(t) is None and (not needs_window or window_at(t) is not None)

    block, window = blocker(now), window_at(now)
    in_force = _strictest(o for o in freezes if o.contains(now))
    freeze_name = in_force.freeze.name if in_force else None
    window_name = window.window.label if window else None
    if allowed_at(now):
        return CalendarDecision(True, _allowed_reason(change, env, in_force, window, has_windows, tz),
                                freeze_name, window_name, now.astimezone(tz))
    candidates = sorted({o.end for o in freezes} | {w.start for w in windows})
    later = next((t for t in candidates if now < t <= horizon and allowed_at(t)), None)
    next_allowed = later.astimezone(tz) if later else None
    if block is not None:
        allows = "only config changes" if block.freeze.mode == "full" else "only patch, hotfix and config changes"
        reason = f"refused: {_describe(block, tz)} allows {allows}"
    else:
        labels = ", ".join(dict.fromkeys(w.label for w in calendar.windows if env in w.envs))
        reason = f"refused: {change} changes to {env} start only inside a deploy window ({labels}, {calendar.timezone})"
        upcoming = next((w for w in windows if w.start > now), None)
        if upcoming is not None:
            reason += f"; the next opens {format_span(upcoming.start, upcoming.end, tz)}"
    return CalendarDecision(False, reason, freeze_name, window_name, next_allowed)


def _allowed_reason(change: str, env: str, in_force: FreezeOccurrence | None, window: WindowOccurrence | None,
                    has_windows: bool, tz: ZoneInfo) -> str:
    what = "config changes (monitoring, alerts, log levels)" if change == "config" else f"{change} changes"
    clauses = [f"{_describe(in_force, tz)} allows {what}" if in_force else "no freeze in force"]
    if window is not None:
        clauses.append(f"inside deploy window {window.window.label!r} "
                       f"({format_span(window.start, window.end, tz)})")
    elif has_windows and change == "hotfix":
        clauses.append("outside the deploy windows, which emergency hotfixes need not wait for")
    elif has_windows:
        clauses.append("config changes need no deploy window")
    return f"allowed: {change} change to {env}: " + "; ".join(clauses)


__all__ = [
    "ALLOWED_IN", "ANY_TIME", "CHANGES", "DASH", "NEXT_ALLOWED_HORIZON", "WEEKDAYS", "Calendar", "CalendarDecision",
    "Change", "Freeze", "FreezeMode", "FreezeOccurrence", "Weekday", "Window", "WindowOccurrence", "YearlySpan",
    "decide", "format_local", "format_span", "freeze_occurrences", "freezes_in_force", "frozen_at", "load_calendar",
    "load_calendar_text", "next_freeze", "occurrences", "utc", "window_occurrences",
]

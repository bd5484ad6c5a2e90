"""``releasegate calendar apply|check|show|upcoming|history``: change freezes and deploy windows.

``apply`` stores a validated calendar in the state (an admin's change, audited with a diff): deploys and the
freeze checks during a rollout read the stored one. ``check`` is what a pipeline runs before a deploy (exit 0
allowed, 2 refused, so ``&&`` does the gating); ``show`` is the seed's release calendar for a month, or an
iCalendar feed for people's calendar apps; ``upcoming`` answers "is a freeze about to start?" before a long rollout
begins. These three read the stored calendar, or with ``--calendar FILE`` judge a file, and then say so: a dry
look at a calendar that is not (yet) in force.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from releasegate.commands import reported as _reported
from releasegate.errors import UserError
from releasegate.governance.calendar import (
    Calendar,
    decide,
    format_local,
    load_calendar,
    next_freeze,
    utc,
)
from releasegate.governance.calendar_views import ics_feed, month_view, relative, render_upcoming, upcoming

calendar_app = typer.Typer(help="Change freezes and deploy windows: store the calendar in force, may a change start "
                                "now, and when are the freezes (month view, iCalendar feed, upcoming).",
                           no_args_is_help=True)


class ChangeKind(StrEnum):
    """The change kinds the calendar judges; ``hotfix`` is an emergency fix, ``config`` monitoring/alerts/logs."""

    major = "major"
    minor = "minor"
    patch = "patch"
    hotfix = "hotfix"
    config = "config"


def parse_at(text: str | None, calendar: Calendar) -> datetime:
    """``--at`` as an aware datetime: an ISO 8601 time without an offset is local time of the calendar."""
    if text is None:
        return datetime.now(UTC).astimezone(calendar.tz)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UserError(f"--at {text!r}: not an ISO 8601 time; write e.g. 2025-11-04T03:00 (in the calendar's "
                        f"timezone, {calendar.timezone}) or 2025-11-04T03:00+09:00") from None
    if not 1900 <= moment.year <= 9000:  # the freezes around it are computed a year either side
        raise UserError(f"--at {text!r}: out of range; give a time between the years 1900 and 9000")
    if moment.tzinfo is None:
        return moment.replace(tzinfo=calendar.tz)
    return moment


def _env(env: str) -> str | None:
    return None if env == "all" else env


def _month(text: str | None, calendar: Calendar) -> tuple[int, int]:
    if text is None:
        today = datetime.now(calendar.tz)
        return today.year, today.month
    match = re.fullmatch(r"(\d{4})-(\d{1,2})", text.strip())
    if match is None or not 1 <= int(match[2]) <= 12:
        raise UserError(f"--month {text!r}: write the month as YYYY-MM, e.g. 2025-11")
    return int(match[1]), int(match[2])


def _day(option: str, text: str) -> date:
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise UserError(f"{option} {text!r}: write a date YYYY-MM-DD, e.g. 2025-11-01") from None


def _midnight(day: date, calendar: Calendar) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=calendar.tz)


def _plus_months(day: date, months: int) -> date:
    year, month = divmod(day.month - 1 + months, 12)
    for last in (31, 30, 29, 28):  # the same day, or the month's last day when it has fewer
        try:
            return day.replace(year=day.year + year, month=month + 1, day=min(day.day, last))
        except ValueError:
            continue
    raise AssertionError("unreachable: every month has 28 days")


def _ics_range(calendar: Calendar, month: str | None, first: str | None, last: str | None) -> tuple[datetime, datetime]:
    """--from/--to (inclusive days), else --month, else the next 12 months from today."""
    if month is not None and (first or last):
        raise UserError("give either --month or --from/--to for the --ics range, not both")
    if month is not None:
        year, number = _month(month, calendar)
        return _midnight(date(year, number, 1), calendar), _midnight(_plus_months(date(year, number, 1), 1), calendar)
    start = _day("--from", first) if first else datetime.now(calendar.tz).date()
    end = _day("--to", last) + timedelta(days=1) if last else _plus_months(start, 12)
    if end <= start:
        raise UserError(f"--to {last} is before --from {start}; the range needs at least one day")
    return _midnight(start, calendar), _midnight(end, calendar)


CalendarFile = Annotated[Path | None, typer.Option(
    "--calendar", show_default=False, metavar="FILE",
    help="Dry look: judge this calendar file (YAML) instead of the stored one; the output says so.")]
StateDir = Annotated[Path | None, typer.Option("--state-dir", envvar="RELEASEGATE_HOME", show_default=False,
                                               help="Where state, logs and the database live "
                                                    "(default ./.releasegate).")]


def _load(calendar: Path | None, state_dir: Path | None) -> tuple[Calendar, str]:
    """The calendar to judge and what it is: a file (a dry look) or the stored one. Reading changes nothing."""
    if calendar is not None:
        return load_calendar(calendar), f"calendar file {calendar}, not the stored calendar (a dry look)"
    from releasegate.commands.approvals import state_dir_of
    from releasegate.commands.policy import Source
    from releasegate.governance.stored import parse_calendar

    where = state_dir_of(state_dir)
    doc = Source.documents.latest(where, "calendar")
    if doc is None:
        raise UserError(f"no calendar is stored in {Source.documents.shown(where)}; an admin stores one with "
                        "`releasegate calendar apply FILE`, or give --calendar FILE for a dry look at a file")
    return parse_calendar(doc), doc.label
At = Annotated[str | None, typer.Option(
    "--at", show_default=False, metavar="ISO8601",
    help="The moment to judge, ISO 8601 (2025-11-04T03:00 or 2025-11-04T03:00+09:00). Without a UTC offset it is "
         "read in the calendar's timezone. Default: now.")]
ViewEnv = Annotated[str, typer.Option("--env", help="Environment whose freezes and windows count; 'all' for every "
                                                    "environment.")]


@calendar_app.command("check")
def check(change: Annotated[ChangeKind, typer.Option("--change", show_default=False, case_sensitive=False,
                                                     help="What would start: major, minor or patch release, an "
                                                          "emergency hotfix, or a config change (monitoring, "
                                                          "alerts, log levels).")],
          at: At = None,
          env: Annotated[str, typer.Option("--env", help="Target environment.")] = "prod",
          calendar: CalendarFile = None, state_dir: StateDir = None) -> None:
    """May this change start now (or --at) under the stored calendar? Exit 0 allowed, 2 refused."""
    with _reported():
        cal, judged = _load(calendar, state_dir)
        moment = parse_at(at, cal)
        decision = decide(cal, moment, change.value, env)
    typer.echo(f"judged by {judged}")
    typer.echo(decision.reason)
    if decision.allowed:
        return
    if decision.next_allowed is not None:
        wait = relative(decision.next_allowed - utc(moment))
        typer.echo(f"next allowed: {format_local(decision.next_allowed, cal.tz)} (in {wait})")
    else:
        typer.echo("next allowed: not within 60 days")
    raise typer.Exit(2)


@calendar_app.command("show")
def show(month: Annotated[str | None, typer.Option("--month", metavar="YYYY-MM", show_default=False,
                                                   help="The month to show (default: this month).")] = None,
         env: ViewEnv = "prod",
         ics: Annotated[bool, typer.Option("--ics", help="Export an iCalendar feed instead: one event per freeze "
                                                         "occurrence in --month, --from/--to, or else the next "
                                                         "12 months.")] = False,
         first: Annotated[str | None, typer.Option("--from", metavar="YYYY-MM-DD", show_default=False,
                                                   help="First day of the --ics range (default: today).")] = None,
         last: Annotated[str | None, typer.Option("--to", metavar="YYYY-MM-DD", show_default=False,
                                                  help="Last day of the --ics range, inclusive.")] = None,
         windows: Annotated[bool, typer.Option("--windows", help="Add each deploy-window opening to the --ics "
                                                                 "feed.")] = False,
         output: Annotated[Path | None, typer.Option("--output", "-o", metavar="FILE", show_default=False,
                                                     help="Write to FILE instead of stdout.")] = None,
         yaml: Annotated[bool, typer.Option("--yaml", help="Print the stored calendar's text as applied (with "
                                                           "--version N, a past one).")] = False,
         diff: Annotated[bool, typer.Option("--diff", help="Print what the stored calendar's version (--version N, "
                                                           "else the one in force) changed against the one "
                                                           "before.")] = False,
         version: Annotated[int | None, typer.Option("--version", metavar="N", min=1, show_default=False,
                                                     help="With --yaml or --diff: a past version.")] = None,
         calendar: CalendarFile = None, state_dir: StateDir = None) -> None:
    """The stored calendar's month by week (F full, H hotfix-only, W deploy window, . open), with each freeze.

    --ics: an iCalendar feed instead; --yaml: the stored text; --diff: what a version changed; --calendar FILE: a
    dry look at a file.
    """
    if yaml or diff or version is not None:
        from releasegate.commands.policy import show_document

        with _reported():
            if calendar is not None or ics or output is not None or not (yaml or diff):
                raise UserError("--yaml prints the stored calendar's text and --diff what a version changed "
                                "(--version N: a past one); they take no --calendar, --ics or --output")
            if yaml and diff:
                raise UserError("give --yaml (the stored text) or --diff (what it changed), not both")
        show_document("calendar", version, diff, state_dir)
        return
    with _reported():
        cal, judged = _load(calendar, state_dir)
        if not ics and (first or last or windows):
            raise UserError("--from, --to and --windows shape the --ics feed; add --ics (the month view takes "
                            "--month)")
        if ics:
            start, end = _ics_range(cal, month, first, last)
            data = ics_feed(cal, start, end, _env(env), windows=windows)
        else:
            data = (f"judged by {judged}\n" + month_view(cal, *_month(month, cal), env=_env(env)) + "\n").encode()
        if ics:  # not in the feed: calendar apps would show it as text
            typer.echo(f"judged by {judged}", err=True)
        if output is None:
            typer.echo(data, nl=False)
            return
        try:
            output.write_bytes(data)
        except OSError as exc:
            raise UserError(f"--output {output}: cannot write: {exc.strerror or exc}") from None
    typer.echo(f"wrote {output}", err=True)


@calendar_app.command("upcoming")
def upcoming_command(days: Annotated[float, typer.Option("--days", min=0, metavar="DAYS",
                                                         help="How far ahead to look.")] = 7,
                     at: At = None,
                     env: ViewEnv = "prod", calendar: CalendarFile = None, state_dir: StateDir = None) -> None:
    """Freezes of the stored calendar in force now or starting within --days, and when each starts or ends."""
    with _reported():
        cal, judged = _load(calendar, state_dir)
        moment = parse_at(at, cal)
    typer.echo(f"judged by {judged}")
    found = upcoming(cal, moment, days, _env(env))
    for line in render_upcoming(cal, moment, found, days):
        typer.echo(line)
    if not found:
        following = next_freeze(cal, moment, _env(env))
        if following is not None:
            freeze, begin = following
            typer.echo(f"next: {freeze.name!r} ({freeze.mode}) starts {format_local(begin, cal.tz)} "
                       f"(in {relative(begin - utc(moment))})")


@calendar_app.command("apply")
def calendar_apply(file: Annotated[Path, typer.Argument(metavar="FILE", show_default=False,
                                                        help="Calendar (YAML) to validate and store.")],
                   as_user: Annotated[str | None, typer.Option(
                       "--as", metavar="USER", show_default=False,
                       help="An admin of the stored policy, with their token in RELEASEGATE_TOKEN.")] = None,
                   dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and show the diff; store "
                                                                           "nothing.")] = False,
                   state_dir: StateDir = None) -> None:
    """Validate FILE and store it as the calendar in force: a new version, audited with who and the diff.

    Needs an admin of the stored policy (--as, with their token); before a policy is stored, anyone (OS login).
    """
    from releasegate.commands.policy import apply_file

    apply_file("calendar", file, as_user, dry_run, state_dir)


@calendar_app.command("history")
def calendar_history(state_dir: StateDir = None) -> None:
    """Every version of the stored calendar: when, by whom, its sha256 and the file it came from."""
    from releasegate.commands.policy import history_of

    history_of("calendar", state_dir)


__all__ = ["ChangeKind", "calendar_app", "parse_at"]

"""The release calendar file: change freezes and deploy windows as validated models, loaded with FILE:LINE:COL errors.

A calendar is written by people announcing freezes (MegaCity release guide, section 6: exam seasons, holidays,
"hotfix only" weeks) and deploy windows (Judgify runbook: Tuesday 02:00-06:00 KST), so every time in it is local
time in its IANA ``timezone``; the decisions (releasegate.governance.calendar) turn them into UTC instants.
Unknown keys are refused with a did-you-mean, and each mistake is reported at its line and column.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from croniter import CroniterError, croniter
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from releasegate.governance.filecheck import Broken, Problem, load_text
from releasegate.spec.errors import LocatedValueError, did_you_mean
from releasegate.spec.models import Duration
from releasegate.spec.yamlfile import FileKind, read_yaml_text

Change = Literal["major", "minor", "patch", "hotfix", "config"]
CHANGES: tuple[Change, ...] = get_args(Change)
FreezeMode = Literal["full", "hotfix-only"]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = get_args(Weekday)
DASH = "\u2013"
"""The en dash (U+2013) between the ends of a window or span, as the seed's calendars print them."""
CALENDAR_FILE = FileKind("calendar", "a calendar needs at least 'timezone', e.g. timezone: Asia/Seoul",
                          located_at_key=True)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _clock(value: object, *, end: bool) -> str:
    """``HH:MM`` local time, normalised to two digits; ``24:00`` only as an end."""
    match = re.fullmatch(r"(\d{1,2}):(\d{2})", value.strip()) if isinstance(value, str) else None
    hours, minutes = (int(match[1]), int(match[2])) if match else (-1, -1)
    if not (0 <= hours <= 23 and 0 <= minutes <= 59) and not (end and (hours, minutes) == (24, 0)):
        raise ValueError(f"expected a local time HH:MM such as '02:00', got {value!r}")
    return f"{hours:02d}:{minutes:02d}"


def _minutes(clock: str) -> int:
    hours, minutes = clock.split(":")
    return int(hours) * 60 + int(minutes)


class Window(_Model):
    """When deploys may START (Judgify: Tuesday 02:00-06:00 KST); a rollout started inside may run past the end."""

    name: str | None = None
    days: list[Weekday] = Field(min_length=1)
    start: str
    end: str
    envs: list[str] = Field(default_factory=lambda: ["prod"], min_length=1)

    @field_validator("start", mode="before")
    @classmethod
    def _start(cls, value: object) -> str:
        return _clock(value, end=False)

    @field_validator("end", mode="before")
    @classmethod
    def _end(cls, value: object) -> str:
        return _clock(value, end=True)

    @model_validator(mode="after")
    def _not_empty(self) -> Window:
        problem = _window_length(self.start, self.end)
        if problem:
            raise LocatedValueError(problem, at=("end",))
        return self

    @property
    def start_minutes(self) -> int:
        return _minutes(self.start)

    @property
    def end_minutes(self) -> int:
        """Minutes after local midnight; 1440 for ``24:00``."""
        return _minutes(self.end)

    @property
    def label(self) -> str:
        """``name`` or ``tue 02:00-06:00`` (with an en dash): how decisions and views name the window."""
        return self.name or f"{','.join(self.days)} {self.start}{DASH}{self.end}"


def _window_length(start: str, end: str) -> str | None:
    if _minutes(start) % 1440 == _minutes(end) % 1440:
        return f"the window starts and ends at {start}; give it a length (an end before the start crosses midnight)"
    return None


class YearlySpan(_Model):
    """Whole local days from ``from`` to ``to`` (MM-DD, inclusive) every year; ``12-20`` to ``01-02`` wraps."""

    from_: str = Field(alias="from")
    to: str

    @field_validator("from_", "to", mode="before")
    @classmethod
    def _month_day(cls, value: object) -> str:
        match = re.fullmatch(r"(\d{1,2})-(\d{1,2})", value.strip()) if isinstance(value, str) else None
        if match is None:
            raise ValueError(f"expected a month and day MM-DD such as '12-20', got {value!r}")
        month, day = int(match[1]), int(match[2])
        if (month, day) == (2, 29):
            raise ValueError("02-29 exists only in leap years; use 02-28 or 03-01")
        try:
            date(2001, month, day)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a day of the year ({exc}); write MM-DD such as '12-20'") from None
        return f"{month:02d}-{day:02d}"

    def dates(self, year: int) -> tuple[date, date]:
        """First and last day of the occurrence that starts in ``year``."""
        (fm, fd), (tm, td) = (tuple(int(p) for p in s.split("-")) for s in (self.from_, self.to))
        wraps = (tm, td) < (fm, fd)
        return date(year, fm, fd), date(year + wraps, tm, td)


def _day(value: object) -> date:
    if isinstance(value, datetime):
        raise ValueError("freezes by date cover whole days: write a date such as 2025-11-01 (cron + duration "
                         "covers hours)")
    if isinstance(value, date):
        return value
    text = value.strip() if isinstance(value, str) else ""
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        try:
            return date.fromisoformat(text)
        except ValueError as exc:
            raise ValueError(f"{text!r} is not a date ({exc}); write YYYY-MM-DD, e.g. 2025-11-01") from None
    raise ValueError(f"expected a date YYYY-MM-DD such as 2025-11-01, got {value!r}")


_CRON_FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")


def _cron(value: object) -> str:
    """A 5-field cron expression croniter can expand, or a message naming the field at fault."""
    if not isinstance(value, str):
        raise ValueError(f"expected a cron expression such as '0 18 * * fri', got {value!r}")
    fields = value.split()
    usage = "write 5 fields: minute hour day-of-month month day-of-week, e.g. '0 18 * * fri'"
    if len(fields) != 5:
        raise ValueError(f"cron {value!r} has {len(fields)} field(s); {usage}")
    for i, name in enumerate(_CRON_FIELDS):
        probe = " ".join(f if j == i else "*" for j, f in enumerate(fields))
        if not croniter.is_valid(probe):
            raise ValueError(f"cron {value!r}: the {name} field {fields[i]!r} is not valid; {usage}")
    try:
        croniter(value, datetime(2000, 1, 1)).get_next(datetime)
    except (CroniterError, ValueError) as exc:
        raise ValueError(f"cron {value!r} cannot be expanded ({exc}); {usage}") from None
    return " ".join(fields)


class Freeze(_Model):
    """A change freeze: ``from``/``to`` dates, a ``yearly`` span, or ``cron`` starts each lasting ``duration``."""

    name: str = Field(min_length=1)
    mode: FreezeMode = "full"
    from_: date | None = Field(None, alias="from")
    to: date | None = None
    yearly: YearlySpan | None = None
    cron: str | None = None
    duration: Duration | None = None
    envs: list[str] | None = Field(None, min_length=1)
    """The environments frozen; None (the default) freezes every environment."""

    _dates = field_validator("from_", "to", mode="before")(classmethod(lambda cls, v: None if v is None else _day(v)))
    _expr = field_validator("cron", mode="before")(classmethod(lambda cls, v: None if v is None else _cron(v)))

    @model_validator(mode="after")
    def _one_kind(self) -> Freeze:
        keys = {"from": self.from_, "to": self.to, "yearly": self.yearly, "cron": self.cron,
                "duration": self.duration}
        shape = _freeze_shape(self.name, {key for key, value in keys.items() if value is not None})
        if shape is not None:
            raise LocatedValueError(shape[1], at=shape[0])
        if self.from_ and self.to and self.to < self.from_:
            raise LocatedValueError(f"'to' ({self.to}) is before 'from' ({self.from_})", at=("to",))
        if self.duration is not None and self.duration <= 0:
            raise LocatedValueError("duration must be more than 0", at=("duration",))
        return self

    def applies_to(self, env: str | None) -> bool:
        """None asks about every environment (the views)."""
        return env is None or self.envs is None or env in self.envs


def _freeze_shape(name: object, present: set[str]) -> tuple[tuple[str, ...], str] | None:
    """Which kind of freeze it is, judged by the keys written (``present``): where and what is wrong, or None.
    Needs no valid value, so a freeze whose dates are broken is still told that its 'to' is missing."""
    label = f"freeze {name!r}" if isinstance(name, str) else "the freeze"
    kinds = [(kind, key) for kind, key, written in (
        ("from/to dates", "from" if "from" in present else "to", present & {"from", "to"}),
        ("yearly", "yearly", "yearly" in present),
        ("cron + duration", "cron" if "cron" in present else "duration", present & {"cron", "duration"}),
    ) if written]
    choose = "from/to dates, yearly: {from: MM-DD, to: MM-DD}, or cron + duration"
    if not kinds:
        return (), f"{label} needs when it applies: {choose}"
    if len(kinds) > 1:
        return (kinds[1][1],), f"{label} has both {kinds[0][0]} and {kinds[1][0]}; give exactly one of: {choose}"
    if ("from" in present) != ("to" in present):
        missing, written = ("to", "from") if "from" in present else ("from", "to")
        return (written,), f"{label} needs both 'from' and 'to' (inclusive dates); '{missing}' is missing"
    if ("cron" in present) != ("duration" in present):
        if "cron" in present:
            return ("cron",), "cron needs a duration (how long each freeze lasts, e.g. duration: 62h)"
        return ("duration",), "duration needs a cron expression for when each freeze starts, e.g. cron: '0 18 * * fri'"
    return None


def _duplicate_names(names: list[object]) -> list[tuple[int, str]]:
    seen: set[str] = set()
    problems = []
    for i, name in enumerate(names):
        if not isinstance(name, str):
            continue
        if name in seen:
            problems.append((i, f"two freezes are named {name!r}; names must be unique (decisions and the calendar "
                                "feed refer to freezes by name)"))
        seen.add(name)
    return problems


class Calendar(_Model):
    """Freezes and deploy windows, all in local time of one IANA ``timezone``."""

    timezone: str
    windows: list[Window] = []
    freezes: list[Freeze] = []

    @field_validator("timezone", mode="before")
    @classmethod
    def _zone(cls, value: object) -> str:
        if not isinstance(value, str):
            raise ValueError(f"expected an IANA timezone such as Asia/Seoul, got {value!r}")
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            hint = did_you_mean(value, sorted(available_timezones())) if "/" in value else None
            raise ValueError(f"unknown timezone {value!r}" + (f" (did you mean {hint!r}?)" if hint else "; use an "
                             "IANA name such as Asia/Seoul, Europe/Berlin or UTC, not an abbreviation")) from None
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> Calendar:
        for i, problem in _duplicate_names([f.name for f in self.freezes])[:1]:
            raise LocatedValueError(problem, at=("freezes", i, "name"))
        return self

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)  # ZoneInfo caches instances by key


def load_calendar(path: str | Path) -> Calendar:
    """The validated calendar in ``path``; raises ``SpecError`` (a UserError) with FILE:LINE:COL lines."""
    return load_calendar_text(read_yaml_text(path, CALENDAR_FILE), str(path))


def load_calendar_text(text: str, filename: str = "calendar.yaml") -> Calendar:
    """Like ``load_calendar`` for text already read; ``filename`` only labels the issues."""
    return load_text(text, filename, Calendar, CALENDAR_FILE, lambda _calendar: [], _salvage, at_key=True)


def _salvage(raw: dict[str, Any], broken: Broken) -> list[Problem]:
    """What the validators of the whole calendar, a freeze or a window would have said, had a broken value next
    to them not stopped them: duplicate freeze names, a freeze's missing half, a window without length."""
    problems: list[Problem] = []
    freezes = raw.get("freezes")
    if isinstance(freezes, list):
        names = [f.get("name") if isinstance(f, dict) and not broken.at("freezes", i, "name") else None
                 for i, f in enumerate(freezes)]
        problems += [(("freezes", i, "name"), message) for i, message in _duplicate_names(names)]
        for i, freeze in enumerate(freezes):
            if isinstance(freeze, dict) and broken.at("freezes", i):
                shape = _freeze_shape(names[i], {str(k) for k, v in freeze.items() if v is not None})
                if shape is not None:
                    problems.append((("freezes", i, *shape[0]), shape[1]))
    windows = raw.get("windows")
    for i, window in enumerate(windows if isinstance(windows, list) else []):
        if not isinstance(window, dict) or not broken.at("windows", i):
            continue
        try:
            start, end = _clock(window.get("start"), end=False), _clock(window.get("end"), end=True)
        except ValueError:
            continue
        problem = _window_length(start, end)
        if problem:
            problems.append((("windows", i, "end"), problem))
    return problems


__all__ = ["CALENDAR_FILE", "CHANGES", "DASH", "WEEKDAYS", "Calendar", "Change", "Freeze", "FreezeMode", "Weekday",
           "Window", "YearlySpan", "load_calendar", "load_calendar_text"]

"""The release calendar: freezes and deploy windows decide what may start when, in local time, DST included.

Most tests use the seed's 2025 Q4 calendar (examples/governance/calendar.yaml, Asia/Seoul): exam season full freeze
Nov 1-21, a hotfix-only week Nov 22-30, Christmas to New Year every year, every weekend from Friday 18:00 for 62h
(until Monday 08:00), and deploys starting only on Tuesdays 02:00-06:00.
"""
# ruff: noqa: RUF001  (the expected output prints spans with an en dash, as the seed's calendars do)

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import icalendar
import pytest
from typer.testing import CliRunner

from releasegate.commands.calendar import calendar_app
from releasegate.governance.calendar import (
    Calendar,
    decide,
    frozen_at,
    load_calendar,
    load_calendar_text,
    next_freeze,
)
from releasegate.governance.calendar_views import day_marks, ics_feed, month_view, render_upcoming, upcoming
from releasegate.spec import SpecError

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "governance" / "calendar.yaml"
SEOUL = ZoneInfo("Asia/Seoul")
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
SEED = """\
timezone: Asia/Seoul
windows:                      # if any, prod deploys only start inside one
  - {days: [tue], start: "02:00", end: "06:00"}
freezes:
  - {name: exam season, from: 2025-11-01, to: 2025-11-21, mode: full}
  - {name: exam hotfix week, from: 2025-11-22, to: 2025-11-30, mode: hotfix-only}
  - {name: christmas and new year, yearly: {from: 12-20, to: 01-02}, mode: full}
  - {name: weekend, cron: "0 18 * * fri", duration: 62h, mode: full}
"""


@pytest.fixture(scope="module")
def seed() -> Calendar:
    return load_calendar(EXAMPLE)


def kst(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=SEOUL)


def at_utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


# --- the file ---------------------------------------------------------------------------------------------------


def test_the_seed_calendar_is_accepted_and_the_example_says_the_same(seed: Calendar) -> None:
    assert load_calendar_text(SEED) == seed
    assert seed.timezone == "Asia/Seoul"
    [window] = seed.windows
    assert (window.days, window.start, window.end, window.envs) == (["tue"], "02:00", "06:00", ["prod"])
    exam, hotfix, xmas, weekend = seed.freezes
    assert (exam.name, exam.mode, str(exam.from_), str(exam.to)) == ("exam season", "full", "2025-11-01", "2025-11-21")
    assert hotfix.mode == "hotfix-only"
    assert xmas.yearly is not None and (xmas.yearly.from_, xmas.yearly.to) == ("12-20", "01-02")
    assert (weekend.cron, weekend.duration, weekend.envs) == ("0 18 * * fri", 62 * 3600, None)


BAD_FILES = [
    ("unknown key", "  - {name: x, from: 2025-11-01, to: 2025-11-02, mdoe: full}",
     "cal.yaml:3:49: unknown key 'mdoe' (did you mean 'mode'?)"),
    ("bad cron", "  - {name: weekend, cron: '0 18 * * fry', duration: 62h}",
     "cal.yaml:3:27: cron '0 18 * * fry': the day-of-week field 'fry' is not valid; write 5 fields: minute hour "
     "day-of-month month day-of-week, e.g. '0 18 * * fri'"),
    ("both from/to and cron", "  - {name: x, from: 2025-11-01, to: 2025-11-02, cron: '0 18 * * fri', duration: 1h}",
     "cal.yaml:3:49: freeze 'x' has both from/to dates and cron + duration; give exactly one of: from/to dates, "
     "yearly: {from: MM-DD, to: MM-DD}, or cron + duration"),
    ("bad date", "  - {name: x, from: 2025-11-31, to: 2025-12-02}",
     "cal.yaml:3:21: '2025-11-31' is not a date (day is out of range for month); write YYYY-MM-DD, e.g. 2025-11-01"),
    ("cron without duration", "  - {name: x, cron: '0 18 * * fri'}",
     "cal.yaml:3:15: cron needs a duration (how long each freeze lasts, e.g. duration: 62h)"),
    ("unknown mode", "  - {name: x, from: 2025-11-01, to: 2025-11-02, mode: hotfix}",
     "cal.yaml:3:55: unknown mode 'hotfix' (did you mean 'hotfix-only'?); expected one of: full, hotfix-only"),
]


@pytest.mark.parametrize(("case", "line", "expected"), BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_freezes_are_one_line_at_the_mistake(tmp_path: Path, case: str, line: str, expected: str) -> None:
    path = tmp_path / "cal.yaml"
    path.write_text(f"timezone: Asia/Seoul\nfreezes:\n{line}\n")
    with pytest.raises(SpecError) as info:
        load_calendar(path)
    assert str(info.value) == f"{tmp_path}/{expected}"


@pytest.mark.parametrize(("text", "expected"), [
    ("timezone: Asia/Seol\n", "cal.yaml:1:11: unknown timezone 'Asia/Seol' (did you mean 'Asia/Seoul'?)"),
    ("timezone: KST\n", "cal.yaml:1:11: unknown timezone 'KST'; use an IANA name such as Asia/Seoul, "
                        "Europe/Berlin or UTC, not an abbreviation"),
    ("timezone: UTC\nwindow: []\n", "cal.yaml:2:1: unknown key 'window' (did you mean 'windows'?)"),
    ("timezone: UTC\nwindows:\n  - {days: [tues], start: '02:00', end: '06:00'}\n",
     "cal.yaml:3:13: unknown days 'tues' (did you mean 'tue'?); expected one of: mon, tue, wed, thu, fri, sat, sun"),
    ("timezone: UTC\nwindows:\n  - {days: [tue], start: '02:00', end: '25:00'}\n",
     "cal.yaml:3:40: expected a local time HH:MM such as '02:00', got '25:00'"),
    ("timezone: UTC\nfreezes:\n  - {name: x, yearly: {from: 12-20, to: 13-01}}\n",
     "cal.yaml:3:41: '13-01' is not a day of the year (month must be in 1..12); write MM-DD such as '12-20'"),
    ("timezone: UTC\nfreezes:\n  - {name: x, from: 2025-11-05, to: 2025-11-01}\n",
     "cal.yaml:3:33: 'to' (2025-11-01) is before 'from' (2025-11-05)"),
    ("timezone: UTC\nfreezes:\n  - {name: x, mode: full}\n",
     "cal.yaml:3:5: freeze 'x' needs when it applies: from/to dates, yearly: {from: MM-DD, to: MM-DD}, or cron + "
     "duration"),
    ("timezone: UTC\ntimezone: UTC\n", "cal.yaml:2:1: duplicate key 'timezone' (first at line 1)"),
    ("windows: []\n", "cal.yaml:1:1: missing required key 'timezone'"),
])
def test_other_mistakes_are_located_too(text: str, expected: str) -> None:
    with pytest.raises(SpecError) as info:
        load_calendar_text(text, "cal.yaml")
    assert str(info.value) == expected


def test_a_broken_value_does_not_hide_what_the_calendar_freeze_or_window_would_say() -> None:
    """Checks of a whole calendar, freeze or window used to run only once everything in it was valid."""
    text = ("timezone: UTC\n"
            "windows:\n"
            "  - {days: [], start: '02:00', end: '02:00'}\n"
            "freezes:\n"
            "  - {name: x, mode: frozen}\n"
            "  - {name: y, from: 2025-11-01, cron: '0 18 * * fri', duration: 1h, envs: []}\n"
            "  - {name: x, yearly: {from: 12-20, to: 01-02}}\n")
    with pytest.raises(SpecError) as info:
        load_calendar_text(text, "cal.yaml")
    choose = "from/to dates, yearly: {from: MM-DD, to: MM-DD}, or cron + duration"
    assert str(info.value).splitlines() == [
        "cal.yaml:3:6: days needs at least 1 item(s)",
        "cal.yaml:3:32: the window starts and ends at 02:00; give it a length (an end before the start crosses "
        "midnight)",
        f"cal.yaml:5:5: freeze 'x' needs when it applies: {choose}",
        "cal.yaml:5:21: unknown mode 'frozen'; expected one of: full, hotfix-only",
        f"cal.yaml:6:33: freeze 'y' has both from/to dates and cron + duration; give exactly one of: {choose}",
        "cal.yaml:6:69: envs needs at least 1 item(s)",
        "cal.yaml:7:6: two freezes are named 'x'; names must be unique (decisions and the calendar feed refer to "
        "freezes by name)"]


def test_times_and_dates_may_be_written_without_quotes() -> None:
    cal = load_calendar_text("timezone: UTC\nwindows: [{days: [mon], start: 2:00, end: 06:00}]\n"
                             "freezes: [{name: x, from: '2025-11-01', to: 2025-11-01}]\n")
    assert (cal.windows[0].start, cal.windows[0].end) == ("02:00", "06:00")
    assert cal.freezes[0].from_ == cal.freezes[0].to


def test_a_naive_moment_is_refused(seed: Calendar) -> None:
    with pytest.raises(ValueError, match="no UTC offset"):
        decide(seed, datetime(2025, 12, 2, 3), "minor")


# --- freezes ----------------------------------------------------------------------------------------------------


def test_a_full_freeze_refuses_a_minor_release_but_allows_config(seed: Calendar) -> None:
    refused = decide(seed, kst(2025, 11, 4, 3), "minor")
    assert not refused.allowed
    assert refused.reason == ("refused: full freeze 'exam season' (2025-11-01 00:00 – 2025-11-21 24:00 KST) allows "
                              "only config changes")
    assert refused.freeze == "exam season" and refused.window == "tue 02:00–06:00"
    assert refused.next_allowed == kst(2025, 12, 2, 2)  # Nov 25 is hotfix-only, Dec 2 the next open Tuesday
    config = decide(seed, kst(2025, 11, 4, 3), "config")
    assert config.allowed and config.freeze == "exam season" and config.next_allowed == kst(2025, 11, 4, 3)
    assert "allows config changes (monitoring, alerts, log levels)" in config.reason
    assert not decide(seed, kst(2025, 11, 4, 3), "hotfix").allowed  # emergency deploys: never in a full freeze
    assert frozen_at(seed, kst(2025, 11, 4, 3)) == seed.freezes[0]


def test_the_hotfix_only_week_allows_patch_and_hotfix_and_refuses_minor(seed: Calendar) -> None:
    tuesday = kst(2025, 11, 25, 3)
    for change in ("patch", "hotfix", "config"):
        decision = decide(seed, tuesday, change)
        assert decision.allowed and decision.freeze == "exam hotfix week", decision
    minor = decide(seed, tuesday, "minor")
    assert not minor.allowed
    assert minor.reason == ("refused: hotfix-only freeze 'exam hotfix week' (2025-11-22 00:00 – 2025-11-30 24:00 "
                            "KST) allows only patch, hotfix and config changes")
    assert not decide(seed, tuesday, "major").allowed
    assert not decide(seed, kst(2025, 11, 26, 10), "patch").allowed  # a patch is a deploy: it needs the window
    assert decide(seed, kst(2025, 11, 26, 10), "hotfix").allowed


def test_the_strictest_freeze_decides_where_two_overlap(seed: Calendar) -> None:
    saturday = kst(2025, 11, 22, 12)  # hotfix-only week and the weekend's full freeze
    decision = decide(seed, saturday, "hotfix")
    assert not decision.allowed and decision.freeze == "weekend"
    assert decision.next_allowed == kst(2025, 11, 24, 8)  # hotfix week still, but hotfixes are allowed in it
    assert frozen_at(seed, saturday) == seed.freezes[3]


def test_a_yearly_freeze_wraps_the_new_year() -> None:
    cal = load_calendar_text("timezone: Asia/Seoul\nfreezes:\n"
                             "  - {name: holidays, yearly: {from: 12-20, to: 01-02}}\n")
    assert decide(cal, kst(2025, 12, 19, 23, 59), "minor").allowed
    for moment in (kst(2025, 12, 20), kst(2025, 12, 31, 12), kst(2026, 1, 1, 9), kst(2026, 1, 2, 23, 59),
                   kst(2025, 1, 1, 9)):  # and the occurrence that started in December 2024
        decision = decide(cal, moment, "minor")
        assert not decision.allowed and decision.freeze == "holidays", moment
    assert decide(cal, kst(2025, 12, 31), "minor").next_allowed == kst(2026, 1, 3)
    assert decide(cal, kst(2026, 1, 3), "minor").allowed
    assert next_freeze(cal, kst(2026, 1, 3)) == (cal.freezes[0], kst(2026, 12, 20))


def test_the_weekend_cron_freeze_runs_from_friday_18_00_for_62_hours(seed: Calendar) -> None:
    # hotfixes may start outside the Tuesday window, so they show the freeze alone
    assert decide(seed, kst(2025, 12, 5, 17, 59), "hotfix").allowed
    for moment in (kst(2025, 12, 5, 18), kst(2025, 12, 7, 8), kst(2025, 12, 8, 7, 59)):
        decision = decide(seed, moment, "hotfix")
        assert not decision.allowed and decision.freeze == "weekend", moment
    friday = decide(seed, kst(2025, 12, 5, 18), "hotfix")
    assert friday.reason == ("refused: full freeze 'weekend' (2025-12-05 18:00 – 2025-12-08 08:00 KST) allows only "
                             "config changes")
    assert friday.next_allowed == kst(2025, 12, 8, 8)
    assert decide(seed, kst(2025, 12, 8, 8), "hotfix").allowed


def test_next_freeze_is_the_one_that_starts_first(seed: Calendar) -> None:
    assert next_freeze(seed, kst(2025, 12, 1, 9)) == (seed.freezes[3], kst(2025, 12, 5, 18))
    assert next_freeze(seed, kst(2025, 12, 19, 19)) == (seed.freezes[2], kst(2025, 12, 20))
    assert next_freeze(seed, kst(2025, 10, 30)) == (seed.freezes[3], kst(2025, 10, 31, 18))
    found = next_freeze(seed, kst(2025, 10, 31, 19))  # in the weekend freeze: the next one after it
    assert found == (seed.freezes[0], kst(2025, 11, 1))


# --- windows ----------------------------------------------------------------------------------------------------


def test_deploys_start_only_inside_a_window(seed: Calendar) -> None:
    inside = decide(seed, kst(2025, 12, 2, 3), "minor")
    assert inside.allowed and inside.window == "tue 02:00–06:00" and inside.freeze is None
    assert inside.reason == ("allowed: minor change to prod: no freeze in force; inside deploy window "
                             "'tue 02:00–06:00' (2025-12-02 02:00 – 06:00 KST)")
    assert decide(seed, kst(2025, 12, 2, 2), "minor").allowed
    for moment in (kst(2025, 12, 2, 7), kst(2025, 12, 2, 6), kst(2025, 12, 2, 1, 59)):
        assert not decide(seed, moment, "minor").allowed, moment
    late = decide(seed, kst(2025, 12, 2, 7), "minor")
    assert late.next_allowed == kst(2025, 12, 9, 2) and late.window is None and late.freeze is None
    assert late.reason == ("refused: minor changes to prod start only inside a deploy window (tue 02:00–06:00, "
                           "Asia/Seoul); the next opens 2025-12-09 02:00 – 06:00 KST")


def test_hotfix_and_config_may_start_outside_a_window(seed: Calendar) -> None:
    hotfix = decide(seed, kst(2025, 12, 3, 10), "hotfix")
    assert hotfix.allowed and hotfix.window is None
    assert "outside the deploy windows" in hotfix.reason
    assert decide(seed, kst(2025, 12, 3, 10), "config").allowed
    assert not decide(seed, kst(2025, 12, 3, 10), "patch").allowed


def test_a_window_may_cross_midnight() -> None:
    cal = load_calendar_text("timezone: UTC\nwindows: [{days: [fri], start: '22:00', end: '02:00'}]\n")
    assert decide(cal, at_utc(2025, 12, 5, 23), "minor").allowed
    assert decide(cal, at_utc(2025, 12, 6, 1, 30), "minor").allowed  # Saturday, in Friday's window
    assert not decide(cal, at_utc(2025, 12, 6, 2), "minor").allowed
    early = decide(cal, at_utc(2025, 12, 5, 21, 59), "minor")
    assert not early.allowed and early.next_allowed == at_utc(2025, 12, 5, 22)


def test_no_window_within_60_days_means_no_next_allowed() -> None:
    cal = load_calendar_text("timezone: UTC\nfreezes: [{name: long, from: 2025-01-01, to: 2025-06-30}]\n")
    decision = decide(cal, at_utc(2025, 1, 10), "minor")
    assert not decision.allowed and decision.next_allowed is None
    assert decide(cal, at_utc(2025, 6, 1), "minor").next_allowed == at_utc(2025, 7, 1)


# --- DST --------------------------------------------------------------------------------------------------------


def test_a_cron_freeze_stays_at_18_00_local_across_dst() -> None:
    cal = load_calendar_text("timezone: Europe/Berlin\nfreezes: [{name: weekend, cron: '0 18 * * fri', "
                             "duration: 62h}]\n")
    # autumn: 18:00 CEST is 16:00 UTC before the change (Oct 26), 18:00 CET is 17:00 UTC after it
    assert frozen_at(cal, at_utc(2025, 10, 24, 15, 59)) is None
    assert frozen_at(cal, at_utc(2025, 10, 24, 16)) is not None
    assert frozen_at(cal, at_utc(2025, 10, 27, 6, 59)) is not None  # Monday 07:59 CET
    assert frozen_at(cal, at_utc(2025, 10, 27, 7)) is None  # Monday 08:00 CET: 62h on the wall clock
    assert frozen_at(cal, at_utc(2025, 10, 31, 16, 30)) is None
    assert frozen_at(cal, at_utc(2025, 10, 31, 17)) is not None
    # spring (Mar 30): Friday 18:00 CET = 17:00 UTC, Monday 08:00 CEST = 06:00 UTC
    assert decide(cal, at_utc(2025, 3, 28, 17), "minor").next_allowed == datetime(2025, 3, 31, 8, tzinfo=BERLIN)
    assert frozen_at(cal, at_utc(2025, 3, 31, 6)) is None
    assert next_freeze(cal, at_utc(2025, 10, 25)) == (cal.freezes[0], datetime(2025, 10, 31, 18, tzinfo=BERLIN))
    feed = icalendar.Calendar.from_ical(ics_feed(cal, at_utc(2025, 10, 21), at_utc(2025, 11, 3)))
    starts = [ev.decoded("dtstart") for ev in feed.walk("VEVENT")]
    assert [(s.hour, s.utcoffset().total_seconds() / 3600) for s in starts] == [(18, 2), (18, 1)]


def test_a_window_on_the_spring_forward_night_opens_when_the_clock_jumps() -> None:
    cal = load_calendar_text("timezone: America/New_York\nwindows: [{days: [sun], start: '02:00', end: '06:00'}]\n")
    # 2025-03-09: 02:00 EST jumps to 03:00 EDT (07:00 UTC); the window runs 03:00-06:00 EDT that night
    before = decide(cal, at_utc(2025, 3, 9, 6, 59), "minor")  # 01:59 EST
    assert not before.allowed and before.next_allowed == at_utc(2025, 3, 9, 7)
    assert before.next_allowed.astimezone(NEW_YORK).hour == 3
    assert decide(cal, at_utc(2025, 3, 9, 7), "minor").allowed
    assert decide(cal, at_utc(2025, 3, 9, 9, 59), "minor").allowed  # 05:59 EDT
    assert not decide(cal, at_utc(2025, 3, 9, 10), "minor").allowed  # 06:00 EDT
    assert decide(cal, at_utc(2025, 3, 16, 6), "minor").allowed  # a week later: 02:00 EDT = 06:00 UTC


def test_a_window_on_the_fall_back_night_includes_the_repeated_hour() -> None:
    cal = load_calendar_text("timezone: Europe/Berlin\nwindows: [{days: [sun], start: '02:00', end: '03:00'}]\n")
    # 2025-10-26: 02:00-03:00 CEST, then 02:00-03:00 CET again: the window spans both (00:00-02:00 UTC)
    assert decide(cal, at_utc(2025, 10, 26, 0, 30), "minor").allowed
    assert decide(cal, at_utc(2025, 10, 26, 1, 30), "minor").allowed  # 02:30 CET, the second time round
    assert not decide(cal, at_utc(2025, 10, 26, 2), "minor").allowed


# --- environments -----------------------------------------------------------------------------------------------


def test_freezes_and_windows_apply_to_their_environments() -> None:
    cal = load_calendar_text("""\
timezone: UTC
windows:
  - {days: [tue], start: '02:00', end: '06:00'}
  - {days: [wed], start: '10:00', end: '12:00', envs: [staging]}
freezes:
  - {name: prod only, from: 2025-12-01, to: 2025-12-07, envs: [prod]}
  - {name: staging only, from: 2025-12-08, to: 2025-12-14, envs: [staging], mode: hotfix-only}
  - {name: everywhere, from: 2025-12-15, to: 2025-12-21}
""")
    tuesday = at_utc(2025, 12, 2, 3)
    assert not decide(cal, tuesday, "minor", "prod").allowed
    assert decide(cal, at_utc(2025, 12, 3, 11), "minor", "staging").allowed  # prod's freeze, staging's window
    assert decide(cal, tuesday, "minor", "dev").allowed
    assert not decide(cal, tuesday, "patch", "staging").allowed  # prod's window is not staging's
    assert not decide(cal, at_utc(2025, 12, 10, 11), "patch", "prod").allowed
    assert decide(cal, at_utc(2025, 12, 3, 15), "minor", "dev").allowed  # no window names dev: any time
    assert decide(cal, at_utc(2025, 12, 9, 3), "minor", "prod").allowed
    staging_wednesday = at_utc(2025, 12, 10, 11)  # in staging's hotfix-only week and staging's window
    assert not decide(cal, staging_wednesday, "minor", "staging").allowed
    assert decide(cal, staging_wednesday, "patch", "staging").allowed
    assert frozen_at(cal, at_utc(2025, 12, 16), "dev") == cal.freezes[2]
    assert frozen_at(cal, tuesday, "dev") is None
    assert next_freeze(cal, at_utc(2025, 11, 1), "staging") == (cal.freezes[1], at_utc(2025, 12, 8))


# --- views ------------------------------------------------------------------------------------------------------


def test_the_month_view_marks_each_day(seed: Calendar) -> None:
    marks = day_marks(seed, 2025, 11)
    assert all(marks[d] == "F" for d in marks if d.day <= 23)  # exam season, then the weekend
    assert [marks[d] for d in sorted(marks) if d.day >= 24] == ["f", "H", "H", "H", "f", "F", "F"]
    december = day_marks(seed, 2025, 12)
    assert [december[d] for d in sorted(december)][:7] == ["f", "W", ".", ".", "f", "F", "F"]
    text = month_view(seed, 2025, 11)
    lines = text.splitlines()
    assert lines[0] == "November 2025  (Asia/Seoul, env prod)"
    assert lines[2] == "wk 44                              1F   2F"
    assert "wk 48    24f  25H  26H  27H  28f  29F  30F" in lines
    assert "  F  exam season       full         2025-11-01 00:00 – 2025-11-21 24:00 KST" in lines
    assert "  H  exam hotfix week  hotfix-only  2025-11-22 00:00 – 2025-11-30 24:00 KST" in lines
    assert sum("weekend" in line for line in lines) == 5
    assert "tue 02:00–06:00" in lines[-1]


def test_the_ics_feed_has_one_event_per_freeze_occurrence(seed: Calendar) -> None:
    stamp = at_utc(2025, 10, 1)
    data = ics_feed(seed, kst(2025, 11, 1), kst(2025, 12, 1), stamp=stamp)
    assert data == ics_feed(seed, kst(2025, 11, 1), kst(2025, 12, 1), stamp=stamp)  # stable UIDs
    feed = icalendar.Calendar.from_ical(data)
    events = feed.walk("VEVENT")
    assert len(events) == 7  # exam season, hotfix week, five weekends (Oct 31 to Nov 28)
    assert [tz["TZID"] for tz in feed.walk("VTIMEZONE")] == ["Asia/Seoul"]
    by_name = {str(ev["summary"]): ev for ev in events}
    exam = by_name["Change freeze (full): exam season"]
    assert exam["dtstart"].params["TZID"] == "Asia/Seoul"
    assert exam.decoded("dtstart") == kst(2025, 11, 1) and exam.decoded("dtend") == kst(2025, 11, 22)
    weekends = sorted(ev.decoded("dtstart") for ev in events if "weekend" in str(ev["summary"]))
    assert weekends == [kst(2025, 10, 31, 18), *(kst(2025, 11, d, 18) for d in (7, 14, 21, 28))]
    assert len({str(ev["uid"]) for ev in events}) == 7
    with_windows = icalendar.Calendar.from_ical(ics_feed(seed, kst(2025, 11, 1), kst(2025, 12, 1), windows=True))
    assert len(with_windows.walk("VEVENT")) == 11  # and the four Tuesdays


def test_upcoming_lists_what_is_in_force_and_what_starts_within_the_days(seed: Calendar) -> None:
    now = kst(2025, 11, 18)
    found = upcoming(seed, now, 7)
    assert [o.freeze.name for o in found] == ["exam season", "weekend", "exam hotfix week"]
    lines = render_upcoming(seed, now, found, 7)
    assert lines[0].startswith("in force, ends in 4d 0h") and "exam season" in lines[0]
    assert lines[1].startswith("starts in 3d 18h") and "2025-11-21 18:00 – 2025-11-24 08:00 KST" in lines[1]
    assert [o.freeze.name for o in upcoming(seed, kst(2025, 12, 1, 9), 3)] == []


# --- the command line -------------------------------------------------------------------------------------------


def run(*args: str) -> tuple[int, str]:
    """Exit code and output, without the first line every look at a file starts with (checked here)."""
    result = CliRunner().invoke(calendar_app, list(args))
    out = result.output
    if "--calendar" in args and (result.exit_code == 0 or out.startswith("judged by")):
        first, _, out = out.partition("\n")
        file = args[args.index("--calendar") + 1]
        assert first == f"judged by calendar file {file}, not the stored calendar (a dry look)"
    return result.exit_code, out


def test_check_exits_0_when_allowed_and_2_when_refused() -> None:
    code, out = run("check", "--calendar", str(EXAMPLE), "--at", "2025-12-02T03:00", "--change", "minor")
    assert code == 0 and out.startswith("allowed: minor change to prod")
    code, out = run("check", "--calendar", str(EXAMPLE), "--at", "2025-12-02T07:00", "--change", "minor")
    assert code == 2
    assert out.splitlines()[1] == "next allowed: 2025-12-09 02:00 KST (in 6d 19h)"
    # an offset is honoured: 03:00 UTC is 12:00 in Seoul, outside the window
    code, out = run("check", "--calendar", str(EXAMPLE), "--at", "2025-12-02T03:00+00:00", "--change", "minor")
    assert code == 2 and out.startswith("refused: minor changes to prod start only inside a deploy window")
    code, out = run("check", "--calendar", str(EXAMPLE), "--at", "2025-11-04T03:00", "--change", "hotfix",
                    "--env", "prod")
    assert code == 2 and "exam season" in out


def test_check_reports_user_errors_on_one_line_with_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "cal.yaml"
    bad.write_text("timezone: Asia/Seol\n")
    code, out = run("check", "--calendar", str(bad), "--change", "minor")
    assert code == 2 and out == f"releasegate: {bad}:1:11: unknown timezone 'Asia/Seol' (did you mean 'Asia/Seoul'?)\n"
    code, out = run("check", "--calendar", str(EXAMPLE), "--at", "tuesday", "--change", "minor")
    assert code == 2 and out.startswith("releasegate: --at 'tuesday': not an ISO 8601 time")
    code, _ = run("check", "--calendar", str(EXAMPLE), "--change", "feature")
    assert code == 2


def test_show_prints_the_month_and_exports_ics(tmp_path: Path) -> None:
    code, out = run("show", "--calendar", str(EXAMPLE), "--month", "2025-11")
    assert code == 0 and "wk 48    24f  25H  26H  27H  28f  29F  30F" in out
    target = tmp_path / "freezes.ics"
    code, _ = run("show", "--calendar", str(EXAMPLE), "--ics", "--from", "2025-12-01", "--to", "2026-01-31",
                  "--output", str(target))
    assert code == 0
    events = icalendar.Calendar.from_ical(target.read_bytes()).walk("VEVENT")
    names = sorted(str(ev["summary"]) for ev in events)
    assert names.count("Change freeze (full): christmas and new year") == 1
    assert names.count("Change freeze (full): weekend") == 10  # Fridays Nov 28 (into Dec 1) to Jan 30
    code, out = run("show", "--calendar", str(EXAMPLE), "--month", "2025-11", "--ics")
    assert code == 0 and out.count("BEGIN:VEVENT") == 7
    code, out = run("show", "--calendar", str(EXAMPLE), "--month", "11/2025")
    assert code == 2 and "write the month as YYYY-MM" in out


def test_upcoming_command() -> None:
    code, out = run("upcoming", "--calendar", str(EXAMPLE), "--at", "2025-11-18T00:00", "--days", "7")
    assert code == 0 and len(out.splitlines()) == 3 and "exam hotfix week" in out
    code, out = run("upcoming", "--calendar", str(EXAMPLE), "--at", "2025-12-01T09:00", "--days", "3")
    assert code == 0
    assert out.splitlines() == ["no freezes in force or starting within 3 day(s) of 2025-12-01 09:00 KST",
                                "next: 'weekend' (full) starts 2025-12-05 18:00 KST (in 4d 9h)"]


def test_check_defaults_to_now() -> None:
    code, out = run("check", "--calendar", str(EXAMPLE), "--change", "config")
    assert code == 0 and out.startswith("allowed: config change to prod")

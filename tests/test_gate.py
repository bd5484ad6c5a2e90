"""Deploy admission's pure parts: the change kind the calendar judges, and the freeze check before traffic moves."""

from __future__ import annotations

import datetime as dt

import pytest

from releasegate.governance.calendar import load_calendar_text
from releasegate.governance.gate import Admission, before_increase, change_kind

CALENDAR = """\
timezone: UTC
freezes:
  - {name: launch week, from: 2026-03-02, to: 2026-03-06, mode: hotfix-only}
  - {name: year end, from: 2026-12-20, to: 2026-12-31, mode: full}
"""


@pytest.mark.parametrize(("old", "new", "hotfix", "kind"), [
    ("1.4.2", "2.0.0", False, "major"), ("1.4.2", "1.5.0", False, "minor"), ("1.4.2", "1.4.3", False, "patch"),
    ("1.4.2", "1.5.0", True, "hotfix"), (None, "1.0.0", False, "major"), ("build-7", "build-8", False, "major")])
def test_change_kind_comes_from_the_semver_difference_or_hotfix(old, new, hotfix, kind):
    assert change_kind(old, new, hotfix)[0] == kind


def test_non_semver_versions_are_judged_as_major_and_say_so():
    assert "not a semver change" in (change_kind("build-7", "build-8", False)[1] or "")


def _at(day: str) -> float:
    return dt.datetime.fromisoformat(day + "T12:00:00+00:00").timestamp()


def test_a_freeze_holds_traffic_increases_by_change_kind_and_break_glass_is_not_held():
    calendar = load_calendar_text(CALENDAR)
    minor = Admission(change="minor", env="prod", actor="x", emergency=False, calendar=calendar)
    patch = Admission(change="patch", env="prod", actor="x", emergency=False, calendar=calendar)
    assert before_increase(minor, _at("2026-03-01")) is None  # before the freeze
    assert "launch week" in (before_increase(minor, _at("2026-03-03")) or "")
    assert before_increase(patch, _at("2026-03-03")) is None  # hotfix-only lets a patch move on
    assert "year end" in (before_increase(patch, _at("2026-12-24")) or "")
    emergency = Admission(change="minor", env="prod", actor="erin", emergency=True, calendar=calendar)
    assert before_increase(emergency, _at("2026-12-24")) is None

"""Durations are where a misread runbook hurts most: a pause in the wrong unit is 60x too short or long."""

from __future__ import annotations

import pytest

from releasegate.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("5s", 5.0),
        ("10m", 600.0),
        ("24h", 86400.0),
        ("1h30m", 5400.0),
        ("2.5s", 2.5),
        ("1d", 86400.0),
        ("0", 0.0),
        ("0s", 0.0),
        (0, 0.0),
        (0.0, 0.0),
        (" 10M ", 600.0),
    ],
)
def test_parses_durations_with_units(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "10 minutes", "m5", "5x", "1h 30m", "-5s", "5s5", "1:30", "ten m"])
def test_refuses_unreadable_durations_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError, match=r"cannot read duration .*250ms, 5s, 10m, 24h or 1h30m"):
        parse_duration(text)


@pytest.mark.parametrize("number", [10, 2.5, 600])
def test_refuses_bare_numbers_with_a_hint(number: float) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(number)
    assert str(info.value) == (f"write durations with a unit, e.g. '{number}s' or '{number}m' "
                               f"(got bare number {number})")


@pytest.mark.parametrize("value", [True, False, None, [], {}])
def test_refuses_non_durations(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.25, "250ms"), (5, "5s"), (600, "10m"), (5400, "1h30m"), (86400, "24h"), (0, "0s"), (2.5, "2.5s")],
)
def test_formats_the_shortest_spelling_that_parses_back(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)

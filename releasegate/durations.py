"""Durations as people write them in runbooks: ``250ms``, ``5s``, ``10m``, ``24h``, ``1h30m``.

Bare numbers are refused (except 0): a runbook that says ``pause: 10`` could mean seconds or minutes, and guessing
wrong either shortens a canary pause sixty-fold or stalls it for hours.
"""

from __future__ import annotations

import re

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(text: object) -> float:
    """Seconds in ``text``; raises ValueError with the accepted forms when it cannot be read."""
    if isinstance(text, bool):
        raise ValueError(f"expected a duration such as 250ms, 5s, 10m or 24h, got {text!r}")
    if isinstance(text, int | float) and text == 0:
        return 0.0
    if not isinstance(text, str):
        raise ValueError(f"write durations with a unit, e.g. '{text}s' or '{text}m' (got bare number {text!r})")
    s = text.strip().lower()
    if s in {"0", "0s"}:
        return 0.0
    pos = 0
    total = 0.0
    for match in _PART.finditer(s):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(s) or not s:
        raise ValueError(f"cannot read duration {text!r}: use a number with a unit, e.g. 250ms, 5s, 10m, 24h or 1h30m")
    return total


def format_duration(seconds: float) -> str:
    """The shortest exact spelling that ``parse_duration`` reads back, for plans and status output."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    whole = round(seconds)
    if abs(seconds - whole) > 1e-9:
        return f"{seconds:g}s"
    parts = []
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):  # hours, not days: runbooks say "24h"
        if whole >= size:
            n, whole = divmod(whole, size)
            parts.append(f"{n}{unit}")
    return "".join(parts)


def duration_text(seconds: float) -> str:
    """Like ``format_duration`` but exact: ``parse_duration(duration_text(x)) == x`` for every x >= 0.

    Used when a spec is stored as JSON, so the stored copy reads like the file and validates again on resume.
    """
    text = format_duration(seconds)
    try:
        if abs(parse_duration(text) - seconds) <= 1e-9:
            return text
    except ValueError:
        pass
    return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"

"""``releasegate dora``: the four DORA delivery metrics per service and environment, from the store's history.

The same numbers come from the state dir (this module reads it, never writes) or, with ``RELEASEGATE_SERVER``
set, from the server's ``GET /api/v1/dora``: the JSON is ``releasegate.dora.report``'s in both cases, and one
renderer prints it, so the two cannot drift apart. Definitions and limits: docs/dora.md.
"""

from __future__ import annotations

import json
import math
import time
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from releasegate.commands.approvals import StateDir, reported, state_dir_of
from releasegate.commands.audit import parse_since
from releasegate.durations import format_duration, parse_duration
from releasegate.errors import UserError

out = Console(highlight=False, soft_wrap=True)

Since = Annotated[str, typer.Option("--since", metavar="DURATION|ISO8601",
                                    help="The period: back from now (90d, 12h) or from a time (2026-09-01).")]
Window = Annotated[str, typer.Option("--window", metavar="DURATION",
                                     help="A rollback or hotfix this long after a promotion makes it a failed "
                                          "change.")]
ServiceOpt = Annotated[str | None, typer.Option("--service", metavar="SERVICE", show_default=False,
                                                help="Only this service.")]
EnvOpt = Annotated[str | None, typer.Option("--env", metavar="ENV", show_default=False,
                                            help="Only this environment (prod, staging ...).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the numbers as JSON (seconds and ratios).")]


def period(since: str, window: str, now: float) -> tuple[float, float]:
    """(since as Unix time, window in seconds), or a one-line error naming the option and the forms it takes."""
    start = parse_since(since, now)
    if not math.isfinite(start):
        raise UserError(f"--since {since}: too far back; give a duration such as 90d or a date")
    if start > now:
        raise UserError(f"--since {since}: that is in the future; give a duration back from now (90d) or a past "
                        "time")
    try:
        seconds = parse_duration(window)
    except ValueError as exc:
        raise UserError(f"--window {window}: {exc}") from None
    if seconds <= 0 or not math.isfinite(seconds):
        raise UserError(f"--window {window}: give a positive duration, e.g. 24h")
    return start, seconds


def dora(since: Since = "90d", service: ServiceOpt = None, env: EnvOpt = None, window: Window = "24h",
         as_json: AsJson = False, state_dir: StateDir = None) -> None:
    """DORA metrics per service and environment: deployment frequency, lead time, change failure rate, time to
    restore (docs/dora.md)."""
    from releasegate.dora import read_deploys, report
    from releasegate.store.db import has_store

    with reported():
        now = time.time()
        start, seconds = period(since, window, now)
        where = state_dir_of(state_dir)
        if not has_store(where):
            raise UserError(f"dora: no state in {where}; pass --state-dir DIR (or set RELEASEGATE_HOME) where "
                            "releasegate ran")
        deploys = read_deploys(where, start, service, env)
        show(report(deploys, start, now, seconds), as_json)


def dora_client(since: Since = "90d", service: ServiceOpt = None, env: EnvOpt = None, window: Window = "24h",
                as_json: AsJson = False) -> None:
    """DORA metrics per service and environment, from the server (docs/dora.md)."""
    from releasegate.client import call

    with reported():
        period(since, window, time.time())  # refused here, in the same words, before asking the server
        params = {"since": since, "window": window} | {k: v for k, v in (("service", service), ("env", env)) if v}
        show(call("GET", "/api/v1/dora", params=params), as_json)


def show(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    days = (data["until"] - data["since"]) / 86400
    if not data["groups"]:
        out.print(f"no rollout finished in the last {days:.1f} days: nothing to measure (see `releasegate "
                  "history`)")
        return
    table = Table(title=f"DORA metrics, last {days:.1f} days (change failure window "
                        f"{format_duration(data['window_seconds'])})", box=box.SIMPLE_HEAD, pad_edge=False)
    for name in ("service", "env", "deploys", "per day", "failures", "lead time\np50 / p90",
                 "restore\np50 / p90"):
        figure = name not in ("service", "env")
        table.add_column(name, justify="right" if figure else "left", no_wrap=figure)
    rows = [*data["groups"], data["total"]] if len(data["groups"]) > 1 else data["groups"]
    for i, g in enumerate(rows):
        table.add_row(*_row(g), end_section=i == len(rows) - 2 and len(rows) > 1)
    out.print(table)
    for line in _notes(data):
        out.print(line, markup=False)
    out.print("under each figure its DORA band (docs/dora.md); p50 = median; '-' = nothing to measure", markup=False)


def _row(g: dict[str, Any]) -> list[str]:
    """Each figure with its band on the line below it, so a row fits 80 columns."""
    total = g["service"] == "*"
    rate = g["change_failure_rate"]
    return ["total" if total else g["service"], "" if total else g["env"], str(g["deployments"]),
            f"{g['deployments_per_day']:.2f}" + _band(g["deployment_frequency_band"]),
            "-" if rate is None else f"{g['change_failures']} ({rate:.0%})" + _band(g["change_failure_band"]),
            _spread(g["lead_time"]), _spread(g["time_to_restore"])]


def _notes(data: dict[str, Any]) -> list[str]:
    """What the table leaves out, each with what to do about it."""
    notes = []
    for g in data["groups"]:
        if g["stopped_before_traffic"]:
            notes.append(f"{g['service']} {g['env']}: {g['stopped_before_traffic']} rollout(s) stopped before any "
                         "traffic, not counted as deployments")
        if g["time_to_restore"]["not_restored"]:
            notes.append(f"{g['service']} {g['env']}: {g['time_to_restore']['not_restored']} failed change(s) not "
                         "restored yet (no rollback or later promotion)")
    unknown = data["total"]["lead_time"]["unknown"]
    if unknown:
        notes.append(f"lead time unknown for {unknown} promotion(s): no commit time recorded (`release cut --as "
                     "USER` records it; `release new --commit SHA --commit-time TIME`)")
    return notes


def _spread(s: dict[str, Any]) -> str:
    if not s["count"]:
        return "-"
    return f"{_dur(s['median_seconds'])} / {_dur(s['p90_seconds'])}" + _band(s["band"])


def _dur(seconds: float) -> str:
    """Whole minutes past an hour, whole seconds below: a lead time of 26h3m4s reads better as 26h3m."""
    return format_duration(round(seconds / 60) * 60 if seconds >= 3600 else round(seconds))


def _band(band: str | None) -> str:
    return f"\n{band}" if band else ""


__all__ = ["dora", "dora_client", "period", "show"]


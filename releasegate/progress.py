"""What people see in the terminal: live rollout progress, status, history, plans and router state."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from releasegate.durations import format_duration
from releasegate.engine.state import Decision, RolloutState

if TYPE_CHECKING:
    from releasegate.planning import Plan

_QUIET = {"analysis"}


def _clock(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%H:%M:%S")


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _took(seconds: float) -> str:
    return f"{seconds:.1f}s" if seconds < 60 else format_duration(round(seconds))


def format_values(values: Any) -> str:
    if not isinstance(values, dict):
        return ""
    parts = []
    for key, value in values.items():
        name = str(key).split(":", 1)[-1]
        if value is None:
            parts.append(f"{name}=no data")
        elif name.startswith("latency"):
            parts.append(f"{name}={format_duration(float(value))}")
        elif name == "error_rate":
            parts.append(f"{name}={float(value) * 100:.1f}%")
        else:
            parts.append(f"{name}={float(value):.4g}")
    return " ".join(parts)


class ProgressPrinter:
    """Live progress for deploy/resume: one line per decision; routine analysis ticks at most every 5 s."""

    def __init__(self, console: Console, tick_every: float = 5.0) -> None:
        self.console = console
        self.tick_every = tick_every
        self._last_tick = 0.0

    def __call__(self, st: RolloutState, decisions: list[Decision]) -> None:
        for d in decisions:
            if d.kind in _QUIET:
                if st.updated_at - self._last_tick < self.tick_every:
                    continue
                self._last_tick = st.updated_at
            values = format_values(d.data.get("values"))
            style = {"rollback": "bold red", "abort": "bold red", "promoted": "bold green", "incident": "bold red",
                     "rolled_back": "bold red", "aborted": "bold red", "waiting": "yellow",
                     "paused": "bold yellow", "errors_persist": "red"}.get(d.kind, "")
            line = f"{_clock(st.updated_at)}  {st.service} {st.version}  {st.weight:>3}%  {escape(d.message)}"
            if values:
                line += f"  [dim]{values}[/dim]"
            self.console.print(f"[{style}]{line}[/{style}]" if style else line)

    def summary(self, st: RolloutState) -> None:
        took = _took((st.finished_at or st.updated_at) - st.created_at)
        colour = "green" if st.status == "promoted" else "red"
        self.console.print(f"[bold {colour}]{st.service} {st.version}: {st.status.replace('_', ' ')}[/] "
                           f"after {took}: {escape(st.reason or '')}")


def render_plan(console: Console, plan: Plan) -> None:
    kind = plan.spec.strategy.kind if plan.previous else "first deploy"
    head = f"{plan.spec.service} {plan.version} ({kind}" + (f", replacing {plan.previous})" if plan.previous else ")")
    table = Table(title=head, title_justify="left", show_lines=False)
    table.add_column("#", justify="right")
    table.add_column("at", justify="right")
    table.add_column("step")
    for n, (at, what) in enumerate(plan.rows, 1):
        table.add_row(str(n), at, escape(what))
    console.print(table)
    for note in plan.notes:
        console.print(f"- {escape(note)}")
    console.print("[dim]dry run: nothing was started or changed[/dim]")


def _state(item: dict[str, Any]) -> str:
    """The service's state cell: a version is shown as serving only while one of its instances runs."""
    state, last = item.get("state", "running"), item.get("last_version")
    if state == "running":
        count = (item.get("instances") or {}).get(item["current"], 0)
        return f"running {item['current']} ({count} instance{'s' if count != 1 else ''})"
    if state == "down":
        return "[bold]down[/]" + (f" (was {last})" if last else "")
    if state == "deploying":
        return "deploying (first version)"
    return "[bold red]not running[/]" + (f" ({last}: no instance runs)" if last else "")


def render_status(console: Console, data: list[dict[str, Any]]) -> None:
    if not data:
        console.print("no services deployed yet (`releasegate deploy SPEC --version V`)")
        return
    table = Table()
    for col in ("service", "state", "rollout", "weight", "waiting / reason", "previous kept until"):
        table.add_column(col)
    for item in data:
        r = item.get("rollout")
        prev = f"{item['previous']} until {_when(item['previous_retire_at'])}" if item.get("previous") else "-"
        if r:
            ctl = "" if r["controller_alive"] else " (no controller: `releasegate resume`)"
            phase = r["phase"] + (" (paused)" if r.get("paused") else "")
            table.add_row(item["service"], _state(item), f"{r['version']} {r['strategy']}, {phase}{ctl}",
                          f"{r['weight']}%", escape(r["waiting"] or format_values(r.get("latest")) or "-"), prev)
        else:
            table.add_row(item["service"], _state(item), "-", "-", "-", prev)
    console.print(table)


def render_history(console: Console, data: list[dict[str, Any]]) -> None:
    for r in data:
        took = _took(r["finished_at"] - r["started_at"]) if r["finished_at"] else "-"
        console.print(f"[bold]{r['id']}[/bold] {r['version']} ({r['strategy']}"
                      + (f" from {r['previous']}" if r["previous"] else "") + f"): {r['status']} "
                      f"started {_when(r['started_at'])}, took {took}"
                      + (f": {escape(r['reason'])}" if r["reason"] else ""))
        if r.get("waiting"):  # still running: what it waits for, or why it is paused and what to do
            console.print(f"  [yellow]{escape(r['waiting'])}[/yellow]")
        for e in r["events"]:
            if e["kind"] in _QUIET:
                continue
            values = format_values(e["data"].get("values"))
            console.print(f"  {_clock(e['at'])}  {e['kind']:<15} {escape(e['message'])}" + (f"  [dim]{values}[/dim]"
                                                                                    if values else ""))

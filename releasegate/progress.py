"""What people see in the terminal: live rollout progress, status, history, plans and router state."""

from __future__ import annotations

import datetime as dt
import textwrap
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from releasegate.durations import format_duration
from releasegate.engine.state import Decision, RolloutState
from releasegate.spec.analysis import show_value
from releasegate.spec.models import Rule, Spec

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
    """``{"0:error_rate": 0.3021, "1:latency_p95": 1.45467}`` -> ``error_rate=30.2% latency_p95=1.45s``: each
    value in its metric's unit, as rules are written (the JSON outputs keep the raw numbers)."""
    if not isinstance(values, dict):
        return ""
    parts = []
    for key, value in values.items():
        name = str(key).split(":", 1)[-1]
        if value is None:
            parts.append(f"{name}=no data")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            parts.append(f"{name}={show_value(name, float(value))}")
        else:
            parts.append(f"{name}={value}")
    return " ".join(parts)


class ProgressPrinter:
    """Live progress for deploy/resume: one line per decision. Routine analysis ticks at most every ``tick_every``
    seconds; while the rollout is paused for an operator (which can last hours), an analysis is printed only when
    something changes (a value crossing its rule's bound, data appearing or vanishing, the reason changing) or once
    every ``paused_every`` seconds, so the terminal still shows that analysis goes on."""

    def __init__(self, console: Console, tick_every: float = 5.0, paused_every: float = 60.0) -> None:
        self.console = console
        self.tick_every = tick_every
        self.paused_every = paused_every
        self.rules: list[Rule] = []
        self._last_tick = 0.0
        self._paused_seen: tuple[Any, ...] | None = None
        self._paused_shown = float("-inf")
        self._said: set[str] = set()

    def use_spec(self, spec: Spec) -> None:
        """The rollout's spec, so a paused rollout's values can be judged against their rules' bounds."""
        self.rules = list(spec.analysis.rules)

    def _sides(self, values: Any) -> tuple[tuple[str, str], ...]:
        """Each value's side of its rule's bound: ``over``, ``within`` or ``no data`` (``data`` without the rule)."""
        if not isinstance(values, dict):
            return ()
        out = []
        for key, value in sorted(values.items()):
            index, _, _ = str(key).partition(":")
            rule = self.rules[int(index)] if index.isdigit() and int(index) < len(self.rules) else None
            if value is None:
                side = "no data"
            elif rule is None:
                side = "data"
            else:
                side = "over" if rule.broken_by(float(value)) else "within"
            out.append((str(key), side))
        return tuple(out)

    def _shown(self, st: RolloutState, d: Decision) -> bool:
        if d.kind not in _QUIET:
            return True
        if st.paused is not None:
            seen = (st.paused.kind, st.paused.reason, st.waiting, st.weight, self._sides(d.data.get("values")))
            if seen == self._paused_seen and st.updated_at - self._paused_shown < self.paused_every:
                return False
            self._paused_seen, self._paused_shown = seen, st.updated_at
            return True
        self._paused_seen = None
        if st.updated_at - self._last_tick < self.tick_every:
            return False
        self._last_tick = st.updated_at
        return True

    def __call__(self, st: RolloutState, decisions: list[Decision]) -> None:
        for d in decisions:
            if not self._shown(st, d):
                continue
            values = format_values(d.data.get("values"))
            style = {"rollback": "bold red", "abort": "bold red", "promoted": "bold green", "incident": "bold red",
                     "rolled_back": "bold red", "aborted": "bold red", "waiting": "yellow", "retired": "yellow",
                     "paused": "bold yellow", "errors_persist": "red"}.get(d.kind, "")
            line = f"{_clock(st.updated_at)}  {st.service} {st.version}  {st.weight:>3}%  {self._say(d)}"
            if values:
                line += f"  [dim]{values}[/dim]"
            self.console.print(f"[{style}]{line}[/{style}]" if style else line)

    def note(self, line: str) -> None:
        """A line before the rollout exists (deploy's preflight pulling an image), in the decisions' layout."""
        self.console.print(f"{_clock(dt.datetime.now().timestamp())}  {escape(line)}")

    def _say(self, d: Decision) -> str:
        """A decision's message, once: the end of a rollout repeats the reason of the decision that ended it,
        which can be long (a failed migration's error and what was restored), so the repeat points above."""
        if d.message in self._said and "\n" in d.message:
            return f"{d.kind.replace('_', ' ')} (the reason is above)"
        self._said.add(d.message)
        return escape(d.message).replace("\n", "\n" + " " * 10)

    def summary(self, st: RolloutState) -> None:
        took = _took((st.finished_at or st.updated_at) - st.created_at)
        colour = "green" if st.status == "promoted" else "red"
        reason = st.reason or ""
        if reason in self._said and "\n" in reason:
            reason = reason.split("\n", 1)[0] + " (details above)"
        self.console.print(f"[bold {colour}]{st.service} {st.version}: {st.status.replace('_', ' ')}[/] "
                           f"after {took}: {escape(reason)}")


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


_STATUS_COLUMNS = ("service", "state", "rollout", "weight", "previous kept until")


def _status_row(item: dict[str, Any]) -> tuple[list[Text], list[str]]:
    """The service's cells (short) and the lines that go below its row (long: what it waits for, why it is
    paused or going back, the latest values, a missing controller)."""
    svc = item["service"]
    prev = f"{item['previous']} until {_when(item['previous_retire_at'])}" if item.get("previous") else "-"
    r = item.get("rollout")
    unknown = [f"{why} (its instances are counted as last seen)" for why in item.get("unreachable_hosts") or []]
    if not r:
        return [Text(svc), Text.from_markup(_state(item)), Text("-"), Text("-"), Text(prev)], unknown
    phase = r["phase"] + (" (paused)" if r.get("paused") else "")
    below = unknown
    if r.get("reason"):
        below.append(f"going back: {r['reason']}")
    if r.get("waiting"):
        below.append(str(r["waiting"]))
    elif values := format_values(r.get("latest")):
        below.append(f"latest: {values}")
    if not r["controller_alive"]:
        below.append(f"no controller drives it: `releasegate resume {svc}` continues it")
    cells = [Text(svc), Text.from_markup(_state(item)), Text(f"{r['version']} {r['strategy']}, {phase}"),
             Text(f"{r['weight']}%"), Text(prev)]
    return cells, below


def render_status(console: Console, data: list[dict[str, Any]]) -> None:
    """One row per service with short cells, and below it, indented and wrapped at the terminal's width, what
    the rollout waits for or why it is paused: a table readable at 80 columns (the kept previous version moves
    below the row too when the row would not fit)."""
    rows = [_status_row(item) for item in data]
    columns = list(_STATUS_COLUMNS)
    widths = [max([len(c)] + [cells[i].cell_len for cells, _ in rows]) for i, c in enumerate(columns)]
    if sum(widths) + 2 * (len(widths) - 1) > console.width:
        columns.pop()
        widths.pop()
        rows = [(cells[:4], ([f"previous {cells[4].plain} (kept for rollback)"] if cells[4].plain != "-" else [])
                 + below) for cells, below in rows]
    console.print(_line([Text(c, style="bold") for c in columns], widths), soft_wrap=True)
    for item, (cells, below) in zip(data, rows, strict=True):
        console.print(_line(cells[: len(columns)], widths), soft_wrap=True)
        r = item.get("rollout") or {}
        table = judge_lines(r["judge"], console.width) if r.get("judge") else []
        if table:
            below.append(judge_header(r["judge"], str(r["version"])))
        for text in below:
            wrapped = textwrap.wrap(text, max(20, console.width - 2), break_long_words=False, break_on_hyphens=False)
            console.print(Text("\n".join(f"  {part}" for part in wrapped)), soft_wrap=True)
        for line in table:
            console.print(Text(line), soft_wrap=True)


def judge_header(j: dict[str, Any], version: str) -> str:
    """The judge's word so far on a judged step (``rollout.judge`` of status --json, docs/cli.md)."""
    said = f"judge: {version} against {j['reference']} (alpha {j['alpha']:g}): "
    if j["outcome"] == "pass":
        return said + "passing, every interval below its margin"
    if j["outcome"] == "regression":
        return said + "a regression"
    more = j.get("more_canary_requests")
    return said + "not yet passing" + (f"; about {more:,} more canary requests needed (an estimate)" if more else "")


def judge_lines(j: dict[str, Any], width: int) -> list[str]:
    """One row per judged metric, in its own units: the estimate and its anytime-valid interval, the margin, the
    evidence of regression against its threshold, the verdict. Aligned when that fits ``width``; else one wrapped
    line per metric (never wider than the terminal)."""
    rows = judge_rows(j)
    head = JUDGE_COLUMNS
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    lines = ["    " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [head, *rows]]
    if max(len(line) for line in lines) <= width:
        return lines
    out = []
    for name, interval, margin, evidence, verdict in rows:
        text = f"{name}: {interval}, margin {margin}, evidence {evidence}, {verdict}"
        out += textwrap.wrap(text, max(20, width - 4), initial_indent="    ", subsequent_indent="      ",
                             break_long_words=False, break_on_hyphens=False)
    return out


JUDGE_COLUMNS = ("metric", "estimate [interval]", "margin", "evidence", "verdict")


def judge_rows(j: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """The judge's figures per metric as a person reads them (``JUDGE_COLUMNS``; the dashboard shows the same)."""
    return [(_judged_name(m), _judged_interval(m), _judged_margin(m), f"{m['evalue']:.2g}/{m['threshold']:g}",
             _judged_verdict(m)) for m in j["metrics"]]


def _judged_name(m: dict[str, Any]) -> str:
    return f"latency>{1 + m['max_increase']:g}x" if m["unit"] == "share" else str(m["metric"])


def _judged_number(m: dict[str, Any], value: float) -> str:
    """Percentage points or percent, signed (+ is worse), with fewer decimals as they grow: the table stays narrow."""
    if m["unit"] == "share":
        return f"{value:.2f}"
    x = value * 100
    said = f"{x:+.2f}" if abs(x) < 1 else f"{x:+.1f}" if abs(x) < 10 else f"{x:+.0f}"
    return said + ("%" if m["unit"] == "relative" else "")


def _count(n: int) -> str:
    return f"{n:,}" if n < 10_000 else f"{n / 1000:.0f}k" if n < 1_000_000 else f"{n / 1e6:.1f}M"


def _judged_interval(m: dict[str, Any]) -> str:
    if m["estimate"] is None:
        return "-"
    at = _judged_number(m, m["estimate"])
    return f"{at} [{_judged_number(m, m['lo'])}, {_judged_number(m, m['hi'])}]" + ("pp" if m["unit"] == "points"
                                                                                   else "")


def _judged_margin(m: dict[str, Any]) -> str:
    return {"points": f"{m['margin'] * 100:g}pp", "relative": f"{m['margin'] * 100:g}%"}.get(m["unit"],
                                                                                           f"{m['margin']:g}")


def _judged_verdict(m: dict[str, Any]) -> str:
    if m["verdict"] != "not_ruled_out":
        return str(m["verdict"])
    if m["estimate"] is None:
        return "no data yet"
    if m.get("more_intervals"):
        return f"needs ~{_count(m['more_intervals'])} intervals"
    return f"needs ~{_count(m['more_canary_requests'])} more" if m.get("more_canary_requests") else "not ruled out"


def _line(cells: list[Text], widths: list[int]) -> Text:
    line = Text()
    for i, (cell, width) in enumerate(zip(cells, widths, strict=True)):
        if i:
            line.append("  ")
        line.append_text(cell)
        if i < len(cells) - 1:
            line.append(" " * (width - cell.cell_len))
    return line


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

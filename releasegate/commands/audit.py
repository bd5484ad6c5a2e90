"""``releasegate audit verify`` and ``releasegate audit export``: the audit log for people who check it.

``verify`` is what an auditor runs first: exit 0 with the entry count when the chain holds, exit 2 naming the
first entry that was edited, deleted or moved. ``export`` writes JSON lines (every field, the hashes included, so
the chain can be checked again outside releasegate).
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from releasegate.commands.approvals import StateDir, reported, state_dir_of
from releasegate.durations import parse_duration
from releasegate.errors import UserError
from releasegate.store.audit import AuditLog

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

audit_app = typer.Typer(help="Check and export the tamper-evident audit log.", no_args_is_help=True)


def _log(state_dir: Path | None) -> AuditLog:
    where = state_dir_of(state_dir)
    if not (where / "releasegate.db").is_file():
        raise UserError(f"audit log: no state in {where}; pass --state-dir DIR (or set RELEASEGATE_HOME) where "
                        "releasegate ran")
    return AuditLog(where)


def parse_since(text: str, now: float) -> float:
    """A duration back from ``now`` (``24h``, ``7d``) or an ISO 8601 time (UTC when it has no offset)."""
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise UserError(f"--since {text}: write an ISO 8601 time (2025-11-22 or 2025-11-22T09:00:00+09:00) or a "
                        "duration back from now (24h, 7d)") from None
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()


@audit_app.command()
def verify(state_dir: StateDir = None) -> None:
    """Check the hash chain: exit 0 when intact, exit 2 naming the first altered, deleted or moved entry."""
    with reported():
        with _log(state_dir) as log:
            result = log.verify()
        if not result.ok:
            raise UserError(f"audit log: {result.reason}")
        out.print(f"audit log ok: {result.reason}", markup=False)


@audit_app.command()
def export(since: Annotated[str | None, typer.Option("--since", metavar="ISO8601|DURATION", show_default=False,
                                                     help="Only entries from this time on, e.g. 2025-11-01 or "
                                                          "7d.")] = None,
           output: Annotated[Path | None, typer.Option("--output", "-o", metavar="FILE", show_default=False,
                                                       help="Write here instead of standard output.")] = None,
           state_dir: StateDir = None) -> None:
    """Write the audit log as JSON lines, one entry per line, for auditors."""
    with reported():
        start = parse_since(since, time.time()) if since is not None else None
        with _log(state_dir) as log:
            lines = [entry.to_json() + "\n" for entry in log.entries(start)]
        if output is None:
            typer.echo("".join(lines), nl=False)
            return
        try:
            output.write_text("".join(lines), encoding="utf-8")
        except OSError as exc:
            raise UserError(f"--output {output}: cannot write it ({exc.strerror or exc})") from None
        err.print(f"wrote {len(lines)} audit entries to {output}", markup=False)


__all__ = ["audit_app", "parse_since"]

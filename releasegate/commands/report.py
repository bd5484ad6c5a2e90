"""``releasegate report ROLLOUT``: a rollout's deployment report, and for a failed one its post-mortem draft.

The same command runs on the state dir or, with ``RELEASEGATE_SERVER`` set, asks the server's
``GET /api/v1/rollouts/{id}/report`` (``mount_client``): one text either way, rendered by releasegate.reports.
"""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Annotated

import typer

from releasegate.commands import reported
from releasegate.commands.approvals import StateDir, state_dir_of
from releasegate.errors import UserError


class ReportFormat(enum.StrEnum):
    md = "md"
    html = "html"
    json = "json"


Rollout = Annotated[str, typer.Argument(metavar="ROLLOUT", show_default=False,
                                        help="A rollout id (`releasegate history SERVICE` lists them), or a service "
                                             "name for its latest rollout.")]
FormatOpt = Annotated[ReportFormat, typer.Option("--format", "-f", help="Markdown, HTML (a page) or JSON (the "
                                                                        "report's data, docs/reports.md).")]
OutputOpt = Annotated[Path | None, typer.Option("--output", "-o", metavar="FILE", show_default=False,
                                                help="Write the report to FILE instead of standard output.")]
PostmortemOpt = Annotated[bool, typer.Option("--postmortem", show_default=False,
                                             help="Only the post-mortem draft (rolled back, aborted or failed "
                                                  "rollouts; the full report includes it anyway).")]


def emit(text: str, output: Path | None, what: str) -> None:
    """To standard output, or to ``output`` with a line on stderr saying so; a file that cannot be written is a
    one-line error naming it."""
    if output is None:
        typer.echo(text, nl=not text.endswith("\n"))
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"--output {output}: cannot write it ({exc.strerror or exc}); give a writable path") from None
    typer.echo(f"wrote {what} to {output}", err=True)


def report(rollout: Rollout, fmt: FormatOpt = ReportFormat.md, output: OutputOpt = None,
           postmortem: PostmortemOpt = False, state_dir: StateDir = None) -> None:
    """A rollout's deployment report: timeline, traffic per version, approvals; a post-mortem draft if it failed."""
    from releasegate.reports.build import no_postmortem, report_for
    from releasegate.reports.render import render

    with reported():
        found = report_for(state_dir_of(state_dir), rollout)
        if postmortem and found.postmortem is None:
            raise no_postmortem(found)
        emit(render(found, fmt.value, postmortem_only=postmortem), output,
             ("the post-mortem draft of " if postmortem else "the report of ") + found.id)


def client_report(rollout: Rollout, fmt: FormatOpt = ReportFormat.md, output: OutputOpt = None,
                  postmortem: PostmortemOpt = False) -> None:
    """A rollout's deployment report (from the server): timeline, traffic per version, approvals, post-mortem."""
    from urllib.parse import quote

    from releasegate.client import call

    answer = call("GET", f"/api/v1/rollouts/{quote(rollout, safe='')}/report",
                  params={"format": fmt.value, "postmortem": str(postmortem).lower()})
    text = answer if isinstance(answer, str) else json.dumps(answer, indent=2) + "\n"
    emit(text, output, ("the post-mortem draft of " if postmortem else "the report of ") + rollout)


def mount_client(app: typer.Typer) -> None:
    app.command("report")(client_report)

"""``schema``, ``alerts`` and ``grafana``: what releasegate hands to other tools (an editor's JSON Schema,
Prometheus rules, a Grafana dashboard)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

SpecFile = Annotated[Path, typer.Argument(help="Release spec (YAML).", show_default=False, metavar="SPEC")]


def schema() -> None:
    """Print the spec's JSON Schema (for editor validation and completion)."""
    from releasegate.spec import json_schema

    Console(highlight=False, soft_wrap=True).print_json(json.dumps(json_schema()))


def alerts(spec: SpecFile, version: Annotated[str | None, typer.Option(
        "--version", "-v", metavar="VERSION", help="Only this version (default: one alert per version).")]
        = None) -> None:
    """Print a Prometheus rule group (valid for promtool) from the spec's analysis rules."""
    from releasegate.alerts import render_alert_rules
    from releasegate.spec import load_spec

    typer.echo(render_alert_rules(load_spec(spec), version=version), nl=False)


_UID = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
"""A Grafana data source UID: letters, digits, '-' and '_', at most 40 (Grafana's own rule for UIDs)."""


def grafana(spec: SpecFile,
            output: Annotated[Path | None, typer.Option("--output", "-o", metavar="FILE", help="Write the JSON "
                                                        "here (default: standard output).")] = None,
            datasource: Annotated[str | None, typer.Option("--datasource", metavar="UID", help="UID of the "
                                                           "Prometheus data source to preselect (default: "
                                                           "Grafana's default one).")] = None,
            title: Annotated[str | None, typer.Option("--title", metavar="TEXT", help="Dashboard title "
                                                      "(default: Release Health - SERVICE).")] = None) -> None:
    """Print a Grafana dashboard (JSON) for the spec's service, its thresholds the spec's rules."""
    from releasegate.errors import UserError
    from releasegate.grafana import render_dashboard, router_note
    from releasegate.spec import load_spec

    if datasource is not None and not _UID.match(datasource):
        raise UserError(f"--datasource {datasource!r}: a Grafana data source UID is 1 to 40 letters, digits, '-' "
                        "or '_' (Connections > Data sources > your Prometheus: the UID is the last part of its URL)")
    if title is not None and not title.strip():
        raise UserError("--title: give a non-empty title, or leave --title out for 'Release Health - SERVICE'")
    loaded = load_spec(spec)
    text = render_dashboard(loaded, title=title.strip() if title else None, datasource=datasource)
    note = router_note(loaded)
    if note is not None:  # the dashboard is still written: the controller and custom panels work
        Console(stderr=True, highlight=False, soft_wrap=True).print(f"note: {note} (docs/grafana.md)", markup=False)
    if output is None:
        typer.echo(text, nl=False)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"--output {output}: cannot write it ({exc.strerror or exc}); give a writable file "
                        "path") from None
    Console(stderr=True, highlight=False, soft_wrap=True).print(
        f"wrote the dashboard to {output} (import it in Grafana: Dashboards > New > Import)", markup=False)

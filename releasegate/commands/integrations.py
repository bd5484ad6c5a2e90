"""``schema`` and ``alerts``: what releasegate hands to other tools (an editor's JSON Schema, Prometheus rules)."""

from __future__ import annotations

import json
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

"""``releasegate migrations lint DIR``: the backward-compatibility check a pipeline runs before a deploy.

Exit 0 when every migration keeps the previous application version working, 2 (and one ``FILE:LINE: problem —
fix`` line per statement) when one would break it, so ``&&`` does the gating.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from releasegate.commands import reported
from releasegate.errors import EXIT_INVALID
from releasegate.migrations.lint import lint_files, migration_files

migrations_app = typer.Typer(help="Database migrations: check they survive an application rollback.",
                             no_args_is_help=True)


@migrations_app.callback()
def _group() -> None:
    """Database migrations: check they survive an application rollback."""


@migrations_app.command("lint")
def lint_command(directory: Annotated[Path, typer.Argument(metavar="DIR", show_default=False,
                                                           help="Directory of *.sql migration files.")]) -> None:
    """Refuse DROP/RENAME of columns and tables, type changes and NOT NULL columns without a default."""
    with reported():
        files = migration_files(directory)
        issues = lint_files(files)
    for issue in issues:
        typer.echo(issue.format())
    if issues:
        raise typer.Exit(EXIT_INVALID)
    typer.echo(f"{len(files)} migration(s), backward compatible")

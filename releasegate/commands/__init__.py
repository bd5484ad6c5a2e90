"""Typer sub-apps, one per area, mounted by releasegate.cli."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer

from releasegate.errors import UserError


@contextmanager
def reported() -> Iterator[None]:
    """A ``UserError`` as ``releasegate: ...`` lines on stderr and its exit code (2), as ``releasegate.cli``
    does, so each sub-app behaves the same mounted or run on its own (e.g. under typer's CliRunner)."""
    try:
        yield
    except UserError as exc:
        for line in str(exc).splitlines() or [type(exc).__name__]:
            typer.echo(f"releasegate: {line}", err=True)
        raise typer.Exit(exc.exit_code) from None


def listen_address(listen: str) -> tuple[str, int]:
    """``--listen HOST:PORT`` of the server commands, or a one-line error naming the option."""
    from releasegate.router.config import split_host_port

    try:
        return split_host_port(listen)
    except ValueError as exc:
        raise UserError(f"--listen: {exc}") from None

"""What the migration runner needs from a database, whatever its kind: one small interface, one module per kind.

The runner owns the flow (pending, lint, backup, apply each file, restore on failure) so SQLite and PostgreSQL
follow exactly the same rules; a backend only knows how its database records, backs up, restores and applies.
The backend is chosen by the URL scheme of ``migrations.database``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from releasegate.spec import secrets
from releasegate.spec.migrations import POSTGRES_SCHEMES

if TYPE_CHECKING:
    from releasegate.spec.migrations import Migrations

TABLE = "releasegate_migrations"


@dataclass(frozen=True)
class Backup:
    """A verified copy of the database taken just before the migrations.

    ``counts``: every user table's row count in that copy (what a restore must give back); ``objects``: the
    backend's inventory of what existed then, so a restore can remove what the migrations created."""

    path: Path
    counts: dict[str, int]
    objects: frozenset[tuple[str, str]] = field(default_factory=frozenset)


class StatementFailed(Exception):
    """One statement of a migration failed; its file's transaction was rolled back. ``reason`` is the database's
    own one-line message."""

    def __init__(self, statement: str, reason: str) -> None:
        super().__init__(reason)
        self.statement = statement
        self.reason = reason


class Backend(Protocol):
    """One database. Every method opens and closes its own connection: the runner holds nothing between calls."""

    def describe(self) -> str:
        """The database as it may be printed (a PostgreSQL password masked)."""
        ...

    def check(self) -> str:
        """Ready for a deploy (reachable, tools installed)? A one-line detail, or a ``ReleasegateError``."""
        ...

    def recorded(self) -> dict[str, str]:
        """name -> checksum of every applied migration; empty when nothing was ever recorded."""
        ...

    def backup(self, backup_dir: Path) -> Backup:
        """Copy the database into ``backup_dir`` and verify the copy's row counts against the source."""
        ...

    def restore(self, backup: Backup) -> None:
        """Put ``backup`` back into the live database and verify it; ``ProviderError`` saying how to finish by
        hand when that fails."""
        ...

    def apply_file(self, name: str, checksum: str, statements: list[str]) -> None:
        """Run one file's statements and record it, in one transaction; ``StatementFailed`` rolls it all back."""
        ...


def backend_for(migrations: Migrations, spec_dir: Path) -> Backend:
    """The backend for ``migrations.database``; PostgreSQL's module (and psycopg) is imported only when used."""
    database = secrets.resolve(migrations.database, "migrations.database")
    if database.startswith(POSTGRES_SCHEMES):
        from releasegate.migrations.postgres import PostgresBackend

        return PostgresBackend(database, migrations.database)
    from releasegate.migrations.sqlite import SqliteBackend, sqlite_path

    return SqliteBackend(sqlite_path(database, spec_dir))

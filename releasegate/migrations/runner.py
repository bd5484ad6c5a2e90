"""Apply pending migrations safely: lint, back up (verified), apply each file in its own transaction, and on any
failure put the backup back so the database is exactly as it was before the deploy.

The flow is the same for every database; what differs (how to record, back up, restore, apply) lives in one
backend module per kind (``sqlite.py``, ``postgres.py``), chosen by the URL scheme (``backend.backend_for``).

The schema only ever moves forward with the application: an application rollback keeps every applied migration
(that is why the linter insists on backward-compatible ones), and ``applied_names`` tells the rollback record which
migrations remain applied.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from releasegate.errors import ProviderError, UserError
from releasegate.migrations.backend import Backend, StatementFailed, backend_for
from releasegate.migrations.lint import lint_files, migration_files, read_sql, split_statements
from releasegate.migrations.sqlite import sqlite_path
from releasegate.spec.migrations import Migrations

__all__ = ["MigrationFailed", "MigrationResult", "applied_names", "apply_pending", "checksum", "pending",
           "readiness", "sqlite_path"]

_TRANSACTION_WORDS = {"BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE"}


class MigrationFailed(UserError):
    """A migration's statement failed; the database was restored from ``backup``."""

    def __init__(self, message: str, *, file: str, statement: str, backup: Path) -> None:
        super().__init__(message)
        self.file = file
        self.statement = statement
        self.backup = backup


@dataclass(frozen=True)
class MigrationResult:
    """``applied``: the files this run applied, in order; ``backup``: the verified pre-migration copy (None when
    nothing was pending); ``recorded``: every migration that is now applied, i.e. what remains applied after an
    application rollback."""

    applied: list[str] = field(default_factory=list)
    backup: Path | None = None
    recorded: list[str] = field(default_factory=list)


def checksum(file: Path) -> str:
    return hashlib.sha256(file.read_bytes()).hexdigest()


def _statements(file: Path) -> list[str]:
    """The file's statements; an explicit BEGIN/COMMIT is refused, since each file already is one transaction."""
    out = []
    for stmt in split_statements(read_sql(file)):
        first = stmt.clean.split(maxsplit=1)[0].rstrip(";").upper()
        if first in _TRANSACTION_WORDS:
            raise UserError(f"{file}:{stmt.line}: remove {first}: releasegate runs each migration file in its own "
                            "transaction")
        out.append(stmt.text)
    return out


def applied_names(migrations: Migrations, spec_dir: Path) -> list[str]:
    """The migrations recorded as applied (sorted by name); empty when the database has none recorded yet."""
    return sorted(backend_for(migrations, spec_dir).recorded())


def _pending(backend: Backend, files: list[Path]) -> list[Path]:
    done = backend.recorded()
    changed = [f.name for f in files if f.name in done and done[f.name] != checksum(f)]
    if changed:
        raise UserError(f"migration {', '.join(changed)} changed after it was applied (checksum differs); restore "
                        "the applied version and put the change in a new migration file")
    return [f for f in files if f.name not in done]


def pending(migrations: Migrations, spec_dir: Path) -> list[Path]:
    """The files not recorded yet, in order; refuses when a recorded file was changed after it was applied."""
    files = migration_files(spec_dir / migrations.dir)
    return _pending(backend_for(migrations, spec_dir), files)


def readiness(migrations: Migrations, spec_dir: Path) -> tuple[str, list[Path]]:
    """Preflight: the migrations directory exists and the database is usable (for PostgreSQL: reachable, with
    the privileges and the pg_dump a backup needs): a one-line detail and the pending files (for the lint), from
    one look at the database; or a ``ReleasegateError`` naming the fix."""
    files = migration_files(spec_dir / migrations.dir)
    backend = backend_for(migrations, spec_dir)
    detail = f"{len(files)} migration file(s); {backend.check()}"
    return detail, _pending(backend, files)


def _refuse_breaking(todo: list[Path]) -> None:
    issues = lint_files(todo)
    if issues:
        lines = "\n".join(issue.format() for issue in issues)
        raise UserError(f"{lines}\nrefused: {len(issues)} backward-incompatible statement(s); an application "
                        "rollback would break. Split them into expand/contract steps, or register the release "
                        "with --allow-breaking-migration, get it approved by the policy's emergency_role (sre by "
                        "default) and deploy with --allow-breaking-migration")


def apply_pending(migrations: Migrations, spec_dir: Path, allow_breaking: bool = False) -> MigrationResult:
    """Apply every pending migration, or none: a failure restores the verified backup taken just before."""
    backend = backend_for(migrations, spec_dir)
    todo = _pending(backend, migration_files(spec_dir / migrations.dir))
    if not todo:
        return MigrationResult([], None, sorted(backend.recorded()))
    if not allow_breaking:
        _refuse_breaking(todo)
    plans = [(f.name, checksum(f), _statements(f)) for f in todo]
    backup = backend.backup(spec_dir / migrations.backup_dir)
    done: list[str] = []
    for name, digest, statements in plans:
        try:
            backend.apply_file(name, digest, statements)
        except StatementFailed as exc:
            failure = exc
            break
        done.append(name)
    else:
        return MigrationResult(done, backup.path, sorted(backend.recorded()))
    try:
        backend.restore(backup)
    except ProviderError as restore_error:
        raise ProviderError(f"migration {name} failed ({failure.reason}) and {restore_error}") from None
    short = " ".join(failure.statement.split())
    short = short if len(short) <= 200 else short[:197] + "..."
    undone = f"; {', '.join(done)} undone too" if done else ""
    raise MigrationFailed(f"migration {name} failed: {failure.reason} in: {short}\nthe database "
                          f"({backend.describe()}) was restored from {backup.path} (as before the deploy{undone})",
                          file=name, statement=failure.statement, backup=backup.path)

"""Apply pending migrations safely: lint, back up (verified), apply each file in its own transaction, and on any
failure put the backup back so the database is exactly as it was before the deploy.

The schema only ever moves forward with the application: an application rollback keeps every applied migration
(that is why the linter insists on backward-compatible ones), and ``applied_names`` tells the rollback record which
migrations remain applied.
"""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from releasegate.errors import ProviderError, UserError
from releasegate.migrations import sqlite as sq
from releasegate.migrations.lint import lint_files, migration_files, read_sql, split_statements
from releasegate.spec.migrations import Migrations

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


def sqlite_path(database: str, spec_dir: Path) -> Path:
    """``sqlite:///relative/to/spec.db`` or ``sqlite:////absolute/path.db``."""
    if not database.startswith("sqlite:///"):
        raise UserError(f"migrations.database {database!r}: only sqlite:///PATH is supported here so far")
    path = Path(database.removeprefix("sqlite:///"))
    return path if path.is_absolute() else spec_dir / path


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
    """The migrations recorded as applied (sorted by name); empty when the database does not exist yet."""
    db_path = sqlite_path(migrations.database, spec_dir)
    if not db_path.exists():
        return []
    with sq.opened(db_path) as db:
        return sorted(sq.recorded(db))


def pending(migrations: Migrations, spec_dir: Path) -> list[Path]:
    """The files not recorded yet, in order; refuses when a recorded file was changed after it was applied."""
    files = migration_files(spec_dir / migrations.dir)
    db_path = sqlite_path(migrations.database, spec_dir)
    if not db_path.exists():
        return files
    with sq.opened(db_path) as db:
        done = sq.recorded(db)
    changed = [f.name for f in files if f.name in done and done[f.name] != checksum(f)]
    if changed:
        raise UserError(f"migration {', '.join(changed)} changed after it was applied (checksum differs); restore "
                        "the applied version and put the change in a new migration file")
    return [f for f in files if f.name not in done]


def apply_pending(migrations: Migrations, spec_dir: Path, allow_breaking: bool = False) -> MigrationResult:
    """Apply every pending migration, or none: a failure restores the verified backup taken just before."""
    todo = pending(migrations, spec_dir)
    db_path = sqlite_path(migrations.database, spec_dir)
    if not todo:
        return MigrationResult([], None, applied_names(migrations, spec_dir))
    issues = lint_files(todo)
    if issues and not allow_breaking:
        lines = "\n".join(issue.format() for issue in issues)
        raise UserError(f"{lines}\nrefused: {len(issues)} backward-incompatible statement(s); an application "
                        "rollback would break. Split them into expand/contract steps, or pass "
                        "--allow-breaking-migration")
    plans = [(f.name, checksum(f), _statements(f)) for f in todo]
    backup_path = sq.backup(db_path, spec_dir / migrations.backup_dir)
    done: list[str] = []
    with sq.opened(db_path) as db:
        for name, digest, statements in plans:
            try:
                sq.apply_file(db, name, digest, statements)
            except sqlite3.Error as exc:
                statement = (getattr(exc, "__notes__", None) or ["?"])[-1]
                failure = exc
                break
            done.append(name)
        else:
            return MigrationResult(done, backup_path, sorted(sq.recorded(db)))
    try:
        sq.restore(backup_path, db_path)
    except ProviderError as restore_error:
        raise ProviderError(f"migration {name} failed ({failure}) and {restore_error}") from None
    short = " ".join(statement.split())
    short = short if len(short) <= 200 else short[:197] + "..."
    undone = f"; {', '.join(done)} undone too" if done else ""
    raise MigrationFailed(f"migration {name} failed: {failure} in: {short}\nthe database was restored from "
                          f"{backup_path} (as before the deploy{undone})",
                          file=name, statement=statement, backup=backup_path)

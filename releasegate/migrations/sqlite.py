"""SQLite: the seed's ``sqlite3 db '.backup file'`` and row-count check (privatetrade plan §2.3), done with the
online backup API so the application may keep the database open while it is copied (and restored).

Each migration runs in one IMMEDIATE transaction together with its ``releasegate_migrations`` row: SQLite DDL is
transactional, so a file is either wholly applied and recorded or not at all.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path

from releasegate.errors import ProviderError, UserError
from releasegate.migrations.backend import TABLE, Backup, StatementFailed

_SCHEMA = (f"CREATE TABLE IF NOT EXISTS {TABLE} (name TEXT PRIMARY KEY, checksum TEXT NOT NULL, "
           "applied_at TEXT NOT NULL)")


def sqlite_path(database: str, spec_dir: Path) -> Path:
    """``sqlite:///relative/to/spec.db`` or ``sqlite:////absolute/path.db``."""
    if not database.startswith("sqlite:///"):
        raise UserError(f"migrations.database {database!r}: expected sqlite:///PATH")
    path = Path(database.removeprefix("sqlite:///"))
    return path if path.is_absolute() else spec_dir / path


def connect(db_path: Path) -> sqlite3.Connection:
    """Autocommit (transactions are explicit) with a generous busy wait: the application may be writing."""
    if not db_path.parent.is_dir():
        raise UserError(f"{db_path}: its directory does not exist; fix migrations.database")
    try:
        db = sqlite3.connect(db_path, timeout=30, isolation_level=None)
    except sqlite3.Error as exc:
        raise UserError(f"{db_path}: cannot open the database ({exc})") from None
    db.execute("PRAGMA busy_timeout=30000")
    return db


@contextmanager
def opened(db_path: Path) -> Iterator[sqlite3.Connection]:
    with closing(connect(db_path)) as db:
        yield db


def ensure_table(db: sqlite3.Connection) -> None:
    db.execute(_SCHEMA)


def recorded(db: sqlite3.Connection) -> dict[str, str]:
    """name -> checksum of every recorded migration; empty when the table does not exist yet."""
    exists = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,)).fetchone()
    if not exists:
        return {}
    return {name: checksum for name, checksum in db.execute(f"SELECT name, checksum FROM {TABLE} ORDER BY name")}


def row_counts(db: sqlite3.Connection) -> dict[str, int]:
    """Every table's row count: the seed's backup check, for every table rather than one."""
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    return {t: int(db.execute(f'SELECT COUNT(*) FROM "{t.replace(chr(34), chr(34) * 2)}"').fetchone()[0])
            for t in tables}


def _verify(source: sqlite3.Connection, copy: sqlite3.Connection, what: str) -> dict[str, int]:
    """The source's row counts, once the copy was found to have the same."""
    want, got = row_counts(source), row_counts(copy)
    if want != got:
        diff = sorted(t for t in want.keys() | got.keys() if want.get(t) != got.get(t))
        raise ProviderError(f"{what}: row counts differ from the source in {', '.join(diff)}")
    return want


def backup(db_path: Path, backup_dir: Path, now: datetime | None = None) -> Backup:
    """Copy the live database to ``backup_dir/<db>-<timestamp>.db`` and verify every table's row count."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S%fZ")
    try:
        backup_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{backup_dir}: cannot create the backup directory ({exc.strerror})") from None
    target = backup_dir / f"{db_path.stem}-{stamp}.db"
    with opened(db_path) as src, closing(sqlite3.connect(target)) as dst:
        try:
            src.backup(dst)
        except sqlite3.Error as exc:
            raise ProviderError(f"backup of {db_path} to {target} failed: {exc}") from None
        counts = _verify(src, dst, f"backup {target}")
    return Backup(target, counts)


def restore(backup_path: Path, db_path: Path) -> None:
    """Put the backup back into the live database (backup API the other way) and verify it."""
    with closing(sqlite3.connect(backup_path)) as src, opened(db_path) as dst:
        try:
            src.backup(dst)
        except sqlite3.Error as exc:
            raise ProviderError(f"restoring {db_path} from {backup_path} failed: {exc}; restore it by hand "
                                f"(sqlite3 {db_path} '.restore {backup_path}')") from None
        _verify(src, dst, f"restored {db_path}")


def apply_file(db: sqlite3.Connection, name: str, checksum: str, statements: list[str]) -> None:
    """Run one migration's statements and record it, in one transaction (which also creates the bookkeeping
    table, so a restored first deploy leaves no trace of releasegate either). Raises ``StatementFailed`` naming
    the failing statement (the transaction is rolled back)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        ensure_table(db)
        for statement in statements:
            try:
                db.execute(statement)
            except sqlite3.Error as exc:
                raise StatementFailed(statement, str(exc)) from None
        db.execute(f"INSERT INTO {TABLE} (name, checksum, applied_at) VALUES (?, ?, ?)",
                   (name, checksum, datetime.now(UTC).isoformat(timespec="seconds")))
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class SqliteBackend:
    """The ``Backend`` for one SQLite file; a database that does not exist yet has nothing recorded, and is
    created by the backup (an empty copy) and the first migration."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path

    def describe(self) -> str:
        return str(self.db_path)

    def check(self) -> str:
        if not self.db_path.parent.is_dir():
            raise UserError(f"{self.db_path}: its directory does not exist; fix migrations.database")
        return f"{self.db_path}" + ("" if self.db_path.exists() else " (created by the first migration)")

    def recorded(self) -> dict[str, str]:
        if not self.db_path.exists():
            return {}
        with opened(self.db_path) as db:
            return recorded(db)

    def backup(self, backup_dir: Path) -> Backup:
        return backup(self.db_path, backup_dir)

    def restore(self, backup: Backup) -> None:
        restore(backup.path, self.db_path)

    def apply_file(self, name: str, checksum: str, statements: list[str]) -> None:
        with opened(self.db_path) as db:
            apply_file(db, name, checksum, statements)

"""Migration files for tests: a ``migrations/`` directory next to the spec, as a spec's default ``dir`` expects."""

from __future__ import annotations

from pathlib import Path


def write_migrations(root: Path, files: dict[str, str]) -> Path:
    """Write ``{name: sql}`` into ``root/migrations`` (created when missing) and return that directory."""
    directory = root / "migrations"
    directory.mkdir(exist_ok=True)
    for name, sql in files.items():
        (directory / name).write_text(sql)
    return directory

"""``migrations:``: the database a release migrates, where its ``*.sql`` files live and where backups go.

Paths are relative to the spec file so a spec and its migrations move together.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from releasegate.spec.common import SpecModel


class Migrations(SpecModel):
    """Applied after the new version passed health and smoke checks, before it receives traffic."""

    database: str = Field(description="sqlite:///PATH, relative to the spec file (sqlite:////ABS for an absolute "
                                      "path). PostgreSQL is not supported yet.")
    dir: str = Field("migrations", description="Directory of *.sql files, applied in name order; relative to the "
                                               "spec file.")
    backup_dir: str = Field("backups", description="Where the verified pre-migration backup is written; relative "
                                                   "to the spec file.")

    @field_validator("database")
    @classmethod
    def _database(cls, v: str) -> str:
        if v.startswith("sqlite:///") and len(v) > len("sqlite:///"):
            return v
        if v.startswith(("postgresql://", "postgres://")):
            # Refused here, at validate time, rather than after the new version passed its checks.
            raise ValueError("PostgreSQL migrations are not supported yet; use sqlite:///PATH")
        raise ValueError(f"expected sqlite:///PATH (relative to the spec file), got {v!r}")

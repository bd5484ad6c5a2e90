"""Database migrations that survive an application rollback: lint for backward compatibility, back up, apply.

``lint`` refuses what the previous application version cannot run against; ``apply_pending`` applies the rest with a
verified backup and restores it on any failure; ``applied_names`` says which migrations remain applied after a
rollback (the schema never goes back). SQLite (``sqlite:///``) and PostgreSQL (``postgresql://``) databases follow
the same flow (``runner.py``); what differs lives in ``sqlite.py`` and ``postgres.py``.
"""

from __future__ import annotations

from releasegate.migrations.lint import LintIssue, lint
from releasegate.migrations.runner import (
    MigrationFailed,
    MigrationResult,
    applied_names,
    apply_pending,
    pending,
    readiness,
)

__all__ = ["LintIssue", "MigrationFailed", "MigrationResult", "applied_names", "apply_pending", "lint", "pending",
           "readiness"]

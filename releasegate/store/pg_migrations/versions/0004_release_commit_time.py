"""gov_releases.commit_at: when the release's commit was made, the start of the DORA lead time for changes
(releasegate/dora.py); NULL for releases registered without it."""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.execute("ALTER TABLE gov_releases ADD COLUMN IF NOT EXISTS commit_at DOUBLE PRECISION")

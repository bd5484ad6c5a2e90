"""Indexes the SQLite store has and 0001/0002 did not make: rollouts by creation time (the server's list walks it
newest first until its page is full) and the active rollouts by lease holder (a lease keeper's renewal and a
server's adoption scan run every few seconds)."""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.execute("CREATE INDEX IF NOT EXISTS rollouts_by_created ON rollouts(created_at)")
    op.execute("CREATE INDEX IF NOT EXISTS rollouts_leased ON rollouts(lease_holder) WHERE active = 1")

"""server_sessions: the dashboard's sign-in sessions (their ids only as hashes), kept in the store so that a session
outlives a server restart and is honoured by every server sharing the store (releasegate/server/dashboard/
sessions.py)."""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.execute("CREATE TABLE IF NOT EXISTS server_sessions (id_hash TEXT PRIMARY KEY, token_hash TEXT NOT NULL, "
                "csrf TEXT NOT NULL, expires DOUBLE PRECISION NOT NULL)")

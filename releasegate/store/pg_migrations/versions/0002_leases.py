"""Leases on rollouts (docs/server.md, "Several servers: leases and failover"): which process drives each active
rollout (``lease_holder``), until when (``lease_until``, wall-clock seconds), and the fencing token every write of
its controller is conditional on (``lease_token``, which only ever grows). The SQLite store adds the same columns to
an older state dir when it opens it (releasegate/store/leases.py, ``upgrade``)."""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.execute("ALTER TABLE rollouts ADD COLUMN lease_holder TEXT")
    op.execute("ALTER TABLE rollouts ADD COLUMN lease_token BIGINT NOT NULL DEFAULT 0")
    op.execute("ALTER TABLE rollouts ADD COLUMN lease_until DOUBLE PRECISION")

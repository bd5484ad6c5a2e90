"""Alembic's entry point: run the revisions on the connection ``pg_migrations.upgrade`` passes, in one transaction
that first takes the migration advisory lock (servers starting at once apply each revision once)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from releasegate.store.pg import MIGRATION_LOCK

connection = context.config.attributes["connection"]
context.configure(connection=connection, transactional_ddl=True)
with context.begin_transaction():
    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
    context.run_migrations()

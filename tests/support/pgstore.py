"""The store on a private PostgreSQL server (tests/support/postgres.py): a fresh database per test, chosen for
this process with ``use_store`` and forgotten afterwards, so no other test in the worker sees it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from releasegate.store.db import forget_store, use_store
from tests.support.postgres import PostgresServer


@contextlib.contextmanager
def on_postgres(server: PostgresServer, prefix: str = "store") -> Iterator[str]:
    """A new empty database as this process's store; yields its URL."""
    url = server.url(server.create_database(prefix))
    use_store(url)
    try:
        yield url
    finally:
        forget_store()


def all_columns(url: str) -> dict[str, set[str]]:
    """Every table of the database at ``url`` (Alembic's own left out) with its columns."""
    import psycopg

    found: dict[str, set[str]] = {}
    with psycopg.connect(url) as conn:
        for table, column in conn.execute("SELECT table_name, column_name FROM information_schema.columns WHERE "
                                          "table_schema = current_schema() AND table_name <> 'alembic_version'"):
            found.setdefault(table, set()).add(column)
    return found

"""Suite-wide collection order: the longest test files first.

Why: scripts/test runs the suite on four workers with ``--dist loadfile`` (a file's tests stay on one worker), and
xdist hands files out in collection order. A file of a minute or more collected late would run alone after every
other worker is done; started first, it overlaps the rest. (test_server_failover.py is run by scripts/test on its
own after the rest: its load would starve the others.)
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.postgres import PostgresServer, missing_reason, running_postgres

FIRST = ("test_demo.py", "test_crash_resume.py", "test_governance_flow.py")
"""The files that take a minute or more of one worker, in the order they should start."""


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return FIRST.index(name) if name in FIRST else len(FIRST)
    items.sort(key=rank)  # stable: within a rank, the collection order stays


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    """A private PostgreSQL on loopback for one test file (skipped, with the reason, where none can run)."""
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    with running_postgres() as srv:
        yield srv

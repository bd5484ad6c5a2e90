"""Suite-wide scheduling: the longest test files start first, on whichever worker is free.

Why: scripts/test runs the suite on four workers with ``--dist loadfile`` (a file's tests stay on one worker). xdist
hands the files out in its work queue's order, which by default it sorts by the number of tests in a file, most
first: a file of one long test (the browser test, the walkthrough) then starts last and runs alone after every other
worker is done. So the reordering is turned off and the files go out longest first (the longest-processing-time
rule), the short ones filling the gaps at the end. (test_server_failover.py is run by scripts/test on its own after
the rest: its load would starve the others.)
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.postgres import PostgresServer, missing_reason, running_postgres

SECONDS = {
    "test_rollouts.py": 173, "test_platform_ssh_rollouts.py": 158, "test_cli_first_contact.py": 146,
    "test_governance_flow.py": 118, "test_server_rollouts.py": 103, "test_release_group.py": 98,
    "test_dashboard_browser.py": 97, "test_server_client.py": 90, "test_dora.py": 79,
    "test_instances_hardening.py": 77, "test_platform_docker_rollouts.py": 73, "test_runbooks.py": 73,
    "test_rollouts_pause.py": 67, "test_server_schemathesis.py": 66, "test_zero_downtime.py": 64,
    "test_report.py": 63, "test_crash_resume.py": 60, "test_release_group_resume.py": 59, "test_baseline.py": 56,
    "test_platform_docker.py": 51, "test_demo.py": 48, "test_platform_docker_operations.py": 46,
    "test_metrics_exporter.py": 43, "test_stored_governance.py": 42, "test_down.py": 42,
    "test_release_group_input.py": 42, "test_server_api.py": 42, "test_router_status_external.py": 41,
    "test_server_connections.py": 41, "test_router_admin_auth.py": 40, "test_rollout_checks.py": 39,
    "test_haproxy_latency.py": 39, "test_dashboard.py": 38, "test_secret_refs.py": 37, "test_judge.py": 36,
    "test_judge_rollouts.py": 36, "test_audit_integrity.py": 36, "test_grafana.py": 33,
    "test_migrations_postgres.py": 33, "test_platform_ssh_baseline.py": 30, "test_closed_output.py": 29,
    "test_process_metrics.py": 25, "test_platform_ssh.py": 24, "test_router_proxy.py": 22,
    "test_router_hostile.py": 21, "test_latency_evidence.py": 20, "test_store_postgres.py": 19,
    "test_router_haproxy.py": 17, "test_server_postgres.py": 15, "test_grafana_live.py": 15,
    "test_spec_fuzz.py": 14, "test_traffic_nginx_haproxy.py": 14, "test_state_at_rest.py": 13,
    "test_spec_hostile.py": 13, "test_judge_proxies.py": 13, "test_server_secrets.py": 13,
    "test_server_slow_clients.py": 12,
}
"""Seconds of one worker per test file (setup, tests and teardown; measured with --junitxml in a full run on two
cores, rounded), for the files of 12 s or more. A file not named here starts after these, in collection order: add a
new file here once it takes that long."""


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config.option, "loadscopereorder"):  # xdist's sort by tests per file would undo the order below
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: -SECONDS.get(item.path.name, 0))  # stable: within a file, the order stays


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    """A private PostgreSQL on loopback for one test file (skipped, with the reason, where none can run)."""
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    with running_postgres() as srv:
        yield srv

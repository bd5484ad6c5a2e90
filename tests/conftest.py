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
    "test_rollouts.py": 146, "test_platform_ssh_rollouts.py": 136, "test_cli_first_contact.py": 129,
    "test_server_client.py": 112, "test_governance_flow.py": 105, "test_server_rollouts.py": 95,
    "test_crash_resume.py": 81, "test_platform_docker_rollouts.py": 77, "test_platform_docker_operations.py": 77,
    "test_demo.py": 73, "test_runbooks.py": 64, "test_judge_rollouts.py": 61, "test_release_group.py": 53,
    "test_rollouts_pause.py": 45, "test_down.py": 43, "test_instances_hardening.py": 41,
    "test_release_group_input.py": 41, "test_haproxy_latency.py": 41, "test_release_group_resume.py": 40,
    "test_server_schemathesis.py": 40, "test_closed_output.py": 38, "test_server_postgres.py": 37,
    "test_zero_downtime.py": 36, "test_secret_refs.py": 36, "test_migrations_postgres.py": 32, "test_dora.py": 32,
    "test_platform_docker.py": 30, "test_metrics_exporter.py": 30, "test_judge.py": 30, "test_baseline.py": 29,
    "test_grafana.py": 29, "test_platform_ssh_baseline.py": 28, "test_router_admin_auth.py": 28,
    "test_report.py": 28, "test_server_api.py": 27, "test_latency_evidence.py": 26, "test_dashboard.py": 26,
    "test_rollout_checks.py": 25, "test_process_metrics.py": 24, "test_platform_ssh.py": 20,
    "test_spec_hostile.py": 20, "test_router_status_external.py": 20, "test_router_hostile.py": 19,
    "test_dashboard_browser.py": 19, "test_audit_integrity.py": 18, "test_stored_governance.py": 18,
    "test_spec_fuzz.py": 18, "test_grafana_live.py": 16, "test_server_connections.py": 15,
    "test_judge_proxies.py": 14, "test_traffic_nginx_haproxy.py": 12, "test_server_secrets.py": 12,
    "test_store_postgres.py": 12, "test_router_haproxy.py": 12, "test_prometheus.py": 10,
}
"""Seconds of one worker per test file (setup, tests and teardown, as --junitxml reports them, rounded) in a full
run on two cores that passed, for the files of 10 s or more. A file not named here starts after these, in collection
order: add a new file here once it takes that long. Only the order matters, so rough figures do."""


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

"""State and secrets at rest (docs/security.md, section 5): a private state dir, listeners that other machines can
reach only with a secret, and alert bodies that cannot flood the audit log."""

from __future__ import annotations

import os
import re
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from releasegate.alert_receiver import handle
from releasegate.fileio import write_json_atomic
from releasegate.notifications import Outbox, _Job
from releasegate.providers.base import Event
from releasegate.store.audit import AuditLog
from tests.support.wait import terminate, wait_until

POLICY = Path(__file__).resolve().parents[1] / "examples" / "governance" / "policy.yaml"


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def rg(*args: str) -> list[str]:
    return [sys.executable, "-m", "releasegate", *args]


def run(*args: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real CLI under the common umask 022, so any mode wider than 0700/0600 would show."""
    env = {k: v for k, v in os.environ.items() if k != "RELEASEGATE_HOME"} | (extra_env or {})
    return subprocess.run(rg(*args), capture_output=True, text=True, env=env, timeout=60,
                          preexec_fn=lambda: os.umask(0o022))


@pytest.fixture
def umask_022() -> Iterator[None]:
    before = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(before)


def test_a_new_state_dir_is_0700_and_its_files_0600(tmp_path: Path) -> None:
    state = tmp_path / "state"
    done = run("policy", "apply", str(POLICY), "--state-dir", str(state))
    assert done.returncode == 0, done.stderr
    assert mode(state) == 0o700
    files = {p.name: mode(p) for p in state.iterdir()}  # with the -wal and -shm when a connection was left open
    assert {"releasegate.db", "audit-head.log"} <= set(files) and set(files.values()) == {0o600}, files


def test_the_databases_wal_and_shm_are_0600_while_it_is_open(tmp_path: Path, umask_022: None) -> None:
    with AuditLog(tmp_path / "state") as log:
        log.append("alice", "release.new")
        assert {p.name: mode(p) for p in (tmp_path / "state").iterdir()} == {
            "releasegate.db": 0o600, "releasegate.db-wal": 0o600, "releasegate.db-shm": 0o600,
            "audit-head.log": 0o600}


def test_a_state_dir_left_readable_by_an_older_releasegate_is_tightened_on_the_first_write(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    sqlite3.connect(state / "releasegate.db").close()
    (state / "releasegate.db").chmod(0o644)
    assert run("policy", "apply", str(POLICY), "--state-dir", str(state)).returncode == 0
    assert (mode(state), mode(state / "releasegate.db")) == (0o700, 0o600)


def test_routes_files_instance_records_and_the_outbox_are_private(tmp_path: Path, umask_022: None) -> None:
    write_json_atomic(tmp_path / "routers" / "shop.routes.json", {"routes": []})
    assert (mode(tmp_path / "routers"), mode(tmp_path / "routers" / "shop.routes.json")) == (0o700, 0o600)
    outbox = Outbox(tmp_path / "notifications.jsonl")
    outbox.record(_Job("1", 0, Event("shop", "promoted", "shop 2.0 promoted", {})), "json://x", "sent")
    assert mode(tmp_path / "notifications.jsonl") == 0o600


@pytest.mark.parametrize("command", ["metrics", "receive-alerts"])
def test_a_non_loopback_listener_without_a_secret_refuses_to_start(tmp_path: Path, command: str) -> None:
    done = run(command, "--listen", "0.0.0.0:0", "--state-dir", str(tmp_path))
    assert done.returncode == 2 and done.stdout == ""
    assert re.fullmatch(r"releasegate: --listen 0\.0\.0\.0:0: not a loopback address, so anyone who can reach it "
                        r"could use .*; give --secret-env NAME or --secret-file FILE .* or listen on 127\.0\.0\.1\n",
                        done.stderr), done.stderr


def test_metrics_on_a_non_loopback_address_serves_only_scrapes_that_carry_the_secret(tmp_path: Path) -> None:
    log = tmp_path / "metrics.log"
    with open(log, "ab") as out:
        env = {k: v for k, v in os.environ.items() if k != "RELEASEGATE_HOME"} | {"METRICS_SECRET": "m3trics"}
        proc = subprocess.Popen(rg("metrics", "--listen", "0.0.0.0:0", "--secret-env", "METRICS_SECRET",
                                   "--state-dir", str(tmp_path)), stdout=out, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL)
    try:
        def bound() -> str | None:
            assert proc.poll() is None, log.read_text()
            found = re.search(r"on http://0\.0\.0\.0:(\d+)/metrics .*bearer secret required", log.read_text())
            return found.group(1) if found else None

        url = f"http://127.0.0.1:{wait_until(bound, timeout=20, what='metrics to listen')}"
        assert httpx.get(f"{url}/metrics", timeout=5, trust_env=False).status_code == 401
        wrong = httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer nope"}, timeout=5, trust_env=False)
        assert wrong.status_code == 401
        ok = httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer m3trics"}, timeout=5, trust_env=False)
        assert ok.status_code == 200 and "releasegate_store_up" in ok.text
        assert httpx.get(f"{url}/healthz", timeout=5, trust_env=False).status_code == 200
    finally:
        terminate(proc)


def big_alert(i: int) -> dict[str, object]:
    labels = {"alertname": f"Noise{i}", "service": "shop", "severity": "page"} | {
        f"junk{k}": "x" * 5000 for k in range(20)}
    return {"status": "firing", "labels": labels, "annotations": {"summary": "s" * 5000, "runbook": "r" * 50_000},
            "startsAt": "2026-01-01T00:00:00Z", "fingerprint": "f" * 16}


def test_alert_entries_keep_only_what_matters_and_a_flood_of_ignored_alerts_is_summarised(tmp_path: Path) -> None:
    results = handle({"alerts": [big_alert(i) for i in range(120)]}, tmp_path, 1000.0)
    assert len(results) == 120
    with AuditLog(tmp_path) as log:
        entries = list(log.entries())
    assert len(entries) == 51  # 50 one by one, the other 70 in one summary
    first = entries[0].evidence
    assert first["labels"] == {"alertname": "Noise0", "service": "shop", "severity": "page"}
    assert first["annotations"] == {"summary": "s" * 200 + "..."}
    assert max(len(e.to_json()) for e in entries) < 2000
    assert entries[-1].decision == "70 more alerts of this notification ignored (over 50: not recorded one by one)"

"""``releasegate server --store postgresql://...`` end to end: a rollout through the API to its end, the server
token made by ``releasegate token new --store URL``, and the other commands on the same store through
``RELEASEGATE_STORE`` (``status``, ``audit verify``); nothing of the store lands in the state dir's SQLite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.postgres import PASSWORD, PASSWORD_USER, PostgresServer
from tests.support.rollouts import RolloutEnv
from tests.support.server import ServerProc
from tests.support.wait import eventually

pytestmark = pytest.mark.slow

FAST = "{canary: {steps: [{weight: 50, pause: 100ms}], keep_previous: 1h}}"
REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, store: str | None = None, state: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELEASEGATE_")}
    if store is not None:
        env["RELEASEGATE_STORE"] = store
    return subprocess.run([sys.executable, "-m", "releasegate", *args, "--state-dir", str(state)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def made(tmp_path: Path) -> Iterator[RolloutEnv]:
    env = RolloutEnv(tmp_path)
    try:
        yield env
    finally:
        env.close()  # stops the instances and the router the rollout started


async def test_a_rollout_through_a_server_on_postgres_and_the_cli_on_the_same_store(postgres: PostgresServer,
                                                                                   made: RolloutEnv,
                                                                                   tmp_path: Path) -> None:
    with postgres.connect() as conn:
        conn.execute(f"CREATE DATABASE e2e OWNER {PASSWORD_USER}")
    postgres_url = postgres.url("e2e", PASSWORD_USER, PASSWORD)
    issued = cli("token", "new", "dora", "--role", "deployer", "--service", "shop", "--store", postgres_url,
                 state=made.state)
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip()
    server = ServerProc(made.state, tmp_path, store=postgres_url).start()
    try:
        made.spec(FAST)
        with server.client(token) as c:
            started = c.post("/api/v1/rollouts", json={"spec_path": "shop.yaml", "version": "1.0.0"})
            assert started.status_code == 202, started.text
            rid = started.json()["id"]

            def over() -> dict[str, object] | None:
                got: dict[str, object] = c.get(f"/api/v1/rollouts/{rid}").json()
                return None if got["active"] else got

            done = await eventually(over, 60, f"rollout {rid} to end", every=0.1)
            assert done["status"] == "promoted", done
            assert c.get("/api/v1/services").json()[0]["current"] == "1.0.0"
            assert c.get("/api/v1/tokens").status_code == 403  # a deployer
    finally:
        server.stop()
    assert PASSWORD not in server.log.read_text()
    assert not (made.state / "releasegate.db").exists(), "the store went to SQLite, not PostgreSQL"
    status = cli("status", "--json", store=postgres_url, state=made.state)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)[0]["current"] == "1.0.0"
    verified = cli("audit", "verify", store=postgres_url, state=made.state)
    assert verified.returncode == 0 and "ok" in verified.stdout.lower(), (verified.stdout, verified.stderr)


def test_a_user_that_may_not_create_the_tables_is_told_in_one_line(postgres: PostgresServer,
                                                                   tmp_path: Path) -> None:
    url = postgres.url(postgres.create_database("owned_by_rg"), PASSWORD_USER, PASSWORD)
    done = cli("audit", "verify", store=url, state=tmp_path / "state")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "cannot bring the store's schema up to date (permission denied" in done.stderr, done.stderr
    assert PASSWORD not in done.stderr


def test_a_wrong_password_is_one_line_naming_the_fix_and_never_the_password(postgres: PostgresServer,
                                                                            tmp_path: Path) -> None:
    wrong = postgres.url("postgres", PASSWORD_USER, "not-" + PASSWORD)
    for args, store in ((("token", "new", "ada", "--role", "admin", "--store", wrong), None),
                        (("status",), wrong)):
        done = cli(*args, store=store, state=tmp_path / "state")
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.count("\n") == 1 and "authentication failed" in done.stderr, done.stderr
        assert "not-" + PASSWORD not in done.stderr and "***" in done.stderr, done.stderr


def test_releasegate_store_may_name_a_sqlite_file_and_a_bad_one_is_refused_naming_it(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELEASEGATE_")}

    def run(store: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "releasegate", *args], cwd=tmp_path,
                              env=env | {"RELEASEGATE_STORE": store}, capture_output=True, text=True, timeout=60,
                              check=False)

    made = run(f"sqlite:///{tmp_path}/elsewhere/releasegate.db", "token", "new", "ada", "--role", "admin")
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "elsewhere" / "releasegate.db").is_file() and not (tmp_path / ".releasegate").exists()
    bad = run("mysql://u:hunter2@db/x", "status")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
    assert bad.stderr.startswith("releasegate: RELEASEGATE_STORE mysql://u:***@db/x: expected sqlite:///"), bad.stderr

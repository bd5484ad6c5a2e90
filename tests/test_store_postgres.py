"""The whole store on PostgreSQL (``--store postgresql://``, issue 11 section 5): the same store classes, the same
behaviours as on SQLite, against a real private server; and the schema Alembic makes equals SQLite's."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from releasegate.engine import decide
from releasegate.engine.group import GroupState, Member
from releasegate.errors import UserError
from releasegate.lookup import unknown_service
from releasegate.metrics_exporter import StoreCollector
from releasegate.planning import _running_version
from releasegate.spec.models import Spec
from releasegate.store import audit
from releasegate.store.audit import AuditLog
from releasegate.store.governance import GovernanceStore, Release
from releasegate.store.groups import GroupStore
from releasegate.store.server import Grant, ServerStore
from releasegate.store.sqlite import Store
from tests.support.pgstore import all_columns, on_postgres
from tests.support.postgres import PASSWORD, PASSWORD_USER, PostgresServer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def url(postgres: PostgresServer) -> Iterator[str]:
    with on_postgres(postgres) as chosen:
        yield chosen


def spec_of(service: str) -> Spec:
    return Spec.model_validate({"service": service, "platform": {"command": "app --port {port}"}})


def test_the_schema_alembic_makes_has_the_sqlite_tables_and_columns(url: str, tmp_path: Path) -> None:
    """A column added to a SQLite SCHEMA without a revision in releasegate/store/pg_migrations fails here."""
    Store(tmp_path).close()  # opening any store applies the migrations
    from releasegate.store import governance, groups, server, sqlite
    from releasegate.store.db import create_schema

    lite = sqlite3.connect(":memory:", isolation_level=None)
    create_schema(lite, sqlite.SCHEMA + groups.SCHEMA + audit.SCHEMA + governance.SCHEMA + server.SCHEMA)
    expected = {t: {r[1] for r in lite.execute(f"PRAGMA table_info({t})")}
                for (t,) in lite.execute("SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE "
                                         "'sqlite_%'")}
    assert all_columns(url) == expected


def test_rollouts_events_commands_and_services(url: str, tmp_path: Path) -> None:
    store = Store(tmp_path)
    try:
        spec = spec_of("shop")
        first = decide.new_rollout("shop-1", spec, "1.0.0", None, 1000.0)
        store.create_rollout(first, "shop.yaml", spec.model_dump_json(by_alias=True), {"pid": 0})
        with pytest.raises(UserError, match=r"rollout shop-1 of 1\.0\.0 is in progress"):
            store.create_rollout(decide.new_rollout("shop-2", spec, "1.0.1", None, 1001.0), "shop.yaml", "{}", {})
        store.save(first.model_copy(update={"status": "promoted", "phase": "finish"}), [("promoted", "done", {})])
        second = decide.new_rollout("shop-2", spec, "2.0.0", "1.0.0", 1000.0)  # the same instant: still newest
        store.create_rollout(second, "shop.yaml", spec.model_dump_json(by_alias=True), {"pid": 0})
        record = store.active_rollout("shop")
        assert record is not None and record.state.id == "shop-2" and record.owner == {"pid": 0}
        assert [r.state.id for r in store.rollouts("shop")] == ["shop-2", "shop-1"]
        assert [r.state.id for r in store.recent_rollouts(lambda s: True)] == ["shop-2", "shop-1"]
        command = store.add_command("shop", "shop-2", "abort", "ada", 1002.0)
        assert store.has_pending_commands("shop-2") and store.command_state(command) == ("pending", None)
        [pending] = store.pending_commands("shop-2")
        store.apply_command(second, pending, None)
        assert store.command_state(command) == ("applied", None) and not store.has_pending_commands("shop-2")
        store.add_event("shop", None, 1003.0, "down", "taken down", {"why": "test"})
        kinds = [e["kind"] for e in store.events("shop")]
        assert kinds == ["promoted", "command", "down"] and store.events("shop", limit=1)[0]["kind"] == "down"
        assert store.last_event("shop", ["down"])["data"] == {"why": "test"}  # type: ignore[index]
        store.set_service("shop", "1.0.0", None, None, "shop.yaml", "{}", 1000.0)
        store.set_service("shop", "2.0.0", "1.0.0", 2000.0, None, None, 1004.0)
        [svc] = store.services()
        assert (svc.current, svc.previous, svc.spec_path) == ("2.0.0", "1.0.0", "shop.yaml")
        assert _running_version(tmp_path, "shop") == "2.0.0"  # what `plan` starts from
        assert "the store postgresql://" in str(unknown_service(tmp_path, "nope", "nothing to do"))
    finally:
        store.close()


def test_two_racing_creates_of_one_service_leave_one_rollout(url: str, tmp_path: Path) -> None:
    spec = spec_of("web")
    outcomes: list[str] = []

    def create(n: int) -> None:
        store = Store(tmp_path)
        try:
            store.create_rollout(decide.new_rollout(f"web-{n}", spec, f"{n}.0.0", None, 1000.0 + n), "w.yaml",
                                 spec.model_dump_json(by_alias=True), {"pid": n})
            outcomes.append("created")
        except UserError:
            outcomes.append("refused")
        finally:
            store.close()

    threads = [threading.Thread(target=create, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["created", "refused", "refused", "refused"]


def test_governance_server_tokens_idempotency_and_groups(url: str, tmp_path: Path) -> None:
    with GovernanceStore(tmp_path) as gov:
        release = Release("shop", "2.0.0", "ada", "sha256:ab", "c0ffee", 1.0, 1.0)
        with gov.tx() as db:
            gov.put_release(release)
            one = gov.add_signoff(release, "prod", "qa", "bea", "approval", 2.0, checks=("smoke",))
            two = gov.add_signoff(release, "prod", "sec", "cid", "approval", 3.0)
            audit.append_entry(db, "bea", "release.approved", release="shop@2.0.0")
        gov.void([one.id], 4.0, "artifact changed")
        assert [s.id for s in gov.signoffs("shop", "2.0.0")] == [two.id]
        assert gov.signoffs("shop", "2.0.0", active_only=False)[0].checks == ("smoke",)
        assert not gov.set_token_hash("bea", "h1", 5.0) and gov.set_token_hash("bea", "h2", 6.0)
        assert gov.token_hash("bea") == "h2"
        with gov.tx():
            assert gov.add_document("policy", "a: 1", "s1", "ada", "ada", None, 7.0).version == 1
            assert gov.add_document("policy", "a: 2", "s2", "ada", "ada", None, 8.0).version == 2
        assert [d.version for d in gov.documents("policy")] == [1, 2] and gov.has_table("gov_documents")
    with GovernanceStore(tmp_path, readonly=True) as looking:
        assert looking.release("shop", "2.0.0") == release
        assert looking.releases() == [release]  # the dashboard's list of releases
    with ServerStore(tmp_path, create=True) as srv:
        assert not srv.put_token(Grant("ada", "admin", "*", 1.0), "a" * 64, "root", {})
        assert srv.put_token(Grant("ada", "deployer", "shop-*", 2.0), "b" * 64, "root", {})
        assert srv.grant_for("a" * 64) is None and srv.grant_for("b" * 64) == Grant("ada", "deployer", "shop-*",
                                                                                       2.0, "root")
        srv.remember("ci-7", "body1", "shop-1", "ada", 3.0)
        srv.remember("ci-7", "body2", "shop-2", "ada", 4.0)  # the first answer stays
        assert srv.idempotent("ci-7") == ("body1", "shop-1")
    groups = GroupStore(tmp_path)
    try:
        member = Member(service="shop", spec_path="shop.yaml", tier="critical", version="2", previous="1",
                        rollout_id="shop-r")
        gs = GroupState(id="g1", release="web", switch="together", release_path="web.yaml", members=[member],
                        created_at=1.0, updated_at=1.0)
        groups.create(gs, {"pid": 0})
        with pytest.raises(UserError, match="release group g1 is in progress"):
            groups.create(gs.model_copy(update={"id": "g2"}), {"pid": 0})
        command = groups.add_command("web", "g1", "abort", "ada", 2.0)
        groups.save(gs.model_copy(update={"status": "aborted"}), [("aborted", "by ada", {})],
                    answer=(groups.pending_commands("g1")[0], None))
        assert groups.command_state(command) == ("applied", None) and groups.active("web") is None
        assert groups.releases() == ["web"] and [e["kind"] for e in groups.events("g1")] == ["aborted"]
    finally:
        groups.close()
    with AuditLog(tmp_path) as log:
        assert log.verify().ok, log.verify()
        assert [e.action for e in log.entries()] == ["release.approved", "server_token.new", "server_token.new"]


def test_the_audit_chain_stays_one_chain_with_several_processes_appending(url: str, tmp_path: Path) -> None:
    """Four processes open a fresh database at once (so they also race to apply the migrations: one does, under its
    advisory lock, the others find them done) and append 20 entries each."""
    script = ("import sys; from pathlib import Path; from releasegate.store.audit import AuditLog\n"
              "with AuditLog(Path(sys.argv[1])) as log:\n"
              "    for n in range(20): log.append(sys.argv[2], 'test.append', evidence={'n': n})\n")
    env = {"RELEASEGATE_STORE": url, "PATH": "/usr/bin:/bin"}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), f"writer{n}"], cwd=REPO, env=env)
             for n in range(4)]
    assert [p.wait(60) for p in procs] == [0, 0, 0, 0]
    with AuditLog(tmp_path) as log:
        result = log.verify()
        assert result.ok and result.reason == "80 entries", result
        assert {e.actor for e in log.entries()} == {f"writer{n}" for n in range(4)}


def test_the_metrics_collector_reads_the_postgres_store(url: str, tmp_path: Path) -> None:
    store = Store(tmp_path)
    try:
        spec = spec_of("shop")
        st = decide.new_rollout("shop-1", spec, "1.0.0", None, 1000.0)
        store.create_rollout(st, "shop.yaml", spec.model_dump_json(by_alias=True), {"pid": 0})
        store.save(st.model_copy(update={"status": "promoted", "phase": "finish"}),
                   [("promoted", "promoted 1.0.0", {})])
    finally:
        store.close()
    collector = StoreCollector(tmp_path)
    families = {f.name: f for f in collector.collect()}
    assert collector.last_error is None
    assert families["releasegate_store_up"].samples[0].value == 1
    outcomes = {s.labels["outcome"]: s.value for s in families["releasegate_rollouts"].samples}
    assert outcomes["promoted"] == 1
    assert [s.labels["phase"] for s in families["releasegate_rollout_phase"].samples] == ["finish"]


def test_bad_urls_are_one_line_naming_the_fix_without_the_password(postgres: PostgresServer,
                                                                    tmp_path: Path) -> None:
    from releasegate.store.db import forget_store, use_store

    cases = {
        postgres.url("postgres", PASSWORD_USER, "wrong-" + PASSWORD): "authentication failed",
        postgres.url("no_such_db"): "no such database",
        f"postgresql://rg:{PASSWORD}@127.0.0.1:1/x": "cannot reach the PostgreSQL server",
    }
    for bad, what in cases.items():
        use_store(bad)
        try:
            with pytest.raises(UserError) as caught:
                Store(tmp_path)
        finally:
            forget_store()
        message = str(caught.value)
        assert what in message and "RELEASEGATE_STORE" in message and "\n" not in message, message
        assert PASSWORD not in message and json.dumps(PASSWORD)[1:-1] not in message


def test_servers_with_state_dirs_of_their_own_append_to_one_chain_each_verifies(url: str, tmp_path: Path) -> None:
    """Each state dir's head file records what was written there (and what it caught up on); both verify."""
    first, second = tmp_path / "a", tmp_path / "b"
    for n in range(3):
        for where in (first, second):
            where.mkdir(exist_ok=True)
            with AuditLog(where) as log:
                log.append(where.name, "test.append", evidence={"n": n})
    for where in (first, second):
        with AuditLog(where) as log:
            assert log.verify() == (True, None, "6 entries"), where
    with AuditLog(second) as log:  # the state dir that wrote entry 6 (the other's file ends at 5)
        log._db.execute("DELETE FROM audit_log WHERE seq = 6")
        log._db.execute("UPDATE audit_head SET seq = 5, hash = (SELECT hash FROM audit_log WHERE seq = 5)")
        result = log.verify()
    assert not result.ok and result.first_bad_seq == 6 and "deleted" in result.reason, result


def test_redact_hides_the_password_wherever_the_url_carries_it() -> None:
    from releasegate.store.pg import redact

    assert redact("postgresql://ada:s3cret@db:5432/rg") == "postgresql://ada:***@db:5432/rg"
    assert redact("postgresql://ada:p@ss@db/rg") == "postgresql://ada:***@db/rg"
    assert redact("postgresql://ada@db/rg?sslmode=require&password=s3cret") == \
        "postgresql://ada@db/rg?sslmode=require&password=***"
    assert redact("postgresql://ada@db/rg") == "postgresql://ada@db/rg"


def test_idle_connections_are_reused_but_never_one_left_inside_a_transaction(url: str, tmp_path: Path) -> None:
    from releasegate.store.db import open_db

    first = open_db(tmp_path)
    raw = first._raw
    first.close()
    again = open_db(tmp_path)
    assert again._raw is raw  # the server opens a store per request: no new connection each time
    again.execute("BEGIN")
    again.close()
    assert raw.closed
    fresh = open_db(tmp_path)
    try:
        assert fresh._raw is not raw and fresh.execute("SELECT 1").fetchone()[0] == 1
    finally:
        fresh.close()

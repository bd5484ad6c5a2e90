"""PostgreSQL migrations against a real server (tests/support/postgres.py, one per session, a fresh database per
test): apply in order and record, pg_dump backups verified by restoring them, lint refusals, restore on failure
(including what the migrations created), one-line connection errors with the password masked, and a deploy through
the real rollout path."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest

from releasegate import service
from releasegate.errors import ProviderError, UserError
from releasegate.migrations import MigrationFailed, applied_names, apply_pending, pending, pgclient, readiness
from releasegate.migrations.backend import Backup
from releasegate.migrations.postgres import PostgresBackend
from releasegate.preflight import preflight
from releasegate.spec import load_spec
from releasegate.spec.migrations import Migrations
from tests.support.migrations import write_migrations
from tests.support.postgres import PASSWORD, PASSWORD_USER, PostgresServer
from tests.support.rollouts import Load, cleanup, free_port, write_spec


@pytest.fixture(scope="module")
def pg(postgres: PostgresServer) -> PostgresServer:
    """The suite's private PostgreSQL (tests/conftest.py), under this file's short name."""
    return postgres


@pytest.fixture
def db(pg: PostgresServer) -> str:
    """A fresh database with 50 users, owned by the trusted superuser ``rg``."""
    name = pg.create_database()
    with pg.connect(name) as conn:
        conn.execute("CREATE TABLE users (id serial PRIMARY KEY, email text NOT NULL, phone text)")
        conn.execute("INSERT INTO users (email, phone) SELECT 'u' || g || '@example.com', '555-' || g "
                     "FROM generate_series(1, 50) g")
    return name


def _spec(url: str) -> Migrations:
    return Migrations(database=url, dir="migrations", backup_dir="backups")


def _state(pg: PostgresServer, name: str) -> dict[str, Any]:
    """What a user of the database sees: relations and their columns, every table's rows, the sequence."""
    with pg.connect(name) as conn:
        columns = conn.execute(
            "SELECT c.relname, c.relkind, array_agg(a.attname::text ORDER BY a.attnum) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace LEFT JOIN pg_attribute a ON a.attrelid = c.oid "
            "AND a.attnum > 0 AND NOT a.attisdropped WHERE n.nspname = 'public' GROUP BY 1, 2 ORDER BY 1").fetchall()
        tables = [r[0] for r in columns if r[1] == "r"]
        rows = {t: conn.execute(f'SELECT * FROM "{t}" ORDER BY 1').fetchall() for t in tables}
        seq = conn.execute("SELECT last_value FROM users_id_seq").fetchone()
    return {"relations": columns, "rows": rows, "users_id_seq": seq}


def _databases(pg: PostgresServer) -> list[str]:
    with pg.connect() as conn:
        return [r[0] for r in conn.execute("SELECT datname FROM pg_database ORDER BY 1")]


def test_pending_files_apply_in_order_once_after_a_verified_pg_dump(pg: PostgresServer, db: str,
                                                                     tmp_path: Path) -> None:
    spec = _spec(pg.url(db))
    write_migrations(tmp_path, {"002_copy.sql": "UPDATE users SET email_address = email;",
                      "001_add.sql": "ALTER TABLE users ADD COLUMN email_address text; -- expand\n"
                                     "CREATE TABLE audit (id bigserial PRIMARY KEY, what text);\n"
                                     "CREATE FUNCTION audit_count() RETURNS bigint AS $$ SELECT count(*) FROM audit; "
                                     "$$ LANGUAGE sql;\n"
                                     "CREATE FUNCTION audit_none() RETURNS boolean LANGUAGE sql\nBEGIN ATOMIC\n"
                                     "  SELECT CASE WHEN count(*) = 0 THEN true ELSE false END FROM audit;\nEND;"})
    assert [p.name for p in pending(spec, tmp_path)] == ["001_add.sql", "002_copy.sql"]
    before = _state(pg, db)
    result = apply_pending(spec, tmp_path)
    assert result.applied == ["001_add.sql", "002_copy.sql"]
    assert result.recorded == ["001_add.sql", "002_copy.sql"] == applied_names(spec, tmp_path)
    assert pending(spec, tmp_path) == []
    with pg.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM users WHERE email_address = email").fetchone() == (50,)
        assert conn.execute("SELECT audit_count(), audit_none()").fetchone() == (0, True)
        rows = conn.execute("SELECT name, checksum, applied_at FROM releasegate_migrations ORDER BY name").fetchall()
    assert [r[0] for r in rows] == ["001_add.sql", "002_copy.sql"]
    assert all(len(r[1]) == 64 and r[2] is not None for r in rows)

    # The backup is a pg_dump of the database as it was before: restoring it, as a person would, gives those rows.
    assert result.backup is not None and result.backup.parent == tmp_path / "backups"
    assert result.backup.name.startswith(f"{db}-") and result.backup.suffix == ".dump"
    copy = pg.create_database("copy")
    out = subprocess.run([pgclient.client_for(15)["pg_restore"], "--no-owner", "--dbname", pg.url(copy),
                          str(result.backup)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert _state(pg, copy) == before
    assert not [d for d in _databases(pg) if "_rg_verify_" in d]  # the scratch verification database is gone

    again = apply_pending(spec, tmp_path)
    assert again.applied == [] and again.backup is None and again.recorded == result.recorded

    (tmp_path / "migrations" / "001_add.sql").write_text("ALTER TABLE users ADD COLUMN other text;")
    with pytest.raises(UserError, match=r"001_add\.sql changed after it was applied"):
        apply_pending(spec, tmp_path)


def test_a_breaking_migration_is_refused_unless_allowed(pg: PostgresServer, db: str, tmp_path: Path) -> None:
    spec = _spec(pg.url(db))
    write_migrations(tmp_path, {"001_widen.sql": "ALTER TABLE users ALTER COLUMN id TYPE bigint;\n"
                                       "ALTER TABLE users ALTER COLUMN phone SET DATA TYPE varchar(40);"})
    before = _state(pg, db)
    with pytest.raises(UserError, match=r"(?s)001_widen\.sql:1: changes the type of users\.id.*"
                                        r"001_widen\.sql:2: changes the type of users\.phone.*"
                                        r"refused: 2 backward-incompatible.*--allow-breaking-migration"):
        apply_pending(spec, tmp_path)
    assert _state(pg, db) == before and not (tmp_path / "backups").exists()
    result = apply_pending(spec, tmp_path, allow_breaking=True)
    assert result.applied == ["001_widen.sql"]
    with pg.connect(db) as conn:
        assert conn.execute("SELECT data_type FROM information_schema.columns WHERE table_name = 'users' "
                            "AND column_name = 'id'").fetchone() == ("bigint",)


def test_a_failing_file_restores_the_backup_and_undoes_the_files_before_it(pg: PostgresServer, db: str,
                                                                           tmp_path: Path) -> None:
    spec = _spec(pg.url(db))
    write_migrations(tmp_path, {"000_base.sql": "CREATE TABLE settings (k text PRIMARY KEY, v text);\n"
                                      "INSERT INTO settings VALUES ('theme', 'dark');"})
    assert apply_pending(spec, tmp_path).applied == ["000_base.sql"]
    with pg.connect(db) as conn:  # the application keeps writing between deploys
        conn.execute("INSERT INTO users (email) VALUES ('late@example.com')")
    before = _state(pg, db)
    write_migrations(tmp_path, {
        "001_add.sql": "ALTER TABLE users ADD COLUMN tier text DEFAULT 'free';\nUPDATE users SET tier = 'gold';\n"
                       "CREATE TABLE audit (id serial PRIMARY KEY, user_id int REFERENCES users (id));\n"
                       "CREATE VIEW gold_users AS SELECT id, email FROM users WHERE tier = 'gold';\n"
                       "CREATE TYPE mood AS ENUM ('ok', 'sad');\nDELETE FROM settings;",
        "002_bad.sql": "INSERT INTO settings VALUES ('a', '1');\n\nINSERT INTO no_such_table VALUES (1);",
    })
    with pytest.raises(MigrationFailed) as caught:
        apply_pending(spec, tmp_path)
    err = caught.value
    assert err.file == "002_bad.sql" and err.statement == "INSERT INTO no_such_table VALUES (1);"
    message = str(err)
    assert 'migration 002_bad.sql failed: relation "no_such_table" does not exist' in message
    assert str(err.backup) in message and "001_add.sql undone too" in message
    assert err.backup.parent == tmp_path / "backups" and err.backup.exists()
    assert err.exit_code == 2
    assert _state(pg, db) == before  # the view, the new table, the column, the type and the deleted row: undone
    with pg.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM pg_type WHERE typname = 'mood'").fetchone() == (0,)
    assert applied_names(spec, tmp_path) == ["000_base.sql"]
    assert [p.name for p in pending(spec, tmp_path)] == ["001_add.sql", "002_bad.sql"]


def test_a_failing_first_deploy_leaves_no_trace_of_releasegate(pg: PostgresServer, db: str, tmp_path: Path) -> None:
    spec = _spec(pg.url(db))
    before = _state(pg, db)
    write_migrations(tmp_path, {"001_bad.sql": "ALTER TABLE users ADD COLUMN x text;\nSELECT * FROM nope;"})
    with pytest.raises(MigrationFailed, match=r'migration 001_bad\.sql failed: relation "nope" does not exist'):
        apply_pending(spec, tmp_path)
    assert _state(pg, db) == before  # no releasegate_migrations table either
    assert applied_names(spec, tmp_path) == []


def test_an_explicit_transaction_in_a_file_is_refused(pg: PostgresServer, db: str, tmp_path: Path) -> None:
    write_migrations(tmp_path, {"001_tx.sql": "BEGIN;\nALTER TABLE users ADD COLUMN x text;\nCOMMIT;"})
    with pytest.raises(UserError, match=r"001_tx\.sql:1: remove BEGIN"):
        apply_pending(_spec(pg.url(db)), tmp_path)


def test_backup_and_restore_verification_compare_real_row_counts(pg: PostgresServer, db: str,
                                                                 tmp_path: Path) -> None:
    backend = PostgresBackend(pg.url(db))
    backup = backend.backup(tmp_path / "backups")
    assert backup.counts == {"public.users": 50}
    # The dump's contents, restored into a scratch database, are compared with what the snapshot counted.
    with pytest.raises(ProviderError, match=r"does not hold what it should: row counts differ in public\.users "
                                            r"\(51 in the backup, 50 in the copy\)"):
        backend.verify_dump(backup.path, {"public.users": 51})
    assert not [d for d in _databases(pg) if "_rg_verify_" in d]

    backend.apply_file("001.sql", "0" * 64, ["CREATE TABLE extra (id int)", "DELETE FROM users WHERE id > 10"])
    after = _state(pg, db)
    # A restore whose result does not match the backup's counts commits nothing.
    with pytest.raises(ProviderError, match=r"(?s)row counts differ from the backup in public\.users \(49 in the "
                                            r"backup, 50 now\).*restore it by hand"):
        backend.restore(Backup(backup.path, {"public.users": 49}, backup.objects))
    assert _state(pg, db) == after
    backend.restore(backup)
    assert backend.recorded() == {}
    with pg.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (50,)
        assert conn.execute("SELECT to_regclass('extra')").fetchone() == (None,)


def test_unix_socket_pgpassword_and_a_password_in_the_url(pg: PostgresServer, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    write_migrations(tmp_path, {"001.sql": "CREATE TABLE t (id int);"})
    socket_db = pg.create_database()
    assert apply_pending(_spec(pg.socket_url(socket_db)), tmp_path).applied == ["001.sql"]

    owned = pg.create_database()
    with pg.connect() as conn:
        conn.execute(f'ALTER DATABASE "{owned}" OWNER TO {PASSWORD_USER}')
    # The password reaches pg_dump and pg_restore through PGPASSWORD; the backup and its verification succeed.
    result = apply_pending(_spec(pg.url(owned, PASSWORD_USER, PASSWORD)), tmp_path)
    assert result.applied == ["001.sql"] and result.backup is not None and result.backup.exists()
    # The restore, too, runs as the database's owner (no superuser), and the objects keep their owner.
    write_migrations(tmp_path, {"002_view.sql": "CREATE VIEW v AS SELECT * FROM t;", "003_bad.sql": "SELECT 1/0;"})
    with pytest.raises(MigrationFailed, match=r"003_bad\.sql failed: division by zero"):
        apply_pending(_spec(pg.url(owned, PASSWORD_USER, PASSWORD)), tmp_path)
    with pg.connect(owned) as conn:
        assert conn.execute("SELECT relname, relowner::regrole::text FROM pg_class WHERE relnamespace = "
                            "'public'::regnamespace AND relkind IN ('r', 'v') ORDER BY 1").fetchall() == [
            ("releasegate_migrations", PASSWORD_USER), ("t", PASSWORD_USER)]
    for name in ("002_view.sql", "003_bad.sql"):
        (tmp_path / "migrations" / name).unlink()

    url = pg.url(owned, PASSWORD_USER)
    with pytest.raises(UserError, match="no password supplied"):
        applied_names(_spec(url), tmp_path)
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    assert applied_names(_spec(url), tmp_path) == ["001.sql"]
    assert "PostgreSQL 1" in readiness(_spec(url), tmp_path)[0]


def test_connection_problems_are_one_line_with_the_password_masked(pg: PostgresServer, db: str, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    write_migrations(tmp_path, {"001.sql": "CREATE TABLE t (id int);"})
    secret = "Wr0ng-Secret"
    port = free_port()  # nothing listens there
    cases = [
        (f"postgresql://rg:{secret}@127.0.0.1:{port}/app", ProviderError, "cannot reach the PostgreSQL server"),
        (pg.url(db, PASSWORD_USER, secret), UserError, f'password authentication failed for user "{PASSWORD_USER}"'),
        (pg.url("no_such_db", "rg", secret).replace("postgresql", "postgres"), UserError,
         'database "no_such_db" does not exist; create it (createdb no_such_db)'),
    ]
    for url, kind, words in cases:
        with pytest.raises(kind) as caught:
            apply_pending(_spec(url), tmp_path)
        message = str(caught.value)
        assert words in message and "\n" not in message, message
        assert secret not in message and ":***@" in message, message

    # Without the client programs the deploy says which package brings them.
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(pgclient, "DEBIAN_DIRS", tmp_path / "empty")
    with pytest.raises(UserError, match=r"pg_dump, pg_restore and psql were not found.*postgresql-client"):
        apply_pending(_spec(pg.url(db)), tmp_path)


def test_preflight_checks_the_database_before_anything_starts(pg: PostgresServer, db: str, tmp_path: Path) -> None:
    with pg.connect() as conn:
        conn.execute("CREATE ROLE nocreatedb LOGIN")
    write_migrations(tmp_path, {})
    spec_path = write_spec(tmp_path, free_port(), "{bluegreen: {}}",
                           extra=f"migrations: {{database: '{pg.socket_url(db, 'nocreatedb')}'}}\n")
    checks = {c.name: c for c in asyncio.run(preflight(load_spec(spec_path), spec_path, "1.0.0", tmp_path / "s"))}
    assert not checks["database"].ok and "lacks CREATEDB" in checks["database"].detail
    spec_path.write_text(spec_path.read_text().replace("nocreatedb", "rg"))
    checks = {c.name: c for c in asyncio.run(preflight(load_spec(spec_path), spec_path, "1.0.0", tmp_path / "s"))}
    assert checks["database"].ok and "0 migration file(s)" in checks["database"].detail


@pytest.mark.slow
async def test_a_deploy_migrates_before_traffic_and_a_failing_migration_aborts_with_the_database_restored(
        pg: PostgresServer, db: str, tmp_path: Path) -> None:
    state, port = tmp_path / "state", free_port()
    ctx = service.new_context(state)
    write_migrations(tmp_path, {"001_add_tier.sql": "ALTER TABLE users ADD COLUMN tier text;\n"})
    spec = write_spec(tmp_path, port, "{bluegreen: {}}", extra=f"migrations: {{database: '{pg.url(db)}'}}\n",
                      post_promotion="0s")
    try:
        await asyncio.wait_for(service.deploy(ctx, spec, "1.0.0"), 60)
        st = await asyncio.wait_for(service.deploy(ctx, spec, "2.0.0"), 60)
        assert st.status == "promoted" and st.migrations_applied == ["001_add_tier.sql"]
        write_migrations(tmp_path, {"002_ok.sql": "CREATE TABLE audit (id int);\n",
                          "003_broken.sql": "INSERT INTO no_such_table VALUES (1);\n"})
        before = _state(pg, db)
        async with Load(f"http://127.0.0.1:{port}/api/items") as load:
            await load.wait_for(10)
            st = await asyncio.wait_for(service.deploy(ctx, spec, "3.0.0"), 60)
            await load.wait_for(10)
        assert st.status == "aborted" and "003_broken.sql" in (st.reason or "")
        assert "3.0.0" not in load.by_version and load.failures == []
        assert _state(pg, db) == before  # 002's table is gone too, the rows are as before
    finally:
        await cleanup(state, spec)

"""Migrations: the backward-compatibility lint, and apply_pending against real SQLite files (backup, verify,
apply in order, restore on failure)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from releasegate.commands.migrations import migrations_app
from releasegate.errors import UserError
from releasegate.migrations import MigrationFailed, applied_names, apply_pending, lint
from releasegate.migrations.lint import lint_sql, split_statements
from releasegate.migrations.sqlite import row_counts
from releasegate.spec.migrations import Migrations
from tests.support.migrations import write_migrations

SPEC = Migrations(database="sqlite:///app.db", dir="migrations", backup_dir="backups")


def _issues(sql: str) -> list[tuple[int, str, str]]:
    return [(i.line, i.problem, i.fix) for i in lint_sql(sql, Path("m.sql"))]


@pytest.mark.parametrize(("sql", "problem", "fix"), [
    ("ALTER TABLE users DROP COLUMN phone;", "drops column users.phone", "drop the column in a later release"),
    ("alter table users drop phone;", "drops column users.phone", "drop the column in a later release"),
    ("DROP TABLE IF EXISTS users;", "drops table users", "drop the table in a later release"),
    ("ALTER TABLE users RENAME COLUMN email TO email_address;", "renames column users.email to email_address",
     "add the new column email_address, copy email into it (write both), switch reads; drop email in a later"),
    ("ALTER TABLE users RENAME TO customers;", "renames table users", "create the new table, copy the rows"),
    ("ALTER TABLE users ALTER COLUMN age TYPE bigint;", "changes the type of users.age",
     "add a new column with the new type"),
    ("ALTER TABLE users ALTER COLUMN age SET DATA TYPE bigint;", "changes the type of users.age",
     "add a new column with the new type"),
    ("ALTER TABLE users ADD COLUMN tier TEXT NOT NULL;", "adds NOT NULL column users.tier without a default",
     "add tier as nullable or with a DEFAULT, backfill it"),
    ('ALTER TABLE "users" ADD COLUMN ok TEXT, DROP COLUMN "phone";', "drops column users.phone", "later release"),
])
def test_each_breaking_form_is_flagged_with_its_expand_contract_fix(sql: str, problem: str, fix: str) -> None:
    issues = _issues(sql)
    assert len(issues) == 1, issues
    line, got_problem, got_fix = issues[0]
    assert line == 1
    assert got_problem.startswith(problem)
    assert fix in got_fix


def test_comments_strings_and_safe_changes_are_not_flagged() -> None:
    sql = """
    -- ALTER TABLE users DROP COLUMN phone;
    /* DROP TABLE users; */
    INSERT INTO notes (body) VALUES ('DROP TABLE users; ALTER TABLE x DROP COLUMN y');
    ALTER TABLE users ADD COLUMN phone_new VARCHAR(20);
    UPDATE users SET phone_new = phone;
    ALTER TABLE users ADD COLUMN tier TEXT NOT NULL DEFAULT 'free';
    ALTER TABLE users ALTER COLUMN tier DROP DEFAULT;
    ALTER TABLE users DROP CONSTRAINT users_tier_check;
    CREATE TRIGGER t AFTER INSERT ON users BEGIN UPDATE users SET phone_new = 'DROP TABLE x;' ; END;
    CREATE FUNCTION f() RETURNS void AS $$ BEGIN DROP TABLE old; END; $$ LANGUAGE plpgsql;
    """
    assert _issues(sql) == []


def test_statements_keep_their_line_and_triggers_stay_whole() -> None:
    sql = "-- header\nCREATE TABLE a (x INT);\n\nCREATE TRIGGER t AFTER INSERT ON a BEGIN\n  SELECT 1;\nEND;\n" \
          "ALTER TABLE a\n  DROP COLUMN x;"
    stmts = split_statements(sql)
    assert [s.line for s in stmts] == [2, 4, 7]
    assert stmts[1].text.endswith("END;")
    assert [i.line for i in lint_sql(sql, Path("m.sql"))] == [7]


def _seed_db(tmp_path: Path) -> Path:
    db_path = tmp_path / "app.db"
    with sqlite3.connect(db_path) as db:
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT, phone TEXT)")
        db.executemany("INSERT INTO users (email, phone) VALUES (?, ?)",
                       [(f"u{i}@example.com", f"555-{i:04d}") for i in range(50)])
    db.close()
    return db_path


def _dump(db_path: Path) -> list[str]:
    db = sqlite3.connect(db_path)
    try:
        return list(db.iterdump())
    finally:
        db.close()


def test_lint_of_a_directory_and_the_cli_exit_codes(tmp_path: Path) -> None:
    d = write_migrations(tmp_path, {"001_expand.sql": "ALTER TABLE users ADD COLUMN email_address TEXT;\n"
                                            "UPDATE users SET email_address = email;\n"})
    assert lint(d) == []
    runner = CliRunner()
    ok = runner.invoke(migrations_app, ["lint", str(d)])
    assert ok.exit_code == 0, ok.output
    assert "1 migration(s), backward compatible" in ok.output
    (d / "002_contract.sql").write_text("-- contract\n\nALTER TABLE users DROP COLUMN email;\n")
    bad = runner.invoke(migrations_app, ["lint", str(d)])
    assert bad.exit_code == 2
    assert f"{d / '002_contract.sql'}:3: drops column users.email" in bad.output
    assert " — stop reading and writing email" in bad.output
    missing = runner.invoke(migrations_app, ["lint", str(tmp_path / "nope")])
    assert missing.exit_code == 2
    assert "no such migrations directory" in missing.output


def test_pending_migrations_apply_in_order_once_with_a_verified_backup(tmp_path: Path) -> None:
    db_path = _seed_db(tmp_path)
    write_migrations(tmp_path, {
        "002_copy.sql": "UPDATE users SET email_address = email;",
        "001_add.sql": "ALTER TABLE users ADD COLUMN email_address TEXT; -- expand\n"
                       "CREATE TABLE audit (id INTEGER PRIMARY KEY, what TEXT);",
    })
    before = row_counts(sqlite3.connect(db_path))
    result = apply_pending(SPEC, tmp_path)
    assert result.applied == ["001_add.sql", "002_copy.sql"]
    assert result.recorded == ["001_add.sql", "002_copy.sql"] == applied_names(SPEC, tmp_path)
    assert result.backup is not None and result.backup.parent == tmp_path / "backups"
    assert result.backup.name.startswith("app-") and result.backup.suffix == ".db"
    backup_counts = row_counts(sqlite3.connect(result.backup))
    assert backup_counts == before
    db = sqlite3.connect(db_path)
    assert db.execute("SELECT COUNT(*) FROM users WHERE email_address = email").fetchone()[0] == 50
    rows = db.execute("SELECT name, checksum, applied_at FROM releasegate_migrations ORDER BY name").fetchall()
    db.close()
    assert [r[0] for r in rows] == ["001_add.sql", "002_copy.sql"] and all(len(r[1]) == 64 and r[2] for r in rows)

    again = apply_pending(SPEC, tmp_path)
    assert again.applied == [] and again.backup is None and again.recorded == result.recorded

    (tmp_path / "migrations" / "001_add.sql").write_text("ALTER TABLE users ADD COLUMN other TEXT;")
    with pytest.raises(UserError, match=r"001_add\.sql changed after it was applied"):
        apply_pending(SPEC, tmp_path)


def test_a_breaking_migration_is_refused_unless_allowed(tmp_path: Path) -> None:
    db_path = _seed_db(tmp_path)
    write_migrations(tmp_path, {"001_drop.sql": "ALTER TABLE users DROP COLUMN phone;"})
    before = _dump(db_path)
    with pytest.raises(UserError, match=r"(?s)001_drop\.sql:1: drops column users\.phone.*--allow-breaking-migration"):
        apply_pending(SPEC, tmp_path)
    assert _dump(db_path) == before
    assert not (tmp_path / "backups").exists()
    result = apply_pending(SPEC, tmp_path, allow_breaking=True)
    assert result.applied == ["001_drop.sql"]
    db = sqlite3.connect(db_path)
    assert [r[1] for r in db.execute("PRAGMA table_info(users)")] == ["id", "email"]
    db.close()


def test_a_failing_first_deploy_leaves_no_trace(tmp_path: Path) -> None:
    db_path = _seed_db(tmp_path)
    before = _dump(db_path)
    write_migrations(tmp_path, {"001_bad.sql": "ALTER TABLE users ADD COLUMN x TEXT;\nSELECT * FROM nope;"})
    with pytest.raises(MigrationFailed, match=r"migration 001_bad\.sql failed: no such table: nope"):
        apply_pending(SPEC, tmp_path)
    assert _dump(db_path) == before
    assert applied_names(SPEC, tmp_path) == []


def test_a_failing_migration_restores_the_backup_exactly(tmp_path: Path) -> None:
    db_path = _seed_db(tmp_path)
    write_migrations(tmp_path, {"000_base.sql": "CREATE TABLE settings (k TEXT PRIMARY KEY, v TEXT);"})
    apply_pending(SPEC, tmp_path)
    before = _dump(db_path)
    write_migrations(tmp_path, {
        "001_add.sql": "ALTER TABLE users ADD COLUMN tier TEXT DEFAULT 'free';\nUPDATE users SET tier = 'gold';",
        "002_bad.sql": "INSERT INTO settings VALUES ('a', '1');\n\nINSERT INTO no_such_table VALUES (1);",
    })
    with pytest.raises(MigrationFailed) as caught:
        apply_pending(SPEC, tmp_path)
    err = caught.value
    assert err.file == "002_bad.sql" and "no_such_table" in err.statement
    assert "no such table: no_such_table" in str(err) and "001_add.sql undone too" in str(err)
    assert err.exit_code == 2
    assert _dump(db_path) == before
    assert applied_names(SPEC, tmp_path) == ["000_base.sql"]


def test_a_postgresql_begin_atomic_body_stays_one_statement() -> None:
    sql = ("CREATE FUNCTION f(a int) RETURNS int LANGUAGE sql\nBEGIN ATOMIC\n  SELECT CASE WHEN a > 0 THEN 1 END;\n"
           "  SELECT 2;\nEND;\ncreate procedure p() language sql begin atomic insert into t values (1); end ;\n"
           "ALTER TABLE t DROP COLUMN x;")
    stmts = split_statements(sql)
    assert [s.line for s in stmts] == [1, 6, 7]
    assert stmts[0].text.endswith("SELECT 2;\nEND;") and stmts[1].text.endswith("end ;")
    assert [i.line for i in lint_sql(sql, Path("m.sql"))] == [7]


def test_spec_section_validates_the_database_url() -> None:
    assert Migrations(database="sqlite:///db/app.db").dir == "migrations"
    with pytest.raises(ValueError, match=r"expected sqlite:///PATH .* or postgresql://"):
        Migrations(database="mysql://x")
    for url in ["postgresql://rg@localhost/app", "postgres://rg:secret@db.example.com:6543/app?sslmode=require",
                "postgresql:///app?host=/run/postgresql", "postgresql://rg@/app?host=/tmp/sock&port=5433"]:
        assert Migrations(database=url).database == url


@pytest.mark.parametrize(("url", "problem"), [
    ("postgresql://rg:hunter22@localhost/", "postgresql://rg:***@localhost/: no database name"),
    ("postgres://rg:hunter22@localhost", "postgres://rg:***@localhost: no database name"),
    ("postgresql://rg@localhost/app?sslmod=require", 'invalid URI query parameter: "sslmod"'),
    ("postgresql://rg:hunter22@localhost/app?password=hunter22&foo=1", "password=***"),
])
def test_a_malformed_postgresql_url_is_refused_in_one_line_with_the_password_masked(url: str, problem: str) -> None:
    with pytest.raises(ValueError) as caught:
        Migrations(database=url)
    message = str(caught.value)
    assert problem in message and "postgresql://USER[:PASSWORD]@HOST[:PORT]/DBNAME" in message
    assert "hunter22" not in message

"""PostgreSQL: ``pg_dump`` backups verified by restoring them, transactional migrations, atomic restores.

Backup. One REPEATABLE READ transaction exports its snapshot (``pg_export_snapshot``), counts every user table's
rows and lists the objects that exist, while ``pg_dump -Fc --snapshot`` dumps exactly that snapshot: the counts,
the inventory and the dump describe the same moment, whatever the application writes meanwhile. The dump is then
verified for real: restored into a scratch database (``<db>_rg_verify_<stamp>``, created and dropped here, which is
why the role needs CREATEDB) whose row counts must equal the snapshot's.

Apply. PostgreSQL DDL is transactional, so each file runs in one transaction with its ``releasegate_migrations``
row: wholly applied and recorded, or not at all.

Restore. ``pg_restore --clean`` only replaces what the dump contains; a table a migration created would survive it
(and a view on an old table would even make the drop fail). So the restore is one ``psql --single-transaction``
run of three scripts: drop what is new since the backup (from the snapshot's inventory), the dump as SQL
(``pg_restore --clean --if-exists``, owners and privileges kept), and a check that every table's row count equals
the backup's, which raises, so that a mismatch commits nothing. It discards whatever the application wrote after
the backup: that is what putting the backup back means.

Passwords: libpq reads PGPASSWORD and ~/.pgpass when the URL has none; a password in the URL reaches the client
programs through ``PGPASSWORD`` (never their command line), and every message shows the URL masked.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from releasegate.errors import ProviderError, ReleasegateError, UserError
from releasegate.migrations import pgclient
from releasegate.migrations.backend import TABLE, Backup, StatementFailed
from releasegate.spec import secrets as spec_secrets
from releasegate.spec.migrations import mask_password

CONNECT_TIMEOUT = "10"  # seconds, unless the URL says otherwise: an unreachable host fails instead of hanging
_USER = "n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'"  # also excludes pg_toast and pg_temp_N


def _not_extension_member(catalog: str, oid: str) -> str:
    """Not a member of an extension: CREATE EXTENSION makes those, and pg_dump leaves them to it."""
    return (f"NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = '{catalog}'::regclass "
            f"AND d.objid = {oid} AND d.deptype = 'e')")


# Every user table's row count, in one statement (query_to_xml runs the per-table count) so the same text serves
# psycopg and the psql restore transaction. Functions resolve in pg_catalog even under the dump's empty search_path.
COUNTS = f"""SELECT format('%I.%I', n.nspname, c.relname) AS t,
       (xpath('/row/n/text()', query_to_xml(format('SELECT count(*) AS n FROM %I.%I', n.nspname, c.relname),
                                            false, true, '')))[1]::text::bigint AS n
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'r' AND c.relpersistence <> 't' AND {_USER} AND {_not_extension_member('pg_class', 'c.oid')}
 ORDER BY 1"""

# (kind, identity) of what a migration can create, as DROP <kind> IF EXISTS <identity> CASCADE understands them.
# Run with search_path = pg_catalog so that argument types of functions come out schema-qualified.
OBJECTS = f"""SELECT 'SCHEMA', format('%I', n.nspname) FROM pg_catalog.pg_namespace n
 WHERE {_USER} AND {_not_extension_member('pg_namespace', 'n.oid')}
UNION ALL
SELECT CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'S' THEN 'SEQUENCE'
                      WHEN 'f' THEN 'FOREIGN TABLE' WHEN 'c' THEN 'TYPE' ELSE 'TABLE' END,
       format('%I.%I', n.nspname, c.relname)
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'c') AND c.relpersistence <> 't' AND {_USER}
   AND {_not_extension_member('pg_class', 'c.oid')}
UNION ALL
SELECT CASE p.prokind WHEN 'p' THEN 'PROCEDURE' WHEN 'a' THEN 'AGGREGATE' ELSE 'FUNCTION' END,
       format('%I.%I(%s)', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid))
  FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
 WHERE {_USER} AND {_not_extension_member('pg_proc', 'p.oid')}
UNION ALL
SELECT CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END, format('%I.%I', n.nspname, t.typname)
  FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
 WHERE t.typtype IN ('e', 'd', 'r') AND {_USER} AND {_not_extension_member('pg_type', 't.oid')}
UNION ALL
SELECT 'EXTENSION', format('%I', e.extname) FROM pg_catalog.pg_extension e"""

_DROP_ORDER = ["EXTENSION", "SCHEMA", "MATERIALIZED VIEW", "VIEW", "FOREIGN TABLE", "TABLE", "SEQUENCE",
               "AGGREGATE", "PROCEDURE", "FUNCTION", "TYPE", "DOMAIN"]
_FILE_UNSAFE = re.compile(r"[^\w.-]")
_SCHEMA = (f"CREATE TABLE IF NOT EXISTS {TABLE} (name text PRIMARY KEY, checksum text NOT NULL, "
           "applied_at timestamptz NOT NULL DEFAULT now())")


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%d%H%M%S%f")


def _counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    return {str(t): int(n) for t, n in conn.execute(COUNTS).fetchall()}


def _differ(want: dict[str, int], got: dict[str, int]) -> str:
    return ", ".join(f"{t} ({want.get(t, 'absent')} in the backup, {got.get(t, 'absent')} in the copy)"
                     for t in sorted(want.keys() | got.keys()) if want.get(t) != got.get(t))


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"  # the scripts run with standard_conforming_strings on


def _verify_script(counts: dict[str, int]) -> str:
    """A DO block that raises (so psql's transaction commits nothing) unless the row counts equal ``counts``."""
    tag = f"$rg{secrets.token_hex(6)}$"
    return f"""SET standard_conforming_strings = on;
DO {tag}
DECLARE bad text;
BEGIN
  SELECT string_agg(format('%s (%s in the backup, %s now)', coalesce(got.t, want.t),
                           coalesce(want.n::text, 'absent'), coalesce(got.n::text, 'absent')), ', ')
    INTO bad
    FROM ({COUNTS}) AS got
    FULL JOIN (SELECT key, value::bigint FROM json_each_text({_sql_literal(json.dumps(counts))})) AS want(t, n)
      ON got.t = want.t
   WHERE got.n IS DISTINCT FROM want.n;
  IF bad IS NOT NULL THEN
    RAISE EXCEPTION 'row counts differ from the backup in %', bad;
  END IF;
END
{tag};
"""


class PostgresBackend:
    """The ``Backend`` for one PostgreSQL database, from its libpq URL."""

    def __init__(self, url: str, written: str | None = None) -> None:
        """``url`` is the resolved URL; ``written`` the spec's text (``${env:NAME}`` references), what is shown."""
        self.shown = mask_password(written or url)
        try:
            params = conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            raise UserError(f"migrations.database {self.shown}: {spec_secrets.hide(str(exc), written or '')}") from None
        password = params.pop("password", None)
        self.password = str(password) if password is not None else None
        params.setdefault("connect_timeout", CONNECT_TIMEOUT)
        params.setdefault("fallback_application_name", "releasegate-migrations")
        self.params: dict[str, Any] = params
        self.dbname = str(params.get("dbname") or "")
        self._server_major = 0

    def describe(self) -> str:
        return self.shown

    # -- connections ---------------------------------------------------------------------------------------------

    def conninfo(self, dbname: str | None = None) -> str:
        """The connection string for psycopg and the client programs: never the password (see ``env``)."""
        return make_conninfo("", **{**self.params, **({"dbname": dbname} if dbname else {})})

    def env(self) -> dict[str, str]:
        return {**os.environ, "PGPASSWORD": self.password} if self.password else dict(os.environ)

    def connect(self, dbname: str | None = None, autocommit: bool = False) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(self.conninfo(dbname), autocommit=autocommit, password=self.password)
        except psycopg.OperationalError as exc:
            raise self._connection_error(exc) from None
        self._server_major = conn.info.server_version // 10000
        return conn

    def _connection_error(self, exc: Exception) -> ReleasegateError:
        """libpq's reason, one line, with the fix: auth and a missing database are the user's to fix."""
        lines = [" ".join(line.split()) for line in str(exc).replace("connection failed:", "").splitlines()]
        detail = re.sub(r"^.*? failed: (?:FATAL: )?", "", "; ".join(line for line in lines if line))
        if self.password and len(self.password) > 2:
            detail = detail.replace(self.password, "***")
        where = f"migrations.database {self.shown}"
        if re.search(r"authentication failed|no password supplied|role .* does not exist|pg_hba\.conf", detail):
            return UserError(f"{where}: {detail}; fix the user or password (in the URL, PGPASSWORD or ~/.pgpass) "
                             "or the server's pg_hba.conf")
        if re.search(r"database .* does not exist", detail):
            return UserError(f"{where}: {detail}; create it (createdb {self.dbname}) or fix the database name")
        return ProviderError(f"{where}: cannot reach the PostgreSQL server ({detail}); start it or fix the host "
                             "and port")

    def _client(self) -> pgclient.Client:
        if not self._server_major:
            self.connect().close()
        return pgclient.client_for(self._server_major)

    def _run(self, program: str, args: list[str], what: str) -> str:
        return pgclient.run(self._client(), program, args, self.env(), what, self._server_major).stdout

    # -- Backend -------------------------------------------------------------------------------------------------

    def check(self) -> str:
        with self.connect() as conn:
            row = conn.execute("SELECT current_user, rolsuper OR rolcreatedb, current_setting('server_version') "
                               "FROM pg_catalog.pg_roles WHERE rolname = current_user").fetchone()
        user, may_create, version = row if row else ("?", False, "?")
        client = self._client()
        if client.major and client.major < self._server_major:
            raise UserError(f"migrations.database {self.shown}: pg_dump {client.major} ({client['pg_dump']}) cannot "
                            f"dump PostgreSQL {version}; install postgresql-client-{self._server_major}")
        if not may_create:
            raise UserError(f"migrations.database {self.shown}: role {user} lacks CREATEDB, which verifying the "
                            f"backup needs (it is restored into a scratch database); ALTER ROLE {user} CREATEDB")
        return f"{self.shown}: PostgreSQL {version}, pg_dump {client.major} at {client['pg_dump']}"

    def recorded(self) -> dict[str, str]:
        with self.connect() as conn:
            row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [TABLE]).fetchone()
            if not row or not row[0]:
                return {}
            return {str(n): str(c) for n, c in conn.execute(f"SELECT name, checksum FROM {TABLE} ORDER BY name")}

    def backup(self, backup_dir: Path) -> Backup:
        stamp = _stamp()
        try:
            backup_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"{backup_dir}: cannot create the backup directory ({exc.strerror})") from None
        target = backup_dir / f"{_FILE_UNSAFE.sub('_', self.dbname)}-{stamp}.dump"
        with self.connect() as conn:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            row = conn.execute("SELECT pg_export_snapshot()").fetchone()
            snapshot = str(row[0]) if row else ""
            conn.execute("SET LOCAL search_path = pg_catalog")
            counts = _counts(conn)
            objects = frozenset((str(k), str(i)) for k, i in conn.execute(OBJECTS).fetchall())
            self._run("pg_dump", ["--format=custom", "--no-password", f"--snapshot={snapshot}", f"--file={target}",
                                  f"--dbname={self.conninfo()}"], f"backup of {self.shown} to {target}")
            conn.rollback()
        self.verify_dump(target, counts)
        return Backup(target, counts, objects)

    def verify_dump(self, dump: Path, counts: dict[str, int]) -> None:
        """Restore the dump into a scratch database and compare its row counts with ``counts`` (the snapshot's)."""
        scratch = f"{self.dbname[:32]}_rg_verify_{_stamp()}"
        with self.connect(autocommit=True) as admin:
            row = admin.execute("SELECT pg_encoding_to_char(encoding), datcollate, datctype FROM "
                                "pg_catalog.pg_database WHERE datname = current_database()").fetchone()
            encoding, collate, ctype = row if row else ("UTF8", "C", "C")
            try:
                admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}")
                              .format(sql.Identifier(scratch), encoding, collate, ctype))
            except psycopg.errors.InsufficientPrivilege:
                raise UserError(f"migrations.database {self.shown}: cannot create the scratch database that "
                                "verifies the backup: the role needs CREATEDB (ALTER ROLE ... CREATEDB)") from None
            try:
                self._run("pg_restore", ["--no-owner", "--no-acl", "--exit-on-error", "--single-transaction",
                                         "--no-password", f"--dbname={self.conninfo(scratch)}", str(dump)],
                          f"verifying backup {dump} (restoring it into {scratch})")
                with self.connect(scratch) as copy:
                    got = _counts(copy)
            finally:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(scratch)))
        if got != counts:
            raise ProviderError(f"backup {dump} does not hold what it should: row counts differ in "
                                f"{_differ(counts, got)}")

    def restore(self, backup: Backup) -> None:
        with self.connect() as conn:
            conn.execute("SET LOCAL search_path = pg_catalog")
            now = {(str(k), str(i)) for k, i in conn.execute(OBJECTS).fetchall()}
        new = sorted(now - backup.objects, key=lambda o: (_DROP_ORDER.index(o[0]), o[1]))
        # The dump as SQL is about the database's size: next to the dump rather than in a possibly small /tmp.
        with tempfile.TemporaryDirectory(prefix=".restore-", dir=backup.path.parent) as tmp:
            drops, script, verify = Path(tmp, "drops.sql"), Path(tmp, "restore.sql"), Path(tmp, "verify.sql")
            drops.write_text("".join(f"DROP {kind} IF EXISTS {ident} CASCADE;\n" for kind, ident in new),
                             encoding="utf-8")
            verify.write_text(_verify_script(backup.counts), encoding="utf-8")
            hand = (f"restore it by hand: drop what the migrations created, then pg_restore --clean --if-exists "
                    f"--single-transaction --dbname='{self.shown}' {backup.path}")
            try:
                self._run("pg_restore", ["--clean", "--if-exists", f"--file={script}", str(backup.path)],
                          f"reading backup {backup.path}")
                self._run("psql", ["--no-psqlrc", "--quiet", "--no-password", "--single-transaction",
                                   "--set=ON_ERROR_STOP=1", f"--dbname={self.conninfo()}", f"--file={drops}",
                                   f"--file={script}", f"--file={verify}"],
                          f"restoring {self.shown} from {backup.path} (nothing was changed)")
            except ReleasegateError as exc:
                raise ProviderError(f"{exc}; {hand}") from None

    def apply_file(self, name: str, checksum: str, statements: list[str]) -> None:
        with self.connect() as conn:  # leaving the block commits; an exception rolls everything back
            conn.execute(_SCHEMA)
            for statement in statements:
                try:
                    conn.execute(statement)  # no parameters: sent as written, % included
                except psycopg.Error as exc:
                    reason = exc.diag.message_primary or str(exc).splitlines()[0]
                    raise StatementFailed(statement, reason) from None
            conn.execute(f"INSERT INTO {TABLE} (name, checksum) VALUES (%s, %s)", [name, checksum])

"""A private PostgreSQL server for the migration tests: its own data directory and socket directory under a
temporary directory, on a free loopback port, in the foreground so the test owns the postmaster and stops it.

initdb and postgres refuse to run as root, so when the tests run as root both run as the ``postgres`` OS user
(``subprocess``'s ``user=``: the same switch ``runuser -u postgres`` makes, without a wrapper process in between,
so the process the test holds is the postmaster itself). The temporary directory lives in /tmp rather than
pytest's tmp_path, whose 0700 parents the ``postgres`` user cannot enter.

Two roles: ``rg``, a trusted superuser (no password), and ``rgpw``, which must give its password over TCP
(scram-sha-256): the path where releasegate hands a password to ``pg_dump`` through ``PGPASSWORD``.
Tests that need it skip when the server binaries (Debian package ``postgresql``) are not installed.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.rollouts import free_port
from tests.support.wait import wait_until

START_DEADLINE = 30.0
PASSWORD_USER, PASSWORD = "rgpw", "s3cret-pw"


def bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/*/bin holding initdb (not whatever ``initdb`` comes first on PATH)."""
    found = [d for d in Path("/usr/lib/postgresql").glob("*/bin") if (d / "initdb").is_file()]
    return max(found, key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0, default=None)


def missing_reason() -> str | None:
    if bin_dir() is None:
        return ("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb): install the Debian "
                "package postgresql (scripts/test does)")
    if os.geteuid() == 0 and not _has_user("postgres"):
        return "running as root and there is no 'postgres' OS user to run the server as"
    return None


def _has_user(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _as_server_user() -> dict[str, Any]:
    """Popen arguments that run the child as ``postgres`` when we are root (no supplementary groups kept)."""
    if os.geteuid() != 0:
        return {}
    return {"user": "postgres", "group": "postgres", "extra_groups": []}


@dataclass
class PostgresServer:
    root: Path
    bindir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    _names: Iterator[int] = field(default_factory=itertools.count)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def sockets(self) -> Path:
        return self.root / "sock"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def url(self, dbname: str, user: str = "rg", password: str | None = None) -> str:
        auth = f"{user}:{password}" if password is not None else user
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{dbname}"

    def socket_url(self, dbname: str, user: str = "rg") -> str:
        """The libpq unix-socket form: no host in the authority, the socket directory as a query parameter."""
        return f"postgresql://{user}@/{dbname}?host={self.sockets}&port={self.port}"

    def connect(self, dbname: str = "postgres") -> Any:
        import psycopg

        return psycopg.connect(host=str(self.sockets), port=self.port, user="rg", dbname=dbname,
                               autocommit=True, connect_timeout=5)

    def create_database(self, prefix: str = "t") -> str:
        """A fresh, empty database with a unique name: each test gets its own."""
        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def _run(self, *args: str) -> None:
        out = subprocess.run(args, capture_output=True, text=True, cwd=self.root, check=False, **_as_server_user())
        assert out.returncode == 0, f"{' '.join(args)} failed: {out.stdout}{out.stderr}"

    def start(self) -> None:
        self.root.chmod(0o700)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "rg", "-A", "trust", "-E", "UTF8",
                  "--locale=C", "--no-sync")
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            "host all rg 127.0.0.1/32 trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n", encoding="utf-8")
        self.sockets.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.sockets, "postgres", "postgres")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(self.data), "-k", str(self.sockets), "-h", "127.0.0.1",
                 "-p", str(self.port), "-c", "fsync=off", "-c", "synchronous_commit=off",
                 "-c", "full_page_writes=off", "-c", "max_connections=300"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.root, **_as_server_user())
        wait_until(self._ready, timeout=START_DEADLINE, what="the PostgreSQL server to accept connections")
        with self.connect() as conn:
            conn.execute(f"CREATE ROLE {PASSWORD_USER} LOGIN CREATEDB PASSWORD '{PASSWORD}'")

    def _ready(self) -> bool:
        import psycopg

        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"postgres exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
        try:
            self.connect().close()
        except psycopg.OperationalError:
            return False
        return True

    def stop(self) -> None:
        """SIGINT is PostgreSQL's fast shutdown: open client sessions are ended instead of waited for."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """Start a private server; stop it and remove its directory afterwards, whatever happened."""
    bindir = bin_dir()
    assert bindir is not None, missing_reason()
    server = PostgresServer(Path(tempfile.mkdtemp(prefix="rg-pg-")), bindir)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)

"""The PostgreSQL client programs a backup and a restore need: ``pg_dump``, ``pg_restore`` and ``psql``.

They come from one directory, so they agree with each other (``pg_restore``'s scripts may use meta-commands only
the same ``psql`` knows). ``pg_dump`` refuses to dump a server of a newer major version, so the first directory
whose version is at least the server's wins: the one on PATH, then /usr/lib/postgresql/*/bin (Debian's layout,
where several versions live side by side), newest first. When none is new enough, the first is used anyway and
``pg_dump``'s own message explains.

Passwords never go on a command line (visible in ``ps``): callers pass them in ``PGPASSWORD``.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from releasegate.errors import ProviderError, UserError

PROGRAMS = ("pg_dump", "pg_restore", "psql")
DEBIAN_DIRS = Path("/usr/lib/postgresql")
INSTALL_HINT = "install the Debian package postgresql-client"
_PREFIX = re.compile(r"^(?:pg_dump|pg_restore|psql)(?::[^:]*:\d+)?:\s*(?:(?:error|detail|hint|fatal|warning):\s*)*"
                     r"(?:(?:ERROR|FATAL|DETAIL|HINT):\s*)?", re.IGNORECASE)
_NOISE = re.compile(r"^(?:CONTEXT:|LINE \d+:|QUERY:|\^|PL/pgSQL function|pg_restore: while PROCESSING|"
                    r"Command was:)")


@dataclass(frozen=True)
class Client:
    """Paths of the client programs from one installation, and their major version (0 when unknown)."""

    paths: dict[str, Path]
    major: int

    def __getitem__(self, program: str) -> str:
        return str(self.paths[program])


@functools.cache
def _major(pg_dump: Path) -> int:
    """``pg_dump --version`` says e.g. ``pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)``."""
    try:
        out = subprocess.run([str(pg_dump), "--version"], capture_output=True, text=True, timeout=30,
                             stdin=subprocess.DEVNULL, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    m = re.search(r"\)\s*(\d+)", out)
    return int(m.group(1)) if m else 0


def _candidates() -> list[dict[str, Path]]:
    found: list[dict[str, Path]] = []
    on_path = {p: shutil.which(p) for p in PROGRAMS}
    if all(on_path.values()):
        found.append({p: Path(str(path)) for p, path in on_path.items()})

    def version(d: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", d.parent.name)) or (0,)

    for d in sorted(DEBIAN_DIRS.glob("*/bin"), key=version, reverse=True):
        if all((d / p).is_file() for p in PROGRAMS):
            found.append({p: d / p for p in PROGRAMS})
    return found


def client_for(server_major: int) -> Client:
    """The client programs to use against a server of ``server_major``; ``UserError`` when none is installed."""
    candidates = _candidates()
    if not candidates:
        raise UserError(f"pg_dump, pg_restore and psql were not found on PATH nor in {DEBIAN_DIRS}/*/bin; "
                        f"{INSTALL_HINT} (migrations.database is PostgreSQL)")
    clients = [Client(c, _major(c["pg_dump"])) for c in candidates]
    return next((c for c in clients if c.major >= server_major), clients[0])


def one_line(stderr: str) -> str:
    """A program's error output as one line, without the ``pg_dump: error:`` prefixes."""
    lines = [_PREFIX.sub("", line.strip()) for line in stderr.splitlines()
             if not _NOISE.match(line.strip())]
    return "; ".join(line for line in lines if line) or "no error message"


def run(client: Client, program: str, args: list[str], env: dict[str, str], what: str,
        server_major: int) -> subprocess.CompletedProcess[str]:
    """Run one client program; a failure is one line naming ``what`` and the program's own message."""
    argv = [client[program], *args]
    try:
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    except OSError as exc:
        raise UserError(f"{what}: cannot run {argv[0]} ({exc.strerror}); {INSTALL_HINT}") from None
    if proc.returncode != 0:
        message = one_line(proc.stderr)
        if "version mismatch" in message:
            raise UserError(f"{what}: {message}; {program} must be at least the server's major version: install "
                            f"postgresql-client-{server_major} (Debian) so that it is on PATH or in "
                            f"{DEBIAN_DIRS}/{server_major}/bin")
        raise ProviderError(f"{what}: {program} failed: {message}")
    return proc
